"""One page over every study folder: the 3-bit table at a glance, seed-paired differences, the fp32 lr check.

    python -m experiments.summary                 # reads experiments/results/*/ -> experiments/results/summary.md
    python -m experiments.summary --rewrite       # also rewrite each study's table.md and plots first
    python -m experiments.summary --merge SRC DST # fold a study run in a parallel folder (other seeds) into DST
    python -m experiments.summary --docs          # also rewrite the generated blocks of README.md and docs/*.md

A study folder is one written by experiments.mnist / experiments.text (results.csv + runs.csv); its runs.csv says
the task, optimizer, lr, granularity, partition and the backend each codebook ran with.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from typing import Sequence

from tnq_kernels.api import DEFAULT_CODEBOOK

from . import report
from .mnist import RunConfig, default_batch_size, read_csv, write_csv

#: the codebook the done criteria are checked for: the library's default
DEFAULT = DEFAULT_CODEBOOK
#: folders that are not studies ("codebooks": the codebook helper's tables)
SKIP = {"lr_check", "grad_stats", "codebooks"}
#: studies whose table.md --rewrite leaves alone: "mnist", the earlier block-2048, 2-epoch sweep (its table.md is
#: written by experiments.mnist when runs are added with --resume)
KEEP = {"mnist"}


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


#: what a runs.csv from before a column existed (the earlier "mnist" sweep) ran with
SETTING_DEFAULTS = {"task": "mnist", "optimizer": "sgdm", "partition": "iid", "per_tensor": "0", "block_size": "2048",
                    "lr": "not recorded"}


def setting(run: dict) -> dict:
    """A runs.csv row's shared configuration, with SETTING_DEFAULTS for columns it lacks or leaves empty."""
    return {k: (run.get(k) or v) for k, v in SETTING_DEFAULTS.items()} | {"steps": str(run.get("steps", ""))}


def _describe(runs: list[dict]) -> str:
    r = setting(runs[0])
    gran = "per tensor" if r["per_tensor"] == "1" else "bucket"
    return (f"{r['task']}, {r['optimizer']} lr {r['lr']}, {gran} B={r['block_size']}, {r['partition']}, "
            f"{r['steps']} steps")


#: a study's model in words
MODEL = {"mnist": "CNN", "mnist_mlp": "MLP", "text": "text", "text_gru": "text GRU"}
OPTIMIZER = {"sgdm": "SGDM", "adamw": "AdamW"}


def study_label(runs: list[dict]) -> str:
    """A study in words: model, optimizer, label skew, granularity where it is not the paper's, length."""
    r = setting(runs[0])
    part = r["partition"]
    skew = f", Dirichlet {part[len('dirichlet('):-1]}" if part.startswith("dirichlet(") else \
        ("" if part == "iid" else f", {part}")
    paper = r["task"] == "mnist" and r["per_tensor"] == "1" and r["block_size"] == "0"
    gran = "" if r["task"] != "mnist" or paper else f", block {r['block_size']}"
    return (f"{'paper' if paper else ''}{' ' if paper else ''}{MODEL.get(r['task'], r['task'])}, "
            f"{OPTIMIZER.get(r['optimizer'], r['optimizer'])}{skew}{gran}, {max(int(x['steps']) for x in runs)} steps")


def headline(root: str, names: Sequence[str]) -> list[str]:
    """The studies the README shows: of those with the same task, optimizer, partition and granularity, the longest
    (then the one with the most runs), so a longer rerun in a new folder replaces the shorter one there; a shorter
    study stays when it has a (codebook, bits) that no longer study of its setting has (a long run of the
    3-bit codebooks leaves the shorter sweep of every width in view, labelled with its length)."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for n in names:
        runs = _runs(os.path.join(root, n))
        r = setting(runs[0])
        key = (r["task"], r["optimizer"], r["partition"], r["per_tensor"], r["block_size"])
        cover = {(x["compressor"], int(x["bits"])) for x in runs}
        groups[key].append(((max(int(x["steps"]) for x in runs), len(runs), n), cover))
    keep = []
    for studies_of_setting in groups.values():
        seen: set = set()
        for rank, cover in sorted(studies_of_setting, reverse=True):
            if not seen or cover - seen:
                keep.append(rank[2])
            seen |= cover
    order = list(MODEL)
    return sorted(keep, key=lambda n: (
        order.index(setting(_runs(os.path.join(root, n))[0])["task"]), study_label(_runs(os.path.join(root, n)))))


def worst_case(root: str, names: Sequence[str]) -> str:
    """Rows: fp32's codebooks; per task kind (MNIST accuracy, text bpb): each codebook's worst seed-paired mean
    difference to fp32 over ``names`` and every width, and where it is."""
    worst: dict[tuple[str, str], tuple[float, str]] = {}
    for name in names:
        runs = _runs(os.path.join(root, name))
        metric, higher = report.task_metric(setting(runs[0])["task"])
        scale, digits, unit = report.units(metric)
        for r in report.paired(read_csv(os.path.join(root, name, "results.csv")), metric, higher):
            if not report.compared(r["compressor"]) or not r["vs_fp32"]:
                continue
            m = report.mean_sd(r["vs_fp32"])[0] * (1 if higher else -1)
            key, where = (r["compressor"], unit), f"{study_label(runs)}, {r['bits']} bits ({len(r['vs_fp32'])})"
            if math.isnan(m):
                worst[key] = (-math.inf, f"diverged (NaN): {where}")
            elif key not in worst or m < worst[key][0]:
                worst[key] = (m, f"{m * scale:+.{digits}f} {unit}: {where}")
    units = [u for u in ("points", "bpb") if any(k[1] == u for k in worst)]
    lines = ["| codebook | " + " | ".join(f"worst − fp32, {u} (positive: better than fp32)" for u in units) + " |",
             "|---|" + "---|" * len(units)]
    for c in sorted({k[0] for k in worst}, key=report.order_key):
        lines.append(f"| `{c}` | " + " | ".join(worst[(c, u)][1] if (c, u) in worst else "–" for u in units) + " |")
    best = {u: max((k[0] for k in worst if k[1] == u), key=lambda c: worst[(c, u)][0]) for u in units}
    lines += ["", "Smallest worst case: " + "; ".join(f"`{c}` ({u})" for u, c in best.items()) +
              ". Seed-paired means over "
              "the seeds both runs have (their number in parentheses), at every width of the studies named here (the "
              "longest run of each setting)."]
    return "\n".join(lines)


def glance(root: str, names: Sequence[str], bits: int = 3, labels: bool = False, backend: bool = True) -> str:
    """Rows: studies (``labels``: in words, else folder names); columns: fp32 and the codebooks in ORDER; cells: final
    metric mean ± std at ``bits``, with the number of seeds after the study when every cell has the same seeds,
    else in each cell; ``backend``: a column of the backends the runs used."""
    rows, comps = [], set()
    for name in names:
        runs = _runs(os.path.join(root, name))
        metric, _ = report.task_metric(setting(runs[0])["task"])
        fin = {c: v for (c, b), v in report.final_by_seed(read_csv(os.path.join(root, name, "results.csv")),
                                                              metric).items() if b in (bits, 32)}
        comps |= set(fin)
        used = sorted({r["backend"] for r in runs if int(r["bits"]) in (bits, 32) and r["compressor"] != "none"})
        rows.append((name, runs, metric, fin, used))
    cols = [c for c in report.ORDER if c in comps]
    head = "| study | " + " | ".join("fp32" if c == "none" else f"`{c}`" for c in cols) + \
        (" | backend |" if backend else " |")
    lines = [head, "|---|" + "---|" * (len(cols) + backend)]
    for name, runs, metric, fin, used in rows:
        per_cell, _ = report.seeds_note([set(v) for v in fin.values()])
        n = "" if per_cell or not fin else f" ({len(next(iter(fin.values())))})"
        what = f"{study_label(runs) if labels else name}{n}, {'bpb ↓' if metric == 'test_loss' else 'acc ↑'}"
        cells = [report.fmt_mean(list(fin[c].values()), per_cell) if c in fin else "–" for c in cols]
        lines.append(f"| {what} | " + " | ".join(cells) + (f" | {'/'.join(used)} |" if backend else " |"))
    return "\n".join(lines)


def default_table(root: str, names: Sequence[str], codebook: str = DEFAULT) -> str:
    """Rows: studies (in words); columns: bit widths; cells: ``codebook`` − fp32, seed-paired (report.verdict),
    with what the verdict finds against it: diverged, below the fp32 target, below other codebooks beyond noise."""
    found = []
    for name in names:
        runs = _runs(os.path.join(root, name))
        metric, higher = report.task_metric(setting(runs[0])["task"])
        recs = read_csv(os.path.join(root, name, "results.csv"))
        vs = {b: report.verdict(recs, codebook, b, metric, higher)
              for b in sorted({int(r["bits"]) for r in recs if r["compressor"] == codebook})}
        vs = {b: v for b, v in vs.items() if v is not None}
        if vs:
            found.append((runs, metric, vs))
    widths = sorted({b for *_, vs in found for b in vs})
    lines = ["| study | " + " | ".join(f"{b} bits" for b in widths) + " |", "|---|" + "---|" * len(widths)]
    for runs, metric, vs in found:
        cells = []
        for b in widths:
            v = vs.get(b)
            if v is None:
                cells.append("–")
                continue
            if v["diverged"]:
                cells.append(report.verdict_words(v, metric))
                continue
            cell = report.fmt_diff(v["vs_fp32"], metric, n=True)
            if v["target"] and not v["target"]["met"]:
                cell += " **below target**"
            if v["below_any"]:
                cell += "; behind " + ", ".join(f"`{c}`{report.t_of(v['others'][c])}" for c in v["below_any"])
            cells.append(cell)
        unit = report.units(metric)[2]
        lines.append(f"| {study_label(runs)} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(root: str, names: Sequence[str], codebook: str) -> str:
    """One row per study and bit width: ``codebook`` against fp32 (and the fp32 target where the metric has one) and
    against every other codebook (report.verdict)."""
    margin = f"{report.FP32_MARGIN['test_accuracy'] * 100:g} points"
    lines = [f"| study | bits | seeds | − fp32 | within {margin} of fp32 | worst other codebook | − it (t) | "
             "below another codebook beyond noise | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        d = os.path.join(root, n)
        metric, higher = report.task_metric(setting(_runs(d)[0])["task"])
        recs = read_csv(os.path.join(d, "results.csv"))
        for bits in sorted({int(r["bits"]) for r in recs if r["compressor"] == codebook}):
            v = report.verdict(recs, codebook, bits, metric, higher)
            if v is None:
                continue
            f, w = v["vs_fp32"], v["others"].get(v["worst"])
            target = "–" if v["target"] is None else ("met" if v["target"]["met"] else "**missed**")
            worst = "–" if not w else report.fmt_diff(w, metric) + report.t_of(w)
            below = ", ".join(report.label(c) for c in v["below_any"]) or ("no" if f["n"] >= 3 else "– (< 3 seeds)")
            lines.append(f"| {n} | {bits} | {f['n']} | {report.fmt_diff(f, metric)} | {target} | "
                         f"{report.label(v['worst']) if w else '–'} | {worst} | {below} | "
                         f"{report.verdict_words(v, metric)} |")
    lines += ["", f"Differences are {report.label(codebook)} minus the other run of the same seed, signed so that "
                  f"positive means {codebook} is better (accuracy in points, bits per byte as is), mean ± std over "
                  f"the seeds both have; t = mean / standard error (std / sqrt(seeds)). The fp32 target (MNIST "
                  f"only) is met when the mean difference to fp32 is at least −{margin}. \"Below beyond noise\": "
                  f"the mean is more than two standard errors below zero, with at least 3 seeds; every other "
                  f"codebook counts, the TNQ family included. The worst other codebook is the one with the lowest "
                  f"t (the lowest mean with fewer than 3 seeds). A diverged (NaN) run of {codebook} fails."]
    return "\n".join(lines)


def horizon(root: str, name: str, steps: Sequence[int], bits: int = 3) -> str:
    """Does a short run's ranking hold? Rows: fp32 (mean ± std), each codebook at ``bits`` (minus fp32, seed-paired,
    positive = better, with t), the ranking by mean; columns: the state of the same runs at each of ``steps``."""
    d = os.path.join(root, name)
    runs = _runs(d)
    metric, higher = report.task_metric(setting(runs[0])["task"])
    recs = read_csv(os.path.join(d, "results.csv"))
    at = {s: [r for r in recs if int(r["step"]) <= s] for s in steps}
    fin = {s: report.final_by_seed(at[s], metric) for s in steps}
    comps = [c for c in report.ORDER if c != "none" and any(r["compressor"] == c and int(r["bits"]) == bits
                                                            for r in recs)]
    unit = report.units(metric)[2]
    lines = [f"| {study_label(runs)}, {bits} bits | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]
    lines.append("| fp32 | " + " | ".join(report.fmt_mean(list(fin[s].get(("none", 32), {}).values()), True)
                                        for s in steps) + " |")
    for c in comps:
        cells = []
        for s in steps:
            v = report.verdict(at[s], c, bits, metric, higher)
            cells.append(report.fmt_diff(v["vs_fp32"], metric, n=True) + report.t_of(v["vs_fp32"]) if v else "–")
        lines.append(f"| `{c}` − fp32 | " + " | ".join(cells) + " |")
    order = []
    for s in steps:
        means = {("fp32" if c == "none" else f"`{c}`"): report.mean_sd(list(v.values()))[0]
                 for (c, b), v in fin[s].items() if b in (bits, 32) and (c == "none" or c in comps)}
        order.append(" > ".join(sorted(means, key=lambda k: -means[k] if higher else means[k])))
    lines.append("| ranking (best first) | " + " | ".join(order) + " |")
    lines += ["", f"{unit}; the same runs read at each step (a run's state at step s is that of a run stopped "
                  f"there: the learning rate is constant). Differences are seed-paired, positive = better than "
                  f"fp32, mean ± std (seeds), t = mean / standard error."]
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
    hardware = None  # the machine the runs were made on, as the table said it, not today's
    if os.path.exists(os.path.join(d, "table.md")):
        with open(os.path.join(d, "table.md")) as f:
            hardware = next((line[len("Hardware: "):].rstrip().rstrip(".") for line in f
                             if line.startswith("Hardware: ")), None)
    report.write_all(read_csv(os.path.join(d, "results.csv")), d, config=config_of(runs[0]), timings=runs, threads=1,
                     hardware=hardware)


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
    p.add_argument("--docs", action="store_true",
                   help="also rewrite every generated block of README.md, docs/*.md and experiments/README.md from "
                        "the CSVs (experiments.docs_blocks; run from the repository root)")
    a = p.parse_args(argv)
    if a.merge:
        merge(*a.merge)
        print(f"merged {a.merge[0]} into {a.merge[1]}", file=sys.stderr)
        return 0
    names = studies(a.root)
    if a.rewrite:
        for n in names:
            if n not in KEEP:
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
        metric, higher = report.task_metric(setting(runs[0])["task"])
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
    if a.docs:
        from . import docs_blocks
        changed = docs_blocks.rewrite(root=a.root)
        print(f"generated blocks rewritten in: {', '.join(changed) or 'nothing (all up to date)'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
