"""Time to accuracy: wall-clock seconds for real DDP training to reach a fixed MNIST test accuracy over a shaped link.

Two gloo ranks (one thread each), one in each of two network namespaces joined by a tc-shaped veth (the link of
``e2e_ddp.py``, at ``--bandwidths`` Gbit/s), train a wide MLP (784-2048-2048-10 by default: 5.8 M parameters, 23 MB
of fp32 gradients) on real MNIST with each compressor in turn:

    allreduce     DDP's default fp32 all-reduce
    fp16          torch's fp16_compress_hook
    powersgd4     torch's PowerSGD hook, rank 4, as e2e_ddp.py attaches it (error feedback and warm start on)
    tnq-<b>       tnq_kernels.ddp.tnq_hook with the library's default state, TNQState(bits=b, seed=seed): rtnq

Every global batch is drawn from a seeded permutation of the 60k training images and split in halves, one per
rank, so a seed gives every compressor the same model initialisation and the same batches. Every ``--eval-every``
steps both ranks stop the clock, evaluate the 10k test images (half each) and resume it: the wall clock counts
training steps only (the slower rank's, per segment), and the evaluation time is reported apart. A run stops at
the first evaluation at or above the target accuracy, or at ``--max-steps`` / ``--max-seconds``.

The target is fixed from fp32 before any compressed run, by a rule applied mechanically (``--calibrate``):

    target = the lowest, over the calibration seeds, of the test accuracy fp32 all-reduce reaches at the first
             evaluation at or after CALIBRATE_FRACTION (1/2) of --max-steps, rounded DOWN to a multiple of 0.005.

so every fp32 seed reaches the target by half its step budget and a compressor needing up to twice the steps of
fp32 still reaches it. Calibration runs fp32 over loopback (accuracy per step does not depend on the link) and
writes the target with the configuration it holds for to benchmarks/results/tta_ddp_target.json; a run without
``--target`` reads that file, and refuses it when the model, data or optimiser flags differ.

    sudo .venv/bin/python benchmarks/tta_ddp.py --calibrate               # fp32 only, loopback: sets the target
    sudo .venv/bin/python benchmarks/tta_ddp.py --bandwidths 1,10         # every compressor, seeds 0,1,2
    .venv/bin/python benchmarks/tta_ddp.py --net loopback --tiny --target 0.6   # seconds, no root: the CI smoke run

Appends one row per run to benchmarks/results/tta_ddp.csv and the (step, seconds, accuracy) points of every
evaluation to tta_ddp_curves.csv, then draws tta_ddp.png (accuracy against training seconds, one panel per link) and
writes tta_ddp.md (median over seeds, min-max) from this run's rows (``plot.py`` redraws them from the CSVs).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import _helper as H  # noqa: E402
import e2e_ddp as E  # noqa: E402

DEFAULT_COMPRESSORS = ["allreduce", "fp16", "powersgd4", "tnq-2", "tnq-3", "tnq-4"]
CALIBRATE_FRACTION = 0.5  # the target is what fp32 reaches by this fraction of --max-steps (module docstring)
TARGET_STEP = 0.005  # ... rounded down to a multiple of this
TARGET_FILE = "tta_ddp_target.json"
#: the flags a calibrated target depends on (a target file made with other values is refused)
TARGET_KEYS = ("hidden", "batch", "lr", "momentum", "max_steps", "eval_every", "train_size", "test_size")
CSV_COLUMNS = ("date", "run", "mode", "net", "bandwidth_gbit", "link_gbit_measured", "compressor", "codebook",
               "scheme", "bits", "seed", "target", "reached", "seconds_to_target", "steps_to_target", "steps",
               "train_seconds", "eval_seconds", "final_accuracy", "final_loss", "step_ms_mean",
               "wire_bytes_per_rank_step", "payload_bytes_per_rank_step", "params", "grad_bytes", "loadavg_1m_start",
               "loadavg_1m", "in_sync", "tnq_backend", "tnq_version", "rng_version", "note")
CURVE_COLUMNS = ("run", "mode", "bandwidth_gbit", "compressor", "seed", "step", "train_seconds", "test_accuracy",
                 "train_loss")


# =====================================================================================================================
# worker: one rank trains every compressor for one seed
# =====================================================================================================================

def mlp(hidden: list[int]) -> torch.nn.Sequential:
    """x float32 [B, 1, 28, 28] -> logits [B, 10]: 784 -> hidden[0] -> ... -> 10, ReLU between."""
    sizes = [784] + list(hidden) + [10]
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(step: int, seed: int, batch: int, n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share (batch // world indices into the training set) of global batch ``step``: epoch e walks a
    permutation of range(n) drawn from (seed, e); the remainder of n / batch is dropped each epoch."""
    epoch, i = divmod(step, n // batch)
    share = batch // world
    return _epoch_order(seed, epoch, n)[i * batch + rank * share: i * batch + (rank + 1) * share]


def _train(spec: str, seed: int, cfg: dict, rank: int, iface: str | None, tnq_backend: str | None,
           data) -> tuple[dict, list[dict]]:
    import torch.distributed as dist
    world = cfg["world"]
    torch.manual_seed(seed)
    model = mlp(cfg["hidden"])
    net, scheme, bits, state, note = E.ddp_model(model, spec, tnq_backend, cfg["bucket_mb"], codebook=None, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    train_x, train_y = data.train_x[: cfg["train_size"]], data.train_y[: cfg["train_size"]]
    # each rank evaluates its contiguous half of the test images; the correct counts are summed
    test_n = cfg["test_size"]
    lo, hi = rank * test_n // world, (rank + 1) * test_n // world
    test_x, test_y = data.test_x[lo:hi], data.test_y[lo:hi]

    def evaluate() -> float:
        with torch.no_grad():
            correct = torch.tensor([float((model(test_x).argmax(1) == test_y).sum())], dtype=torch.float64)
        dist.all_reduce(correct)
        return correct.item() / test_n

    target = cfg["target"]
    load0 = round(os.getloadavg()[0], 2)
    t_eval = time.perf_counter()
    curve = [{"step": 0, "train_seconds": 0.0, "test_accuracy": evaluate(), "train_loss": math.nan}]
    eval_s = time.perf_counter() - t_eval
    sent0 = E._tnq_sent_bytes(state) if state is not None and spec.startswith("tnq") else math.nan
    step, train_s, wire, loss = 0, 0.0, 0.0, math.nan
    reached = None
    while True:
        n = min(cfg["eval_every"], cfg["max_steps"] - step)
        dist.barrier()  # both ranks start the clock together
        tx0 = _tx(iface)
        t0 = time.perf_counter()
        losses = []
        for _ in range(n):
            idx = batch_indices(step, seed, cfg["batch"], cfg["train_size"], rank, world)
            opt.zero_grad(set_to_none=False)
            out = torch.nn.functional.cross_entropy(net(train_x[idx]), train_y[idx])
            out.backward()
            opt.step()
            losses.append(out.item())
            step += 1
        seg = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        wire += _tx(iface) - tx0
        dist.all_reduce(seg, op=dist.ReduceOp.MAX)  # a segment lasts until the slower rank is done
        train_s += seg.item()
        loss = sum(losses) / len(losses)
        t_eval = time.perf_counter()
        acc = evaluate()
        eval_s += time.perf_counter() - t_eval
        curve.append({"step": step, "train_seconds": train_s, "test_accuracy": acc, "train_loss": loss})
        if rank == 0 and cfg["verbose"]:
            print(f"    {spec:10s} seed {seed} step {step:5d} {train_s:8.1f} s  acc {acc:.4f}  loss {loss:.4f}",
                  flush=True)
        if acc >= target:
            reached = (train_s, step)
            break
        if not math.isfinite(loss):
            note = "; ".join(filter(None, [note, "diverged (loss not finite)"]))
            break
        if step >= cfg["max_steps"] or train_s >= cfg["max_seconds"]:
            break
    # the interface counters are per namespace (one rank in each): the bytes each rank sent, averaged
    w = torch.tensor([wire], dtype=torch.float64)
    dist.all_reduce(w)
    sent = (E._tnq_sent_bytes(state) - sent0) / step if not math.isnan(sent0) else math.nan
    params = sum(p.numel() for p in model.parameters())
    row = {
        "compressor": spec, "codebook": getattr(state, "codebook", "") if spec.startswith("tnq") else "",
        "scheme": scheme, "bits": bits, "seed": seed, "target": target, "reached": reached is not None,
        "seconds_to_target": reached[0] if reached else math.nan, "steps_to_target": reached[1] if reached else "",
        "steps": step, "train_seconds": train_s, "eval_seconds": eval_s, "final_accuracy": curve[-1]["test_accuracy"],
        "final_loss": loss, "step_ms_mean": 1e3 * train_s / step,
        "wire_bytes_per_rank_step": w.item() / world / step if iface else math.nan,
        "payload_bytes_per_rank_step": sent, "params": params, "grad_bytes": 4 * params,
        "loadavg_1m_start": load0, "loadavg_1m": round(os.getloadavg()[0], 2),
        "in_sync": E.params_in_sync(model), "note": note,
    }
    return row, curve


def _tx(iface: str | None) -> float:
    return E._tx_bytes(iface) if iface else 0.0


def _rows(cfg: dict, rank: int, iface: str | None, tnq_backend: str | None, link: float) -> list[dict]:
    from experiments.data import load_mnist
    data = load_mnist()
    rows = []
    for spec in cfg["compressors"]:
        row, curve = _train(spec, cfg["seed"], cfg, rank, iface, tnq_backend, data)
        row.update(link_gbit_measured=link,
                   tnq_backend=(tnq_backend or "native") if spec.startswith("tnq") else "", curve=curve)
        rows.append(row)
        if rank == 0:
            got = f"{row['seconds_to_target']:.1f} s, {row['steps_to_target']} steps" if row["reached"] else \
                f"not reached in {row['train_seconds']:.1f} s, {row['steps']} steps"
            print(f"  {spec:10s} seed {cfg['seed']}: target {cfg['target']:.4g} {got}; final accuracy "
                  f"{row['final_accuracy']:.4f}, load {row['loadavg_1m']}", flush=True)
    return rows


# =====================================================================================================================
# launcher
# =====================================================================================================================

def calibrated_target(curves: dict[int, list[dict]], max_steps: int) -> tuple[float, dict[int, float]]:
    """The target rule (module docstring) applied to fp32's curves {seed: [{step, test_accuracy}, ...]}: returns
    (target, {seed: accuracy at the first evaluation at or after CALIBRATE_FRACTION of max_steps})."""
    at = {}
    for seed, curve in curves.items():
        pts = [c for c in curve if c["step"] >= CALIBRATE_FRACTION * max_steps]
        if not pts:
            raise ValueError(f"calibration seed {seed} stopped at step {curve[-1]['step']}, before "
                             f"{CALIBRATE_FRACTION:g} x --max-steps {max_steps}")
        at[seed] = pts[0]["test_accuracy"]
    low = min(at.values())
    return round(math.floor(low / TARGET_STEP + 1e-9) * TARGET_STEP, 6), at


def _target_from_file(path: Path, cfg: dict) -> float:
    if not path.exists():
        raise ValueError(f"--target not given and no calibrated target at {path}: run --calibrate first (it fixes "
                         f"the target from fp32) or pass --target")
    saved = json.loads(path.read_text())
    differ = {k: (saved["config"].get(k), cfg[k]) for k in TARGET_KEYS if saved["config"].get(k) != cfg[k]}
    if differ:
        raise ValueError(f"the target in {path} was calibrated with other flags (saved, now): {differ}; rerun "
                         f"--calibrate with these flags or pass --target")
    return float(saved["target"])


def check_args(args) -> tuple[list[str], list[int], list[float], list[int]]:
    """(compressors, seeds, bandwidths, hidden) from the flags, or a ValueError naming the flag."""
    compressors = [E.check_compressor(c.strip()) for c in args.compressors.split(",") if c.strip()]
    if not compressors:
        raise ValueError(f"--compressors must name at least one compressor, got {args.compressors!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    except ValueError as e:
        raise ValueError(f"--seeds and --hidden take comma-separated integers, got --seeds {args.seeds!r}, "
                         f"--hidden {args.hidden!r}") from e
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must be comma-separated integers >= 0, got {args.seeds!r}")
    if not hidden or min(hidden) < 1:
        raise ValueError(f"--hidden must be comma-separated layer widths >= 1, got {args.hidden!r}")
    for name in ("max_steps", "eval_every", "batch", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch % 2:
        raise ValueError(f"--batch (the global batch, split over 2 ranks) must be even, got {args.batch}")
    if args.target is not None and not 0 < args.target <= 1:
        raise ValueError(f"--target must be a test accuracy in (0, 1], got {args.target}")
    if not args.lr > 0 or not 0 <= args.momentum < 1 or not args.max_seconds > 0:
        raise ValueError(f"--lr must be > 0, --momentum in [0, 1), --max-seconds > 0; got {args.lr}, "
                         f"{args.momentum}, {args.max_seconds}")
    return compressors, seeds, E.parse_bandwidths(args.bandwidths), hidden


def _curves_path(csv_path: str) -> Path:
    return Path(csv_path).with_name(Path(csv_path).stem + "_curves.csv")


def _versions() -> dict:
    import tnq_kernels
    from tnq_kernels import rng
    return {"tnq_version": getattr(tnq_kernels, "__version__", ""), "rng_version": getattr(rng, "VERSION", "")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_link_args(p, "1,10")
    p.add_argument("--compressors", default=",".join(DEFAULT_COMPRESSORS),
                   help="comma-separated: allreduce, fp16, powersgd<rank>, tnq-<bits> (default %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (model init and batch order)")
    p.add_argument("--target", type=float, default=None,
                   help=f"test accuracy to reach (default: the calibrated one in results/{TARGET_FILE})")
    p.add_argument("--calibrate", action="store_true",
                   help="run fp32 all-reduce only, over loopback, to --max-steps; fix and store the target")
    p.add_argument("--hidden", default="2048,2048", help="MLP hidden widths (default 784-2048-2048-10, 5.8 M params)")
    p.add_argument("--batch", type=int, default=128, help="global batch (each rank takes half)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    p.add_argument("--eval-every", type=int, default=25, help="steps between test evaluations")
    p.add_argument("--max-steps", type=int, default=1000, help="step cap per run")
    p.add_argument("--max-seconds", type=float, default=900.0, help="cap on a run's training seconds")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per (link, seed) before ranks are killed")
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long smoke run: 784-64-10, 4096 training and 1000 test images, 40 steps at most")
    p.add_argument("--csv", default=str(H.results_path("tta_ddp.csv")),
                   help="CSV to append to; the curves go next to it as <name>_curves.csv, the target file, plot "
                        "and table to its folder ('' for none of them)")
    p.add_argument("--quiet", action="store_true", help="print one line per run, not one per evaluation")
    args = p.parse_args(argv)
    if args.worker:
        E.run_worker(args, _rows)
    if args.tiny:
        for flag, value in (("hidden", "64"), ("batch", 32), ("eval_every", 5), ("max_steps", 40)):
            if getattr(args, flag) == p.get_default(flag):
                setattr(args, flag, value)
    try:
        compressors, seeds, bandwidths, hidden = check_args(args)
    except ValueError as e:
        p.error(str(e))
    cfg = dict(world=E.WORLD, hidden=hidden, batch=args.batch, lr=args.lr, momentum=args.momentum,
               bucket_mb=args.bucket_mb, eval_every=args.eval_every, max_steps=args.max_steps,
               max_seconds=args.max_seconds, threads=args.threads, timeout=args.timeout, verbose=not args.quiet,
               train_size=4096 if args.tiny else 60000, test_size=1000 if args.tiny else 10000,
               link_probe_bytes=(1 << 16) if args.tiny else 16 << 20)
    out_dir = Path(args.csv).parent if args.csv else None
    mode = "calibrate" if args.calibrate else "run"
    if args.calibrate:
        compressors, net, target = ["allreduce"], "loopback", math.inf
    else:
        net = args.net
        try:
            target = args.target if args.target is not None else _target_from_file(
                (out_dir or H.RESULTS_DIR) / TARGET_FILE, cfg)
        except ValueError as e:
            p.error(str(e))
    cfg.update(compressors=compressors, target=target)

    run = H.run_id()
    env = {**H.environment("cpu"), "threads": args.threads, **_versions()}
    plan = E.link_plan(net, bandwidths, "tta")
    if not plan:
        return 0
    rows: list[dict] = []
    curves: list[dict] = []
    for gbit, label in plan:
        for seed in seeds:
            print(f"tta: {label}, seed {seed}: {', '.join(compressors)}; MLP 784-{'-'.join(map(str, hidden))}-10, "
                  f"target {target:.4g}", flush=True)
            got = E.launch_on(gbit, {**cfg, "seed": seed}, args.timeout, __file__)
            mine, pts = [], []
            for r in got:
                for c in r.pop("curve"):
                    pts.append({"run": run, "mode": mode, "bandwidth_gbit": r["bandwidth_gbit"],
                                "compressor": r["compressor"], "seed": seed, **c})
                mine.append({**env, "run": run, "mode": mode, "world": E.WORLD, **r})
            if args.csv:  # after each launch, so an interrupted study keeps what it measured
                H.append_csv(args.csv, mine, CSV_COLUMNS)
                H.append_csv(_curves_path(args.csv), pts, CURVE_COLUMNS)
            rows += mine
            curves += pts
    import plot
    if args.calibrate:
        by_seed = {s: [c for c in curves if c["seed"] == s] for s in seeds}
        target, at = calibrated_target(by_seed, args.max_steps)
        rule = (f"min over seeds {seeds} of fp32's test accuracy at the first evaluation at or after "
                f"{CALIBRATE_FRACTION:g} x --max-steps ({args.max_steps}), rounded down to {TARGET_STEP:g}")
        print(f"tta: calibrated target {target:.4g} ({rule}; per seed {at})")
        if out_dir:
            saved = {"target": target, "rule": rule, "accuracy_at_fraction": {str(k): v for k, v in at.items()},
                     "run": run, "date": env["date"], "loadavg_1m": env["loadavg_1m"],
                     "config": {k: cfg[k] for k in TARGET_KEYS}}
            (out_dir / TARGET_FILE).write_text(json.dumps(saved, indent=1) + "\n")
            print(f"tta: wrote {out_dir / TARGET_FILE}")
        return 0
    if args.csv:  # the table and plot from the CSVs as written, exactly as plot.py rebuilds them
        rows = [r for r in H.read_csv(args.csv) if r["run"] == run and r["mode"] == "run"]
        curves = [c for c in H.read_csv(_curves_path(args.csv)) if c["run"] == run]
    print()
    print(plot.tta_table(rows))
    if out_dir:
        plot.plot_tta(rows, curves, out_dir / "tta_ddp.png")
        (out_dir / "tta_ddp.md").write_text(plot.tta_table(rows) + "\n")
        print(f"tta: wrote {out_dir / 'tta_ddp.png'} and {out_dir / 'tta_ddp.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
