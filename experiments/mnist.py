"""The paper's MNIST experiment: N = 8 clients, momentum SGD, gradients compressed to b bits and averaged.

    python -m experiments.mnist --quick              # all compressors at 3 bits, 1 seed, < 2 min
    python -m experiments.mnist --sweep              # none + 4 codebooks x bits 2..5 x 3 seeds, 2 epochs
    python -m experiments.mnist --mode ddp ...       # the same runs over torch.distributed (gloo)
    python -m experiments.mnist --error-feedback ... # clients re-inject their residuals (not the paper's)

Each step every client computes the gradient of its own mini-batch, flattens it into the DDP bucket layout,
compresses each bucket with seed derive_seed(seed, client, step, bucket); the server decodes and averages the
clients' payloads with decompress_sum(weights = 1/N) and applies the update. Two modes give the same numbers:
  sim  one process loops over the clients (fast);
  ddp  N processes on 127.0.0.1 (gloo), DistributedDataParallel with tnq_kernels.ddp.tnq_hook ("allgather").
Equal numbers need equal init (torch.manual_seed(seed) before building the model), equal data order per client
and the same bucket layout: DDP packs every gradient into one bucket (BUCKET_CAP_MB) whose order is the
parameter order in the first step and, after DDP's bucket rebuild, the order the gradients became ready in the
first backward; the simulation replays exactly that (see ``ddp_bucket_layouts``).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import tnq_kernels as tnq
from .data import MNIST, load_mnist, split_clients
from .model import MnistCNN

COMPRESSORS = ("none", "tnq", "tqsgd", "nqsgd", "qsgd")
#: Large enough that DDP puts the whole model (1.27 MB) in one bucket, and explicit, so DDP also drops its 1 MiB
#: first-bucket cap: one payload per client per step.
BUCKET_CAP_MB = 64
#: The paper's final MNIST accuracies at 3 bits (the only two it publishes).
PAPER_3BIT = {"tnq": 0.9595, "tqsgd": 0.9487}
CSV_FIELDS = ("compressor", "bits", "seed", "epoch", "step", "train_loss", "test_accuracy", "bits_per_client_step")

Layout = list[list[int]]  # buckets in DDP order, each a list of parameter indices in bucket order


@dataclass
class RunConfig:
    """One training run. ``bits`` is ignored (reported as 32) for compressor "none"."""
    compressor: str = "tnq"
    bits: int = 3
    seed: int = 0
    epochs: float = 1.0
    clients: int = 8
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    block_size: int = tnq.DEFAULT_BLOCK_SIZE
    iid: bool = True
    eval_every: int = 100
    train_subset: int = 0  # 0: all 60k; else the first n images (tests)
    test_subset: int = 0
    backend: str | None = None  # None: C++ if built, else the reference (same bits)
    error_feedback: bool = False  # each client re-injects its own compression residual (TNQState's option)

    def __post_init__(self):
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {COMPRESSORS}, got {self.compressor!r}")
        if self.compressor == "none":
            self.bits = 32
            self.error_feedback = False  # nothing is lost, so there is no residual
        elif not 2 <= self.bits <= 5:
            raise ValueError(f"bits must be in 2..5 for compressor {self.compressor!r}, got {self.bits}")
        for name in ("clients", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")


@dataclass
class RunResult:
    config: RunConfig
    records: list[dict]  # CSV rows (CSV_FIELDS)
    state: dict  # final model state_dict
    layouts: list[Layout] = field(default_factory=list)  # bucket layout used at each step
    seconds: float = 0.0
    steps: int = 0


def resolve_backend(backend: str | None) -> str:
    """"auto" when the C++ CPU backend is built, else "reference" (the same bits, ~10x slower)."""
    if backend is not None:
        return backend
    from tnq_kernels import ops
    return "auto" if ops.native_error is None else "reference"


# ---- data order ----

class ClientBatches:
    """Mini-batches of each client's shard: a fresh permutation per (client, epoch), drop-last."""

    def __init__(self, data: MNIST, cfg: RunConfig):
        x, y = data.train_x, data.train_y
        if cfg.train_subset:
            x, y = x[: cfg.train_subset], y[: cfg.train_subset]
        self.x, self.y, self.cfg = x, y, cfg
        self.shards = split_clients(y, cfg.clients, cfg.iid, cfg.seed)
        self.steps_per_epoch = self.shards[0].numel() // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"each client's shard ({self.shards[0].numel()} images) is smaller than one batch "
                             f"of {cfg.batch_size}")
        self._perm: dict[tuple[int, int], torch.Tensor] = {}

    def total_steps(self) -> int:
        return max(1, round(self.cfg.epochs * self.steps_per_epoch))

    def batch(self, client: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 [batch, 1, 28, 28], y int64 [batch] of ``client`` at global ``step``."""
        epoch, j = divmod(step, self.steps_per_epoch)
        key = (client, epoch)
        if key not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k[1] >= epoch}
            gen = torch.Generator().manual_seed(tnq.derive_seed(self.cfg.seed, client, epoch, 0xDA7A))
            self._perm[key] = self.shards[client][torch.randperm(self.shards[client].numel(), generator=gen)]
        idx = self._perm[key][j * self.cfg.batch_size: (j + 1) * self.cfg.batch_size]
        return self.x[idx], self.y[idx]


def build_model(seed: int) -> MnistCNN:
    torch.manual_seed(seed)
    return MnistCNN()


def evaluate(model: torch.nn.Module, data: MNIST, subset: int = 0) -> float:
    """Top-1 accuracy on the test set (or its first ``subset`` images)."""
    x, y = data.test_x, data.test_y
    if subset:
        x, y = x[:subset], y[:subset]
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], 2000):
            correct += int((model(x[i: i + 2000]).argmax(1) == y[i: i + 2000]).sum())
    model.train()
    return correct / x.shape[0]


def bits_per_client_step(cfg: RunConfig, layout: Layout, numels: Sequence[int]) -> int:
    """Bits one client sends per step: 32·n uncompressed, else 8·(payload bytes) summed over buckets."""
    sizes = [sum(numels[i] for i in bucket) for bucket in layout]
    if cfg.compressor == "none":
        return 32 * sum(sizes)
    return sum(8 * tnq.payload_bytes(n, cfg.bits, cfg.block_size) for n in sizes)


# ---- bucket layout ----

def ddp_bucket_layouts(model: torch.nn.Module) -> Callable[[int], Layout]:
    """The layout DDP (one bucket, BUCKET_CAP_MB) uses at each step, as a function of the step.

    Step 0: one bucket in parameter order. Later steps: DDP rebuilt its buckets from the order in which the
    gradients became ready during the first backward; call ``record_ready_order`` around that backward.
    """
    params = list(model.parameters())
    state = {"ready": None}

    def layout(step: int) -> Layout:
        if step == 0 or state["ready"] is None:
            return [list(range(len(params)))]
        return [list(state["ready"])]

    def record_ready_order(backward: Callable[[], None]) -> None:
        order: list[int] = []
        handles = [p.register_post_accumulate_grad_hook(lambda _p, i=i: order.append(i))
                   for i, p in enumerate(params)]
        try:
            backward()
        finally:
            for h in handles:
                h.remove()
        state["ready"] = order

    layout.record_ready_order = record_ready_order  # type: ignore[attr-defined]
    return layout


def _flat(params: list[torch.Tensor], bucket: list[int]) -> torch.Tensor:
    return torch.cat([params[i].grad.reshape(-1) for i in bucket])


def _scatter(params: list[torch.Tensor], bucket: list[int], flat: torch.Tensor) -> None:
    off = 0
    for i in bucket:
        n = params[i].numel()
        params[i].grad = flat[off: off + n].view_as(params[i]).clone()
        off += n


# ---- single-process simulation ----

def simulate(cfg: RunConfig, data: MNIST | None = None, buckets: Layout | None = None, max_steps: int = 0,
             progress: bool = True) -> RunResult:
    """Train with ``cfg.clients`` simulated clients in this process; returns CSV rows, final state and layouts.

    ``buckets``: a fixed layout (list of parameter-index lists, in DDP's bucket order) for every step; None
    replays DDP's own layout (``ddp_bucket_layouts``). ``max_steps`` > 0 stops early (tests).
    """
    data = data or load_mnist()
    backend = resolve_backend(cfg.backend)
    batches = ClientBatches(data, cfg)
    total = batches.total_steps() if not max_steps else min(max_steps, batches.total_steps())
    model = build_model(cfg.seed)
    params = list(model.parameters())
    numels = [p.numel() for p in params]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    ddp_layout = ddp_bucket_layouts(model) if buckets is None else None
    w = [1.0 / cfg.clients] * cfg.clients
    # error feedback: residuals per client and parameter, so they survive DDP's bucket rebuild as the hook's do
    residual = [[torch.zeros(n) for n in numels] for _ in range(cfg.clients)] if cfg.error_feedback else None
    records, layouts, loss_sum, loss_n = [], [], 0.0, 0
    bar = _progress(cfg, total, progress)
    t0 = time.perf_counter()
    for step in range(total):
        layout = ddp_layout(step) if ddp_layout is not None else buckets
        layouts.append(layout)
        payloads: list[list[torch.Tensor]] = [[] for _ in layout]
        for c in range(cfg.clients):
            x, y = batches.batch(c, step)
            for p in params:
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            if step == 0 and c == 0 and ddp_layout is not None:
                ddp_layout.record_ready_order(loss.backward)
            else:
                loss.backward()
            loss_sum += loss.item() / cfg.clients
            for b, bucket in enumerate(layout):
                g = _flat(params, bucket)
                if cfg.compressor == "none":
                    # DDP's default hook divides by the world size before its sum-allreduce
                    payloads[b].append(g / cfg.clients)
                else:
                    if residual is not None:
                        g = g + torch.cat([residual[c][i] for i in bucket])
                    payload = tnq.compress(g, cfg.bits, cfg.block_size, cfg.compressor,
                                           seed=tnq.derive_seed(cfg.seed, c, step, b), backend=backend)
                    payloads[b].append(payload)
                    if residual is not None:
                        r = g - tnq.decompress(payload, (g.numel(),), torch.float32, backend=backend)
                        r = torch.where(torch.isfinite(r), r, torch.zeros(()))
                        off = 0
                        for i in bucket:
                            residual[c][i] = r[off: off + numels[i]]
                            off += numels[i]
        loss_n += 1
        for b, bucket in enumerate(layout):
            if cfg.compressor == "none":
                avg = payloads[b][0]
                for g in payloads[b][1:]:
                    avg = avg + g
            else:
                n = sum(numels[i] for i in bucket)
                avg = tnq.decompress_sum(payloads[b], w, (n,), torch.float32, backend=backend)
            _scatter(params, bucket, avg)
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
            acc = evaluate(model, data, cfg.test_subset)
            records.append(_record(cfg, step + 1, batches.steps_per_epoch, loss_sum / loss_n, acc,
                                   bits_per_client_step(cfg, layout, numels)))
            loss_sum, loss_n = 0.0, 0
            _postfix(bar, records[-1])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return RunResult(cfg, records, {k: v.clone() for k, v in model.state_dict().items()}, layouts,
                     time.perf_counter() - t0, total)


def _record(cfg, step, steps_per_epoch, loss, acc, bits):
    return {"compressor": cfg.compressor, "bits": cfg.bits, "seed": cfg.seed,
            "epoch": round(step / steps_per_epoch, 4), "step": step, "train_loss": round(loss, 6),
            "test_accuracy": acc, "bits_per_client_step": bits}


def _progress(cfg: RunConfig, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    name = "fp32" if cfg.compressor == "none" else f"{cfg.compressor} {cfg.bits}b"
    name += " +EF" if cfg.error_feedback else ""
    return tqdm(total=total, desc=f"{name} seed={cfg.seed}", unit="step", leave=True, dynamic_ncols=True,
                file=sys.stderr)


def _postfix(bar, rec):
    if bar is not None:
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", acc=f"{rec['test_accuracy']:.4f}", refresh=False)


# ---- multi-process mode: real processes, torch.distributed (gloo), the DDP hook ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, cfg: RunConfig, port: int, out_path: str, max_steps: int, progress: bool,
                threads: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=cfg.clients)
    try:
        data = load_mnist()
        backend = resolve_backend(cfg.backend)
        batches = ClientBatches(data, cfg)
        total = batches.total_steps() if not max_steps else min(max_steps, batches.total_steps())
        model = build_model(cfg.seed)
        params = list(model.parameters())
        numels = [p.numel() for p in params]
        index = {id(p): i for i, p in enumerate(params)}
        ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
        seen: dict[int, Layout] = {}  # step -> layout the hook saw
        if cfg.compressor != "none":
            from tnq_kernels import ddp as tnq_ddp
            state = tnq_ddp.TNQState(process_group=None, bits=cfg.bits, block_size=cfg.block_size,
                                     codebook=cfg.compressor, scheme="allgather", seed=cfg.seed,
                                     error_feedback=cfg.error_feedback, warmup_steps=0, min_bucket_numel=0,
                                     backend=backend)
            box = {"step": 0}

            def hook(state, bucket):
                layout = seen.setdefault(box["step"], [])
                while len(layout) <= bucket.index():
                    layout.append([])
                layout[bucket.index()] = [index[id(p)] for p in bucket.parameters()]
                return tnq_ddp.tnq_hook(state, bucket)
            ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        records, loss_sum, loss_n = [], 0.0, 0
        bar = _progress(cfg, total, progress and rank == 0)
        t0 = time.perf_counter()
        for step in range(total):
            if cfg.compressor != "none":
                box["step"] = step
            x, y = batches.batch(rank, step)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            opt.step()
            lt = loss.detach().reshape(1) / cfg.clients
            dist.all_reduce(lt)
            loss_sum += float(lt)
            loss_n += 1
            if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
                if rank == 0:
                    layout = seen.get(step) or [list(range(len(params)))]
                    records.append(_record(cfg, step + 1, batches.steps_per_epoch, loss_sum / loss_n,
                                           evaluate(model, data, cfg.test_subset),
                                           bits_per_client_step(cfg, layout, numels)))
                    _postfix(bar, records[-1])
                loss_sum, loss_n = 0.0, 0
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if rank == 0:
            layouts = [seen.get(s, []) for s in range(total)]
            torch.save({"records": records, "state": model.state_dict(), "layouts": layouts,
                        "seconds": time.perf_counter() - t0, "steps": total}, out_path)
        del ddp  # its reducer holds the process group: release it while every rank is still connected
        dist.barrier()  # nobody tears gloo down while another rank still talks to it
    finally:
        dist.destroy_process_group()


def _ddp_entry(rank: int, *args) -> None:
    _ddp_worker(rank, *args)
    # Results are saved and the group is destroyed. Leave without interpreter teardown: on a loaded 2-core CI box a
    # gloo/DDP background thread still being destroyed at exit once aborted a worker of another gloo script
    # ("terminate called without an active exception") after all its work was done. Failures raise above instead,
    # so mp.spawn still reports their traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(cfg: RunConfig, max_steps: int = 0, progress: bool = True, threads: int = 1) -> RunResult:
    """Train with ``cfg.clients`` real processes (gloo on 127.0.0.1) and the tnq DDP hook.

    ``layouts`` of the result holds the bucket layout the hook saw at each step (empty for "none").
    """
    import torch.multiprocessing as mp
    if cfg.compressor != "none":
        try:
            from tnq_kernels import ddp as _  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"--mode ddp needs tnq_kernels.ddp (the DDP hook), which failed to import: {e}") from e
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_ddp_entry, args=(cfg, _free_port(), out, max_steps, progress, threads), nprocs=cfg.clients,
                 join=True)
        res = torch.load(out, weights_only=False)
    return RunResult(cfg, res["records"], res["state"], res["layouts"], res["seconds"], res["steps"])


# ---- sweep + outputs ----

def write_csv(path: str, records: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(records)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("bits", "seed", "step", "bits_per_client_step"):
            r[k] = int(r[k])
        for k in ("epoch", "train_loss", "test_accuracy"):
            r[k] = float(r[k])
    return rows


def plan(compressors: Sequence[str], bits: Sequence[int], seeds: Sequence[int], base: RunConfig) -> list[RunConfig]:
    """The runs of a sweep: "none" once per seed, every other compressor at every bit width."""
    runs = []
    for seed in seeds:
        for comp in compressors:
            for b in ([32] if comp == "none" else bits):
                runs.append(replace(base, compressor=comp, bits=b if comp != "none" else 3, seed=seed))
    return runs


def sweep(runs: list[RunConfig], out_dir: str, mode: str = "sim", resume: bool = False,
          progress: bool = True, data: MNIST | None = None, max_steps: int = 0) -> list[dict]:
    """Run ``runs`` one after another, rewriting results.csv / runs.csv / table.md / PNGs after each run."""
    from . import report
    os.makedirs(out_dir, exist_ok=True)
    csv_path, runs_path = os.path.join(out_dir, "results.csv"), os.path.join(out_dir, "runs.csv")
    records = read_csv(csv_path) if resume and os.path.exists(csv_path) else []
    timings = report.read_runs(runs_path) if resume and os.path.exists(runs_path) else []
    done = {(r["compressor"], int(r["bits"]), int(r["seed"])) for r in timings}
    if mode == "sim" and data is None:
        data = load_mnist()
    for cfg in runs:
        key = (cfg.compressor, cfg.bits, cfg.seed)
        if key in done:
            continue
        res = simulate(cfg, data, max_steps=max_steps, progress=progress) if mode == "sim" else \
            run_ddp(cfg, max_steps=max_steps, progress=progress)
        records = [r for r in records if (r["compressor"], r["bits"], r["seed"]) != key] + res.records
        timings.append({"compressor": cfg.compressor, "bits": cfg.bits, "seed": cfg.seed, "mode": mode,
                        "backend": resolve_backend(cfg.backend), "steps": res.steps,
                        "seconds": round(res.seconds, 2), "ms_per_step": round(1000 * res.seconds / res.steps, 2),
                        "final_accuracy": res.records[-1]["test_accuracy"]})
        write_csv(csv_path, records)
        report.write_runs(runs_path, timings)
        report.write_all(records, out_dir, config=runs[0], timings=timings)
    return records


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.mnist", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="every compressor at 3 bits, one seed, 0.25 epoch (< 2 min on 2 CPU cores)")
    p.add_argument("--sweep", action="store_true", help="the full sweep: bits 2..5, seeds 0,1,2, 2 epochs")
    p.add_argument("--mode", choices=("sim", "ddp"), default="sim")
    p.add_argument("--compressors", default=",".join(COMPRESSORS))
    p.add_argument("--bits", default=None, help="comma list, default 3 (--sweep: 2,3,4,5)")
    p.add_argument("--seeds", default=None, help="comma list, default 0 (--sweep: 0,1,2)")
    p.add_argument("--epochs", type=float, default=None, help="default 1 (--quick: 0.25, --sweep: 2)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=RunConfig.lr)
    p.add_argument("--momentum", type=float, default=RunConfig.momentum)
    p.add_argument("--block-size", type=int, default=tnq.DEFAULT_BLOCK_SIZE)
    p.add_argument("--non-iid", action="store_true", help="each client holds mostly two digits")
    p.add_argument("--error-feedback", action="store_true",
                   help="each client adds its previous compression residual to its gradient (off in the sweep)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between test evaluations")
    p.add_argument("--backend", default=None, help="tnq backend (default: C++ if built, else reference)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the simulation (default 2)")
    p.add_argument("--out", default=None,
                   help="output folder (default experiments/results/mnist; --quick: out/mnist-quick)")
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs.csv")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--train-subset", type=int, default=0, help="use only the first N training images (smoke tests)")
    p.add_argument("--test-subset", type=int, default=0, help="evaluate on the first N test images (smoke tests)")
    a = p.parse_args(argv)
    for c in a.compressors.split(","):
        if c not in COMPRESSORS:
            p.error(f"--compressors: {c!r} is not one of {COMPRESSORS}")
    torch.set_num_threads(a.threads)
    bits = _ints(a.bits) if a.bits else ([2, 3, 4, 5] if a.sweep else [3])
    seeds = _ints(a.seeds) if a.seeds else ([0, 1, 2] if a.sweep else [0])
    epochs = a.epochs if a.epochs is not None else (0.25 if a.quick else 2.0 if a.sweep else 1.0)
    eval_every = a.eval_every or (29 if a.quick else 78)
    out = a.out or ("out/mnist-quick" if a.quick else "experiments/results/mnist")
    try:
        base = RunConfig(epochs=epochs, clients=a.clients, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
                         block_size=a.block_size, iid=not a.non_iid, eval_every=eval_every, backend=a.backend,
                         error_feedback=a.error_feedback,
                         train_subset=a.train_subset, test_subset=a.test_subset)
        runs = plan(a.compressors.split(","), bits, seeds, base)
        data = load_mnist() if a.mode == "sim" else None
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"MNIST, {a.clients} clients ({'IID' if base.iid else 'non-IID'}), {len(runs)} runs x {epochs} epochs, "
          f"mode={a.mode}, backend={resolve_backend(a.backend)}, threads={a.threads} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    records = sweep(runs, out, a.mode, a.resume, not a.no_progress, data)
    from . import report
    print(report.table(records), flush=True)
    print(f"\n{len(runs)} runs in {time.perf_counter() - t0:.0f} s; results in {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
