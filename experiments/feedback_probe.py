"""Error feedback against no feedback, seed-paired: the table behind experiments/results/ef_probe/.

    python -m experiments.feedback_probe --ef experiments/results/ef_probe/mlp_sgdm_ef \\
        --base experiments/results/mlp_sgdm --task mnist_mlp

Both folders hold runs of the same configuration except ``--error-feedback`` (checked: task, optimizer, lr, steps,
block size and partition of every run). For each codebook and width it prints the final metric with and without
feedback (mean ± std over the seeds both have), the seed-paired difference EF − no EF, and each against fp32 (the
``none`` runs of the base folder, same seeds). Positive differences are better (the sign follows the metric). A
configuration with a diverged (NaN) run lists its seeds one by one instead of a mean.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from .mnist import read_csv
from .report import _spread, final_by_seed, label, mean_sd, read_runs, task_metric

SAME = ("task", "optimizer", "lr", "steps", "block_size", "per_tensor", "partition")


def _check_same(ef_runs: list[dict], base_runs: list[dict]) -> None:
    want = {tuple(r[k] for k in SAME) for r in base_runs}
    got = {tuple(r[k] for k in SAME) for r in ef_runs}
    if got - want:
        raise ValueError(f"runs differ in {SAME}: with feedback {sorted(got)}, without {sorted(want)}")


def compare(ef_dir: str, base_dir: str, task: str) -> str:
    metric, higher = task_metric(task)
    sign = 1.0 if higher else -1.0
    _check_same(read_runs(os.path.join(ef_dir, "runs.csv")), read_runs(os.path.join(base_dir, "runs.csv")))
    ef = final_by_seed(read_csv(os.path.join(ef_dir, "results.csv")), metric)
    base = final_by_seed(read_csv(os.path.join(base_dir, "results.csv")), metric)
    fp32 = base.get(("none", 32), {})
    for s, v in ef.get(("none", 32), {}).items():  # fp32 has no residual: both folders must hold the same runs
        if s in fp32 and v != fp32[s]:
            raise ValueError(f"fp32 seed {s}: {v} with --error-feedback, {fp32[s]} without: not the same setup")
    scale, digits = (100.0, 2) if higher else (1.0, 3)
    unit = "points" if higher else f"{metric}, sign flipped"
    out = [f"| codebook | bits | seeds | no feedback | error feedback | EF − no EF ({unit}) | no EF − fp32 | "
           f"EF − fp32 |", "|---|---|---|---|---|---|---|---|"]
    for (comp, bits), runs in sorted(ef.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if comp == "none" or (comp, bits) not in base:
            continue
        seeds = sorted(s for s in runs if s in base[(comp, bits)] and s in fp32)
        a, b, f = ([d[s] for s in seeds] for d in (runs, base[(comp, bits)], fp32))

        def fmt(v):
            if any(math.isnan(x) for x in v):  # a diverged run: show every seed
                return ", ".join("NaN" if math.isnan(x) else f"{x:.4f}" for x in v)
            m, sd = mean_sd(v)
            return f"{m:.4f} ± {sd:.4f}"

        def diff(d):
            if any(math.isnan(x) for x in d):
                return ", ".join("NaN" if math.isnan(x) else f"{x * scale:+.{digits}f}" for x in d)
            return _spread(d, scale, digits)
        out.append(f"| {label(comp)} | {bits} | {','.join(map(str, seeds))} | {fmt(b)} | {fmt(a)} | "
                   f"{diff([sign * (x - y) for x, y in zip(a, b)])} | "
                   f"{diff([sign * (y - z) for y, z in zip(b, f)])} | "
                   f"{diff([sign * (x - z) for x, z in zip(a, f)])} |")
    seeds = sorted({s for runs in ef.values() for s in runs} & set(fp32))
    if seeds:
        m, sd = mean_sd([fp32[s] for s in seeds])
        out += ["", f"fp32 ({metric}, seeds {','.join(map(str, seeds))}): {m:.4f} ± {sd:.4f}."]
    return "\n".join(out)


#: (title, folder with feedback, folder without, task) of the committed probe, relative to experiments/results
PROBE = (("MLP, momentum SGD, test accuracy", "ef_probe/mlp_sgdm_ef", "mlp_sgdm", "mnist_mlp"),
         ("transformer, momentum SGD, held-out bits per byte", "ef_probe/text600_sgdm_ef", "text600_sgdm", "text"))


def block(root: str) -> str:
    """The generated docs block ``ef-probe`` (experiments/docs_blocks.py): both probe tables from ``root``."""
    return "\n\n".join(f"*{title}*\n\n" + compare(os.path.join(root, ef), os.path.join(root, base), task)
                       for title, ef, base, task in PROBE)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.feedback_probe", description=__doc__.split("\n")[0])
    p.add_argument("--ef", required=True, help="folder of the runs with --error-feedback")
    p.add_argument("--base", required=True, help="folder of the same runs without it (holds the fp32 runs)")
    p.add_argument("--task", default="mnist_mlp", help="sets the metric: text → test_loss, else test_accuracy")
    a = p.parse_args(argv)
    print(compare(a.ef, a.base, a.task))
    return 0


if __name__ == "__main__":
    sys.exit(main())
