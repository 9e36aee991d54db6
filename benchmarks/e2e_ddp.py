"""End-to-end DDP step time and traffic over gloo, two ranks, with the link bandwidth limited by tc.

For each bandwidth (Gbit/s) two network namespaces are joined by a veth pair (10.77.0.1 <-> 10.77.0.2) shaped by a
token-bucket filter on both ends; one rank runs in each namespace. Each rank trains the same MLP (tens of MB of
fp32 gradients in DDP's 25 MB buckets) with each compressor in turn and reports the step time (max over ranks,
median over steps) and the bytes its interface sent per step (/proc/net/dev, so TCP/IP headers included), with
where a tnq step's time goes: ``wire_ms`` (those bytes at the measured link rate) and ``tnq_kernel_ms`` (the hook's
compress + decode calls for the same buckets, timed alone on the rank's thread after the timed steps):

    allreduce            DDP's default fp32 allreduce
    fp16                 torch's fp16_compress_hook
    powersgd4            torch's PowerSGD hook, rank 4 (error feedback and warm start on, as shipped)
    tnq-<scheme>-<b>     tnq_kernels.ddp.tnq_hook, scheme allgather or two_phase, b bits
    compute-only         forward + backward + SGD step without DDP: the floor under every step time
    fsdp-fp32            FSDP2 (fully_shard per layer and on the model), its own fp32 reduce-scatter
    fsdp-bf16            FSDP2 with MixedPrecisionPolicy(reduce_dtype=bf16): a bf16 reduce-scatter
    fsdp-tnq-<b>         FSDP2 with tnq_kernels.fsdp.compress_reduce_scatter, flat mode, b bits (rtnq)
    fsdp-tnqh-<b>        the same, hierarchical: node_size = ranks per namespace (the "node")

``--world 4`` puts two ranks in each namespace: they talk over the namespace's own loopback (the fast "node"
link, unshaped) and to the other namespace over the shaped veth (the slow link between nodes). The bytes column
then counts what crossed the veth, per rank.

Two ranks is what a 2-core machine allows; with two ranks the two_phase scheme and allgather move the same bytes
(each rank sends one payload's worth), so they differ only in compute. The namespaces are deleted afterwards, also
on failure or Ctrl-C. Needs root and iproute2; where either is missing the shaped runs are skipped with the reason.

    sudo .venv/bin/python benchmarks/e2e_ddp.py                       # 1, 10, 25 Gbit/s, all compressors
    .venv/bin/python benchmarks/e2e_ddp.py --net loopback --tiny      # seconds, no root: the CI smoke run

Prints a table last and appends rows to benchmarks/results/e2e_ddp.csv (--csv to change, --csv '' for none).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import _helper as H  # noqa: E402

DEFAULT_COMPRESSORS = ["compute-only", "allreduce", "fp16", "powersgd4", "tnq-allgather-2", "tnq-allgather-3",
                       "tnq-allgather-4", "tnq-two_phase-2", "tnq-two_phase-3", "tnq-two_phase-4"]
TINY_COMPRESSORS = ["compute-only", "allreduce", "fp16", "powersgd4", "tnq-allgather-3", "tnq-two_phase-3"]
SUBNET = "10.77.0"
WORLD = 2  # default world size; --world 4 runs two ranks per namespace
CSV_COLUMNS = ("date", "run", "net", "bandwidth_gbit", "link_gbit_measured", "compressor", "scheme", "bits",
               "world", "params", "grad_bytes", "steps", "step_ms_median", "step_ms_min", "step_ms_mean",
               "speedup_vs_allreduce", "wire_bytes_per_rank_step", "payload_bytes_per_rank_step", "wire_ms",
               "tnq_kernel_ms", "tnq_backend", "loadavg_1m", "final_loss", "in_sync", "note")


# =====================================================================================================================
# worker: one rank
# =====================================================================================================================

def _tx_bytes(iface: str | None) -> float:
    """Bytes sent so far by ``iface`` in this process's network namespace (NaN when not measured)."""
    if not iface:
        return math.nan
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == iface:
            return float(rest.split()[8])
    return math.nan


def _model(width: int, depth: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for i in range(depth):
        layers.append(torch.nn.Linear(width, width))
        if i < depth - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _side(rank: int, world: int) -> int:
    """The namespace (0 or 1) of a rank: the first half of the ranks in the first."""
    return rank // (world // 2)


def _measure_link(rank: int, nbytes: int, world: int = 2) -> float:
    """Gbit/s of one send of ``nbytes`` (best of 2) from rank 0 to the first rank of the other namespace, as the
    shaped link actually delivers it."""
    import torch.distributed as dist
    buf = torch.zeros(nbytes, dtype=torch.uint8)
    peer = world // 2
    best = math.inf
    for _ in range(2):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(buf, peer)
            dist.recv(buf[:1], peer)  # ack, so the time covers delivery
        elif rank == peer:
            dist.recv(buf, 0)
            dist.send(buf[:1], 0)
        best = min(best, time.perf_counter() - t0)
    return nbytes * 8 / best / 1e9


def _register(ddp, spec: str, tnq_backend: str | None, codebook: str | None = None, seed: int = 0):
    """Attach the hook named by ``spec``; returns (scheme, bits, state or None).

    ``tnq-<scheme>-<bits>`` or ``tnq-<bits>`` (scheme "auto") builds a ``TNQState`` with ``codebook`` (None: the
    library's default) and base ``seed``; every other TNQState field keeps its default, block size included.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    if spec == "allreduce":
        return "allreduce", 32, None
    if spec == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return "allreduce", 16, None
    if spec.startswith("powersgd"):
        rank = int(spec.removeprefix("powersgd") or 4)
        # start_powerSGD_iter=2 is the smallest torch accepts with error feedback; warm-up steps run past it
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                            start_powerSGD_iter=2)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return "powersgd", rank, state
    if spec.startswith("tnq-"):
        *scheme, bits = spec.split("-")[1:]
        from tnq_kernels import ddp as tnq_ddp
        extra = {} if codebook is None else {"codebook": codebook}
        state = tnq_ddp.TNQState(process_group=None, bits=int(bits), scheme=scheme[0] if scheme else "auto",
                                 seed=seed, backend=tnq_backend, **extra)
        ddp.register_comm_hook(state, tnq_ddp.tnq_hook)
        import torch.distributed as dist
        return state.scheme_for(dist.get_world_size()), int(bits), state
    raise ValueError(f"compressor must be one of compute-only, allreduce, fp16, powersgd<r>, "
                     f"tnq-<allgather|two_phase>-<bits>, tnq-<bits>, got {spec!r}")


def check_compressor(spec: str, extra: tuple[str, ...] = ()) -> str:
    """``spec`` if it names a hook `_register` attaches (or one of ``extra``), else a ValueError saying what is
    accepted; checked before any process starts."""
    parts = spec.split("-")
    ok = (spec in ("allreduce", "fp16") + tuple(extra)
          or (spec.startswith("powersgd") and (spec == "powersgd" or spec[8:].isdigit() and int(spec[8:]) >= 1))
          or (parts[0] == "tnq" and len(parts) in (2, 3) and parts[-1].isdigit() and 1 <= int(parts[-1]) <= 8
              and (len(parts) == 2 or parts[1] in ("allgather", "two_phase", "auto"))))
    if not ok:
        accepted = ", ".join(("allreduce", "fp16", "powersgd<rank>", "tnq-<bits>", "tnq-<scheme>-<bits>") + extra)
        raise ValueError(f"--compressors: {spec!r} is not a compressor; accepted: {accepted} (bits 1-8)")
    return spec


def ddp_model(model, spec: str, tnq_backend: str | None, bucket_mb: float, codebook: str | None = None,
              seed: int = 0):
    """``model`` wrapped in DDP with the hook ``spec`` attached; returns (ddp, scheme, bits, state, note)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    note = ""
    if spec.startswith("powersgd"):
        # torch's PowerSGD hook issues its second allreduce from a future callback; on gloo that races with
        # the next bucket's first allreduce and the ranks' collective order diverges (seen here as gloo's
        # "Received data size doesn't match expected size" with 25 MB buckets), so it gets a single bucket
        bucket_mb = 4 * sum(p.numel() for p in model.parameters()) / 2**20 + 1
        note = "one DDP bucket (PowerSGD + gloo races with several)"
    net = DDP(model, bucket_cap_mb=bucket_mb)
    scheme, bits, state = _register(net, spec, tnq_backend, codebook, seed)
    return net, scheme, bits, state, note


def params_in_sync(model) -> bool:
    """Whether every rank holds the same parameters (a float64 checksum, compared across ranks; FSDP: of the full
    parameters, gathered). Replicas must stay identical under every hook."""
    import torch.distributed as dist
    with torch.no_grad():
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        cs = sum(p.double().sum() for p in full).reshape(1)
    lo, hi = cs.clone(), cs.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(lo == hi)


def _tnq_sent_bytes(state) -> float:
    """Payload bytes this rank has sent so far according to the hook's own statistics (NaN if it keeps none)."""
    for name in ("bytes_sent", "sent_bytes", "total_bytes_sent"):
        v = getattr(state, name, None)
        if v is not None:
            return float(v() if callable(v) else v)
    stats = getattr(state, "stats", None)
    if isinstance(stats, dict):
        for name in ("bytes_sent", "sent_bytes"):
            if name in stats:
                return float(stats[name])
    return math.nan


def _tnq_kernel_ms(layout: list[tuple[int, int]], scheme: str, bits: int, tnq_backend: str | None,
                   world: int = WORLD) -> float:
    """Milliseconds per step of the hook's compress/decode calls alone, on this rank's thread(s), for the bucket
    sizes of the last step (``TNQState.last_bucket_layout``): the CPU time a step spends in the kernels, to set
    against the wire time (bytes sent / link rate). Both ranks time at once, as they run during a step."""
    import tnq_kernels as tnq
    from tnq_kernels import ddp as tnq_ddp
    total = 0.0
    for _, n in layout:
        if n < tnq_ddp.DEFAULT_MIN_BUCKET_NUMEL:
            continue  # the hook all-reduces such buckets uncompressed
        x = torch.randn(n)
        out = torch.empty(n)  # the hook decodes into its bucket (out=): no fresh output, no first-touch faults
        if scheme == "two_phase":
            chunk = tnq_ddp.chunk_size(n, world)
            parts = [x[j * chunk: (j + 1) * chunk] for j in range(world)]
            shard = parts[0]

            def calls(parts=parts, shard=shard):
                pays = [tnq.compress(c, bits, 2048, seed=1, backend=tnq_backend) for c in parts if c.numel()]
                red = tnq.decompress_sum([pays[0]] * world, [1.0 / world] * world, [shard.numel()], torch.float32,
                                         backend=tnq_backend)
                tnq.compress(red, bits, 2048, seed=2, backend=tnq_backend)
                for c, pay in zip(parts, pays):
                    tnq.decompress(pay, backend=tnq_backend, out=out[:c.numel()])
        else:
            def calls(x=x, n=n):
                pay = tnq.compress(x, bits, 2048, seed=1, backend=tnq_backend)
                tnq.decompress_sum([pay] * world, [1.0 / world] * world, backend=tnq_backend, out=out)
        total += H.time_fn(calls, warmup=1, repeat=3).median
    return total * 1e3


def _fsdp(model, spec: str, cfg: dict, tnq_backend: str | None):
    """Shard ``model`` with FSDP2 as ``spec`` says; returns (scheme, bits, tnq state or None)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(reduce_dtype=torch.bfloat16) if spec == "fsdp-bf16" else MixedPrecisionPolicy()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    if spec in ("fsdp-fp32", "fsdp-bf16"):
        return "reduce_scatter", 32 if spec == "fsdp-fp32" else 16, None
    kind, bits = spec.split("-")[1:]
    if kind not in ("tnq", "tnqh"):
        raise ValueError(f"compressor {spec!r}: expected fsdp-fp32, fsdp-bf16, fsdp-tnq-<b> or fsdp-tnqh-<b>")
    from tnq_kernels import fsdp as tnq_fsdp
    node = cfg["world"] // 2 if kind == "tnqh" else None
    state = tnq_fsdp.compress_reduce_scatter(model, bits=int(bits), seed=0, node_size=node, backend=tnq_backend)
    return "fsdp-" + ("hierarchical" if node else "flat"), int(bits), state


def _run_config(spec: str, cfg: dict, rank: int, iface: str | None, tnq_backend: str | None) -> dict:
    import torch.distributed as dist

    world = cfg["world"]
    torch.manual_seed(0)
    model = _model(cfg["width"], cfg["depth"])
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    x = torch.randn(cfg["batch"], cfg["width"], generator=gen)
    y = torch.randn(cfg["batch"], cfg["width"], generator=gen)
    scheme, bits, state = "none", 32, None
    note = ""
    if spec == "compute-only":
        net = model
    elif spec.startswith("fsdp-"):
        net = model
        scheme, bits, state = _fsdp(model, spec, cfg, tnq_backend)
    else:
        net, scheme, bits, state, note = ddp_model(model, spec, tnq_backend, cfg["bucket_mb"], codebook="tnq")
        if scheme == "two_phase" and world == 2:
            note = "2 ranks: sends ~1 payload/rank/step, as allgather does"
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def step() -> float:
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(cfg["warmup"]):
        step()
    # agree on the number of timed steps from the slowest rank's first step, so every loop is bounded in time
    dist.barrier()
    t0 = time.perf_counter()
    loss = step()
    first = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(first, op=dist.ReduceOp.MAX)
    steps = int(max(1, min(cfg["steps"] - 1, cfg["config_seconds"] // max(first.item(), 1e-9))))
    dist.barrier()
    tx0 = _tx_bytes(iface)
    has_tnq = state is not None and "tnq" in spec
    sent0 = _tnq_sent_bytes(state) if has_tnq else math.nan
    times = [first.item()]
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    tx1 = _tx_bytes(iface)
    sent1 = _tnq_sent_bytes(state) if has_tnq else math.nan
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a step lasts until the slower rank is done
    # the interface counter is per namespace: its first rank reports it for every rank there
    wire = torch.tensor([(tx1 - tx0) / steps if rank % (world // 2) == 0 else 0.0], dtype=torch.float64)
    dist.all_reduce(wire)
    in_sync = params_in_sync(model)
    kernel = torch.tensor([math.nan], dtype=torch.float64)
    if state is not None and spec.startswith("tnq-"):
        dist.barrier()
        kernel[0] = _tnq_kernel_ms(state.last_bucket_layout, scheme, bits, tnq_backend, world)
        dist.all_reduce(kernel, op=dist.ReduceOp.MAX)
    ms = [v * 1e3 for v in t.tolist()]
    return {
        "compressor": spec, "scheme": scheme, "bits": bits,
        "params": sum(p.numel() for p in model.parameters()),
        "grad_bytes": 4 * sum(p.numel() for p in model.parameters()),
        "steps": len(ms), "step_ms_median": statistics.median(ms), "step_ms_min": min(ms),
        "step_ms_mean": statistics.fmean(ms),
        "wire_bytes_per_rank_step": wire.item() / world if spec != "compute-only" else 0.0,
        "payload_bytes_per_rank_step": (sent1 - sent0) / steps,
        "tnq_kernel_ms": kernel.item(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "final_loss": float(loss), "note": note, "in_sync": in_sync if spec != "compute-only" else True,
    }


def run_worker(args, body) -> None:
    """One rank: join the gloo group the launcher set up, measure the link, call
    ``body(cfg, rank, iface, tnq_backend, link_gbit) -> rows`` and write rank 0's rows for the launcher. Then leave
    without interpreter teardown: on a loaded 2-core CI box, a gloo/DDP background thread still being destroyed at
    exit once aborted rank 0 ("terminate called without an active exception") after every measurement had
    completed."""
    import torch.distributed as dist
    cfg = json.loads(args.config)
    torch.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://{cfg['master']}:{cfg['port']}", rank=args.rank,
                            world_size=cfg["world"], timeout=timedelta(seconds=cfg["timeout"]))
    try:
        iface = cfg["ifaces"][_side(args.rank, cfg["world"])] if cfg["ifaces"] else None
        try:
            from tnq_kernels import ops
            tnq_backend = None if ops.native_error is None else "reference"
        except ImportError:
            tnq_backend = "reference"
        link = _measure_link(args.rank, cfg["link_probe_bytes"], cfg["world"])
        rows = body(cfg, args.rank, iface, tnq_backend, link)
        if args.rank == 0:
            Path(args.out).write_text(json.dumps(rows))
        dist.barrier()  # nobody tears gloo down while the other rank still talks to it
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _step_rows(cfg: dict, rank: int, iface: str | None, tnq_backend: str | None, link: float) -> list[dict]:
    import torch.distributed as dist
    rows = []
    for spec in cfg["compressors"]:
        try:
            row = _run_config(spec, cfg, rank, iface, tnq_backend)
        except (ImportError, AttributeError) as e:  # tnq_kernels.ddp absent or older API: skip, say why
            row = {"compressor": spec, "note": f"skipped: {type(e).__name__}: {e}"}
            dist.barrier()
        row.update(link_gbit_measured=link, tnq_backend=(tnq_backend or "native") if spec.startswith("tnq")
                   else "")
        rows.append(row)
        if rank == 0:
            print(f"  {spec:18s} {row.get('step_ms_median', math.nan):9.1f} ms/step", flush=True)
    return rows


# =====================================================================================================================
# launcher: namespaces, tc, processes
# =====================================================================================================================

def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why shaped runs cannot happen here, or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces and tc need root (run with sudo)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install iproute2)"
    probe = f"tnqp{os.getpid()}"
    try:
        _sh("ip", "netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as e:
        return f"`ip netns add` failed: {getattr(e, 'stderr', '') or e}".strip()
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class ShapedLink:
    """Two namespaces joined by a veth pair, both ends shaped to ``gbit`` Gbit/s (0 = unshaped); deleted on exit.

    Only these namespaces and their 10.77.0.x addresses are created; deleting a namespace deletes its veth end.
    """

    def __init__(self, gbit: float):
        tag = f"tnqb{os.getpid() % 100000}"
        self.ns = (f"{tag}a", f"{tag}b")
        self.ifaces = (f"{tag}a", f"{tag}b")  # veth names (<= 15 chars), one per namespace
        self.addrs = (f"{SUBNET}.1", f"{SUBNET}.2")
        self.gbit = gbit

    def __enter__(self):
        try:
            for ns in self.ns:
                _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", self.ifaces[0], "type", "veth", "peer", "name", self.ifaces[1])
            for ns, dev, addr in zip(self.ns, self.ifaces, self.addrs):
                _sh("ip", "link", "set", dev, "netns", ns)
                _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _sh("ip", "-n", ns, "link", "set", dev, "up")
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
                if self.gbit > 0:
                    rate = self.gbit * 1e9 / 8  # bytes/s
                    # burst: 1 ms of traffic (>= 64 KiB so one GSO segment fits); queue: 20 ms before drops
                    burst = max(64 << 10, int(rate * 1e-3))
                    _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                        "rate", f"{int(self.gbit * 1000)}mbit", "burst", str(burst), "latency", "20ms")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.ifaces[0]], capture_output=True, timeout=30)
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: dict, link: ShapedLink | None, timeout: float, script: str | Path = __file__) -> list[dict]:
    """Run the ranks of ``script --worker`` (inside the namespaces when ``link`` is given); returns rank 0's rows."""
    cfg = dict(cfg)
    if link is None:
        cfg.update(master="127.0.0.1", port=_free_port(), ifaces=None)
    else:
        cfg.update(master=link.addrs[0], port=29577, ifaces=list(link.ifaces))
    with tempfile.TemporaryDirectory(prefix="tnq_e2e_") as tmp:
        out = Path(tmp) / "rows.json"
        procs = []
        try:
            for rank in range(cfg["world"]):
                env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]),
                           PYTHONPATH=os.pathsep.join([str(H.ROOT), os.environ.get("PYTHONPATH", "")]))
                cmd = [sys.executable, str(Path(script).resolve()), "--worker", "--rank", str(rank),
                       "--out", str(out), "--config", json.dumps(cfg)]
                if link is not None:
                    side = _side(rank, cfg["world"])
                    env["GLOO_SOCKET_IFNAME"] = link.ifaces[side]
                    cmd = ["ip", "netns", "exec", link.ns[side]] + cmd
                else:
                    env["GLOO_SOCKET_IFNAME"] = _loopback_name()
                procs.append(subprocess.Popen(cmd, env=env, stdout=None if rank == 0 else subprocess.DEVNULL))
            deadline = time.monotonic() + timeout
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{Path(script).stem}: ranks still running after {timeout:.0f} s; stopping them", file=sys.stderr)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
        codes = [p.returncode for p in procs]
        if any(codes) or not out.exists():
            raise RuntimeError(f"{Path(script).stem} ranks failed (exit codes {codes}); see their output above")
        return json.loads(out.read_text())


def _loopback_name() -> str:
    names = [line.partition(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    return "lo" if "lo" in names or not names else names[0]


def _with_speedups(rows: list[dict]) -> None:
    base = {r["bandwidth_gbit"]: r.get("step_ms_median") for r in rows if r["compressor"] == "allreduce"}
    for r in rows:
        b, t = base.get(r["bandwidth_gbit"]), r.get("step_ms_median")
        r["speedup_vs_allreduce"] = b / t if b and t else math.nan
        # time the bytes this rank put on the wire take at the rate the shaped link delivered (TCP/IP included)
        link, wire = r.get("link_gbit_measured"), r.get("wire_bytes_per_rank_step")
        r["wire_ms"] = 8e3 * wire / (link * 1e9) if link and wire is not None and r["bandwidth_gbit"] else math.nan


def table(rows: list[dict]) -> str:
    shown = []
    for r in rows:
        shown.append({
            "link": r["bandwidth_label"], "measured Gbit/s": r.get("link_gbit_measured", math.nan),
            "compressor": r["compressor"], "step ms (median)": r.get("step_ms_median", math.nan),
            "vs allreduce": r.get("speedup_vs_allreduce", math.nan),
            "MB sent/rank/step": r.get("wire_bytes_per_rank_step", math.nan) / 1e6,
            "wire ms": r.get("wire_ms", math.nan), "tnq kernel ms": r.get("tnq_kernel_ms", math.nan),
            "in sync": r.get("in_sync", ""), "note": r.get("note", ""),
        })
    return H.format_table(shown, list(shown[0]) if shown else [])


def add_link_args(p: argparse.ArgumentParser, bandwidths: str) -> None:
    """The flags every shaped-link benchmark shares: the network, its bandwidths and the hidden worker flags."""
    p.add_argument("--net", choices=["netns", "loopback"], default="netns",
                   help="netns: two namespaces + veth + tc (root); loopback: both ranks on 127.0.0.1, unshaped")
    p.add_argument("--bandwidths", default=bandwidths, help="Gbit/s per link, comma-separated; 0 = unshaped veth")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (2 ranks on a 2-core machine)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--config", default="{}", help=argparse.SUPPRESS)


def parse_bandwidths(text: str) -> list[float]:
    """``--bandwidths`` as floats (Gbit/s, 0 = unshaped veth); a ValueError naming the flag otherwise."""
    try:
        bandwidths = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        bandwidths = [-1.0]
    if not bandwidths or any(not b >= 0 or math.isinf(b) for b in bandwidths):
        raise ValueError(f"--bandwidths must be comma-separated Gbit/s >= 0 (0 = unshaped), got {text!r}")
    return bandwidths


def link_plan(net: str, bandwidths: list[float], tag: str) -> list[tuple[float | None, str]]:
    """[(Gbit/s or None for loopback, label)] to run over; [] (with the reason printed) when shaped runs cannot
    happen here. Also makes SIGTERM unwind through ShapedLink.__exit__ so the namespaces are deleted."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if net == "loopback":
        return [(None, "loopback")]
    why = netns_unavailable()
    if why:
        print(f"{tag}: SKIPPED shaped runs: {why}")
        return []
    return [(b, f"{b:g} Gbit/s" if b else "veth unshaped") for b in bandwidths]


def launch_on(gbit: float | None, cfg: dict, timeout: float, script: str | Path = __file__) -> list[dict]:
    """``launch`` over loopback (``gbit`` None) or a fresh shaped link; each row gets the link's columns."""
    if gbit is None:
        got = launch(cfg, None, timeout, script)
    else:
        with ShapedLink(gbit) as link:
            got = launch(cfg, link, timeout, script)
    for r in got:
        r.update(bandwidth_gbit="" if not gbit else gbit,
                 bandwidth_label="loopback" if gbit is None else f"{gbit:g} Gbit/s" if gbit else "veth unshaped",
                 net="loopback" if gbit is None else "netns-veth-tbf")
    return got


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_link_args(p, "1,10,25")
    p.add_argument("--compressors", default=None, help=f"comma-separated (default {','.join(DEFAULT_COMPRESSORS)})")
    p.add_argument("--width", type=int, default=2048, help="MLP width (params per layer ~ width^2)")
    p.add_argument("--depth", type=int, default=3, help="MLP layers (default 3 x 2048^2: 12.6 M params, 50 MB)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    p.add_argument("--steps", type=int, default=6, help="timed steps per compressor (at most)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (PowerSGD compresses from step 2)")
    p.add_argument("--world", type=int, choices=(2, 4), default=WORLD,
                   help="ranks; 4 puts two in each namespace (a 2-node x 2-rank cluster for the FSDP rows)")
    p.add_argument("--config-seconds", type=float, default=30.0, help="time budget per compressor's timed steps")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per bandwidth before ranks are killed")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run: tiny model, few steps")
    p.add_argument("--csv", default=str(H.results_path("e2e_ddp.csv")), help="CSV to append to ('' for none)")
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args, _step_rows)

    compressors = (args.compressors.split(",") if args.compressors
                   else TINY_COMPRESSORS if args.tiny else DEFAULT_COMPRESSORS)
    cfg = dict(world=args.world, width=args.width, depth=args.depth, batch=args.batch, bucket_mb=args.bucket_mb,
               steps=args.steps,
               warmup=args.warmup, threads=args.threads, config_seconds=args.config_seconds,
               timeout=args.timeout, compressors=compressors, link_probe_bytes=16 << 20)
    if args.tiny:
        cfg.update(width=64, depth=2, batch=8, steps=3, warmup=2, config_seconds=5.0, link_probe_bytes=1 << 16)
    bandwidths = parse_bandwidths(args.bandwidths)

    run = H.run_id()
    env = H.environment("cpu")
    env["threads"] = args.threads
    rows: list[dict] = []
    plan = link_plan(args.net, bandwidths, "e2e")
    if not plan:
        return 0
    for gbit, label in plan:
        print(f"e2e: {label}: {len(compressors)} compressors, model {cfg['depth']} x {cfg['width']}^2", flush=True)
        got = launch_on(gbit, cfg, args.timeout)
        for r in got:
            r.update(world=args.world)
        rows += got
    _with_speedups(rows)
    if args.csv:
        H.append_csv(args.csv, [{**env, "run": run, **r} for r in rows], CSV_COLUMNS)
    print()
    print(f"e2e DDP over gloo, world size {args.world}, {env['cpu']} ({env['cpu_cores']} cores), torch {env['torch']}, "
          f"{env['date']}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
