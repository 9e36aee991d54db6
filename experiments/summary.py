"""One page over every study folder: the 3-bit table at a glance, seed-paired differences, the fp32 lr check.

    python -m experiments.summary                 # reads experiments/results/*/ -> experiments/results/summary.md
    python -m experiments.summary --rewrite       # also rewrite each study's table.md and plots first
    python -m experiments.summary --merge SRC DST # fold a study run in a parallel folder (other seeds) into DST

A study folder is one written by experiments.mnist / experiments.text (results.csv + runs.csv); its runs.csv says
the task, optimizer, lr, granularity, partition and the backend each codebook ran with.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from typing import Sequence

from tnq_kernels.api import DEFAULT_CODEBOOK

from . import report
from .mnist import RunConfig, default_batch_size, read_csv, write_csv

#: "mnist": the earlier block-2048, 2-epoch sweep, kept as it was; "codebooks": the codebook helper's tables
#: the codebook the done criteria are checked for: the library's default
DEFAULT = DEFAULT_CODEBOOK
SKIP = {"lr_check", "mnist", "grad_stats", "codebooks"}


def studies(root: str) -> list[str]:
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if name not in SKIP and not name.endswith("_s2") and os.path.isfile(os.path.join(d, "results.csv")) and \
                os.path.isfile(os.path.join(d, "runs.csv")):
            out.append(name)
    return out


def _runs(d: str) -> list[dict]:
    with open(os.path.join(d, "runs.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _describe(runs: list[dict]) -> str:
    r = runs[0]
    gran = "per tensor" if r.get("per_tensor") == "1" else "bucket"
    block = "B=0" if r.get("block_size") == "0" else f"B={r.get('block_size')}"
    return (f"{r.get('task')}, {r.get('optimizer')} lr {r.get('lr')}, {gran} {block}, {r.get('partition')}, "
            f"{r.get('steps')} steps")


def glance(root: str, names: Sequence[str], bits: int = 3) -> str:
    """Rows: codebooks; columns: studies; cells: final metric mean ± std (n) at ``bits``."""
    cols, cells, backends = [], defaultdict(dict), defaultdict(set)
    for name in names:
        d = os.path.join(root, name)
        runs = _runs(d)
        metric, _ = report.task_metric(runs[0].get("task", "mnist"))
        fin = report.final_rows(read_csv(os.path.join(d, "results.csv")), metric)
        cols.append((name, metric))
        for (c, b), v in fin.items():
            if b in (bits, 32):
                cells[c][name] = v
        for r in runs:
            if int(r["bits"]) in (bits, 32):
                backends[r["compressor"]].add(r["backend"])
    head = "| codebook | " + " | ".join(f"{n} ({'bpb ↓' if m == 'test_loss' else 'acc ↑'})" for n, m in cols) + \
        " | backend |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for c in report.ORDER:
        if c not in cells:
            continue
        row = []
        for n, m in cols:
            v = cells[c].get(n)
            if not v:
                row.append("–")
                continue
            m, sd = report.mean_sd(v)
            row.append(f"{m:.4f}" + (f" ± {sd:.4f}" if len(v) > 1 else "") + f" ({len(v)})")
        lines.append(f"| {report.label(c)} | " + " | ".join(row) + f" | {'/'.join(sorted(backends[c]))} |")
    return "\n".join(lines)


def verdicts(root: str, names: Sequence[str], codebook: str) -> str:
    """One row per study and bit width: ``codebook`` against fp32 and against its worst baseline (report.verdict)."""
    lines = ["| study | bits | seeds | − fp32 | worst baseline | − worst baseline (t) | below a baseline beyond noise |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        d = os.path.join(root, n)
        runs = _runs(d)
        metric, higher = report.task_metric(runs[0].get("task", "mnist"))
        scale, digits = (100.0, 2) if higher else (1.0, 4)
        recs = read_csv(os.path.join(d, "results.csv"))
        for bits in sorted({int(r["bits"]) for r in recs if r["compressor"] == codebook}):
            v = report.verdict(recs, codebook, bits, metric, higher)
            if v is None:
                continue
            f, w = v["vs_fp32"], v["baselines"].get(v["worst"])
            fmt = lambda x: f"{x['mean'] * scale:+.{digits}f} ± {x['sd'] * scale:.{digits}f}"  # noqa: E731
            worst = "–" if not w else fmt(w) + (f" ({w['mean'] / w['se']:+.1f})" if w["n"] >= 3 and w["se"] > 0
                                                 else "")
            below = ", ".join(report.label(c) for c in v["below_any"]) or ("no" if f["n"] >= 3 else "– (< 3 seeds)")
            lines.append(f"| {n} | {bits} | {f['n']} | {fmt(f)} | {report.label(v['worst']) if w else '–'} | "
                         f"{worst} | {below} |")
    lines += ["", f"Differences are {report.label(codebook)} minus the other run of the same seed, signed so that "
                  f"positive means {codebook} is better (accuracy in points, bits per byte as is); t = mean / "
                  f"standard error (std / sqrt(seeds)). \"Below beyond noise\": the mean is more than two standard "
                  f"errors below zero, with at least 3 seeds; the worst baseline is the one with the lowest t (the lowest mean with fewer than 3 seeds)."]
    return "\n".join(lines)


def lr_table(root: str) -> str:
    d = os.path.join(root, "lr_check")
    if not os.path.isdir(d):
        return ""
    rows = []
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name, "runs.csv")
        if os.path.isfile(p):
            for r in _runs(os.path.join(d, name)):
                rows.append(r)
    rows.sort(key=lambda r: (r["task"], r["optimizer"], float(r["lr"])))
    lines = ["| task | optimizer | lr | steps | seed | final test accuracy | final test loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['lr']} | {r['steps']} | {r['seed']} | "
                     f"{float(r['final_accuracy']):.4f} | {r['final_test_loss']} |")
    return "\n".join(lines)


def config_of(run: dict) -> RunConfig:
    """The shared configuration of a study, rebuilt from one runs.csv row (for the table's setup line)."""
    part = run.get("partition", "iid")
    alpha = float(part[len("dirichlet("):-1]) if part.startswith("dirichlet(") else 0.0
    task = run.get("task", "mnist")
    return RunConfig(task=task, optimizer=run.get("optimizer", "sgdm"), lr=float(run.get("lr", 0.05)),
                     block_size=int(run.get("block_size", 2048)), per_tensor=run.get("per_tensor") == "1",
                     dirichlet=alpha, iid=part != "two-digit", steps=int(run["steps"]),
                     batch_size=default_batch_size(task))


def rewrite(d: str) -> None:
    """Rewrite a study's table.md (with its hand-written notes.md) and plots from its CSVs."""
    runs = report.read_runs(os.path.join(d, "runs.csv"))
    report.write_all(read_csv(os.path.join(d, "results.csv")), d, config=config_of(runs[0]), timings=runs, threads=1)


def merge(src: str, dst: str) -> None:
    """Append SRC's runs (those DST lacks) to DST's results.csv / runs.csv and rewrite DST's table and plots."""
    recs, runs = read_csv(os.path.join(dst, "results.csv")), report.read_runs(os.path.join(dst, "runs.csv"))
    have = {(r["compressor"], int(r["bits"]), int(r["seed"])) for r in runs}
    new_runs = [r for r in report.read_runs(os.path.join(src, "runs.csv"))
                if (r["compressor"], int(r["bits"]), int(r["seed"])) not in have]
    keys = {(r["compressor"], int(r["bits"]), int(r["seed"])) for r in new_runs}
    recs += [r for r in read_csv(os.path.join(src, "results.csv"))
             if (r["compressor"], int(r["bits"]), int(r["seed"])) in keys]
    runs += new_runs
    write_csv(os.path.join(dst, "results.csv"), recs)
    report.write_runs(os.path.join(dst, "runs.csv"), runs)
    rewrite(dst)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__.split("\n")[0])
    p.add_argument("--root", default="experiments/results")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--merge", nargs=2, metavar=("SRC", "DST"), default=None)
    p.add_argument("--rewrite", action="store_true",
                   help="first rewrite every study's table.md (with its notes.md) and plots from its CSVs")
    a = p.parse_args(argv)
    if a.merge:
        merge(*a.merge)
        print(f"merged {a.merge[0]} into {a.merge[1]}", file=sys.stderr)
        return 0
    names = studies(a.root)
    if a.rewrite:
        for n in names:
            rewrite(os.path.join(a.root, n))
    out = [f"# Results at a glance ({a.bits} bits)", "",
           "Final metric, mean ± std over seeds (number of seeds). MNIST: test accuracy (higher is better); text: "
           "held-out bits per byte (lower is better).", ""]
    out += [f"- **{n}**: {_describe(_runs(os.path.join(a.root, n)))}" for n in names] + [""]
    out += [glance(a.root, names, a.bits), ""]
    paper = os.path.join(a.root, "mnist_paper_sgdm")
    if "mnist_paper_sgdm" in names:
        out += ["## The paper's setting next to the paper's numbers", "",
                f"{_describe(_runs(paper))}; these runs stop at the step count shown and do not "
                f"match the paper's training length.", "",
                report.table(read_csv(os.path.join(paper, "results.csv"))), ""]
    for n in names:
        d = os.path.join(a.root, n)
        runs = _runs(d)
        metric, higher = report.task_metric(runs[0].get("task", "mnist"))
        recs = [r for r in read_csv(os.path.join(d, "results.csv")) if r["bits"] in (a.bits, 32)]
        out += [f"## {n}: seed-paired differences at {a.bits} bits", "", _describe(runs), "",
                report.paired_table(recs, metric, higher), ""]
    out += [f"## The default codebook ({DEFAULT}) against fp32 and every baseline, every bit width", "",
            verdicts(a.root, names, DEFAULT), ""]
    lr = lr_table(a.root)
    if lr:
        out += ["## fp32 learning-rate check (chosen before any compressed run)", "", lr, ""]
    text = "\n".join(out)
    with open(os.path.join(a.root, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
