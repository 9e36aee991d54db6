"""Run named checks in a real gloo group of spawned processes (127.0.0.1), one spawn per test module.

Each check module keeps ``CHECKS = {name: callable}``; every rank runs the requested checks in order and reports
{name: traceback or None}, so a failing check names its rank and the others still run. Spawning costs seconds per
group on a 2-core machine, which is why a module spawns once and its tests read one check each.
"""
from __future__ import annotations

import datetime
import importlib
import os
import socket
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist


def _worker(rank, world, port, out_dir, module_name, names, env):
    os.environ.update(env)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                       "NODE_RANK": "0"})
    torch.set_num_threads(1)
    checks = importlib.import_module(module_name).CHECKS
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    results = {}
    try:
        for name in names:
            try:
                checks[name]()
                results[name] = None
            except Exception:  # noqa: BLE001  (reported per check by the tests)
                results[name] = traceback.format_exc()
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001  (the group is unusable: report it and stop)
                results["__group__"] = traceback.format_exc()
                break
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001  (results are saved; a broken group must not hide them)
            pass
    # results are on disk; skip the interpreter's teardown (gloo threads once aborted a rank at exit under load)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def assert_replicas_identical(tensors) -> None:
    """Inside a check: every rank holds bit-identical values (a tensor, or a model's parameters)."""
    if isinstance(tensors, torch.nn.Module):
        tensors = torch.cat([p.detach().reshape(-1) for p in tensors.parameters()])
    out = [torch.empty_like(tensors) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensors)
    for r, other in enumerate(out):
        assert torch.equal(other, tensors), f"replica of rank {r} differs from rank {dist.get_rank()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(world: int, module_name: str, names: list[str], env: dict | None = None) -> list[dict]:
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_worker, args=(world, free_port(), tmp, module_name, names, env or {}),
                                 nprocs=world, join=False, start_method="spawn")
        while not ctx.join(timeout=300):
            pass
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


def assert_ok(results: list[dict], name: str) -> None:
    errors = [f"rank {r}:\n{res[name]}" for r, res in enumerate(results) if res.get(name, "not run") is not None]
    errors += [f"rank {r} (group):\n{res['__group__']}" for r, res in enumerate(results) if "__group__" in res]
    assert not errors, "\n".join(errors)
