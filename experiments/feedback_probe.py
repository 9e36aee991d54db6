"""Error feedback against no feedback, seed-paired: the tables behind experiments/results/ef_probe/ and ef_grid/.

    python -m experiments.feedback_probe --ef experiments/results/ef_grid/mlp_sgdm/ef_stochastic \\
        --base experiments/results/mlp_sgdm --task mnist_mlp
    python -m experiments.feedback_probe --grid experiments/results/ef_grid --bits 2

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
from .report import _spread, final_by_seed, label, mean_sd, paired_stats, read_runs, task_metric

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


# ---- the grid of issue 20: error feedback on/off x codebook x rounding, on every study ----

#: the grid's studies: (folder name, the committed no-feedback study it extends, task, title)
GRID_STUDIES = (("mlp_sgdm", "mlp_sgdm", "mnist_mlp", "MLP, momentum SGD"),
                ("mlp_adamw", "mlp_adamw", "mnist_mlp", "MLP, AdamW"),
                ("mnist_paper_sgdm", "mnist_paper_sgdm", "mnist", "paper's CNN, momentum SGD"),
                ("mnist_paper_adamw", "mnist_paper_adamw", "mnist", "paper's CNN, AdamW"),
                ("text600_sgdm", "text600_sgdm", "text", "transformer, momentum SGD"),
                ("text600_adamw", "text600_adamw", "text", "transformer, AdamW"),
                ("gru300_sgdm", "gru300_sgdm", "text_gru", "GRU, momentum SGD (the confirmation)"))
#: the grid's settings: (subfolder, rounding, residual: "none" without error feedback, else the residual's dtype).
#: "noef_stochastic" adds to the committed study; "ef_stochastic_bf16" keeps the residual in bfloat16.
GRID_SETTINGS = (("noef_stochastic", "stochastic", "none"), ("noef_nearest", "nearest", "none"),
                 ("ef_stochastic", "stochastic", "float32"), ("ef_nearest", "nearest", "float32"),
                 ("ef_stochastic_bf16", "stochastic", "bfloat16"))
SETTING_TITLES = {"noef_stochastic": "no EF, stochastic", "noef_nearest": "no EF, nearest",
                  "ef_stochastic": "EF, stochastic", "ef_nearest": "EF, nearest",
                  "ef_stochastic_bf16": "EF, stochastic, bf16 residual"}
GRID_CODEBOOKS = ("rtnq", "tnq", "tnq_max", "qsgd", "nqsgd")


def _finals(folder: str, metric: str, rounding: str, residual: str) -> dict:
    """(compressor, bits) -> {seed: final metric} of a folder, after checking that its runs have the setting (runs
    written before the residual was recorded have residual "": their folder name is trusted)."""
    if not os.path.exists(os.path.join(folder, "runs.csv")):
        return {}
    for r in read_runs(os.path.join(folder, "runs.csv")):
        if r["compressor"] == "none":
            continue
        if r["rounding"] != rounding or r["residual"] not in ("", residual):
            raise ValueError(f"{folder}: run {r['compressor']} {r['bits']} bits seed {r['seed']} has rounding "
                             f"{r['rounding']!r}, residual {r['residual']!r}; the folder is for rounding "
                             f"{rounding!r}, residual {residual!r}")
    return final_by_seed(read_csv(os.path.join(folder, "results.csv")), metric)


def grid_cells(root: str, base_root: str, bits: int) -> dict:
    """{(study, codebook, setting): verdict-like dict} with the seed-paired difference to the study's fp32 runs.

    A cell has n (seeds), mean and sd of the difference (positive = better), se = sd/√n, ``diverged`` (seeds whose
    final metric is NaN) and ``noise``: True when no run diverged and the mean is not below zero by more than two
    standard errors (n >= 3), report.verdict's "beyond noise" rule."""
    cells = {}
    for study, base, task, _ in GRID_STUDIES:
        metric, higher = task_metric(task)
        sign = 1.0 if higher else -1.0
        base_dir = os.path.join(base_root, base)
        if not os.path.exists(os.path.join(base_dir, "runs.csv")):
            continue
        _check_same([r for s, *_ in GRID_SETTINGS for r in _runs_of(os.path.join(root, study, s))],
                    read_runs(os.path.join(base_dir, "runs.csv")))
        fp32 = final_by_seed(read_csv(os.path.join(base_dir, "results.csv")), metric).get(("none", 32), {})
        for setting, rounding, residual in GRID_SETTINGS:
            fin = _finals(os.path.join(root, study, setting), metric, rounding, residual)
            if setting == "noef_stochastic":
                fin = {**_finals(base_dir, metric, "stochastic", "none"), **fin}
            for comp in GRID_CODEBOOKS:
                runs = fin.get((comp, bits), {})
                seeds = sorted(s for s in runs if s in fp32)
                if not seeds:
                    continue
                d = [sign * (runs[s] - fp32[s]) for s in seeds]
                c = paired_stats(d)
                c["diverged"] = [s for s, x in zip(seeds, d) if math.isnan(x)]
                c["noise"] = not c["diverged"] and c["n"] >= 3 and not c["below"]
                c["metric"] = metric
                cells[(study, comp, setting)] = c
    return cells


def _runs_of(folder: str) -> list[dict]:
    path = os.path.join(folder, "runs.csv")
    return read_runs(path) if os.path.exists(path) else []


def _cell_text(c: dict | None) -> str:
    if c is None:
        return "–"
    if c["diverged"]:
        return f"diverged (seed {', '.join(map(str, c['diverged']))})"
    scale, digits = (100.0, 2) if c["metric"] == "test_accuracy" else (1.0, 3)
    text = f"{c['mean'] * scale:+.{digits}f} ± {c['sd'] * scale:.{digits}f}" if c["n"] > 1 else \
        f"{c['mean'] * scale:+.{digits}f}"
    return (f"**{text}**" if c["noise"] else text) + (f" ({c['n']})" if c["n"] < 3 else "")


def grid(root: str, base_root: str, bits: int) -> str:
    """Markdown: one table per study (codebook x setting, difference to fp32) and the summary of which settings are
    within seed noise of fp32 on every study."""
    cells = grid_cells(root, base_root, bits)
    out = []
    for study, _, task, title in GRID_STUDIES:
        if not any(k[0] == study for k in cells):
            continue
        metric, _ = task_metric(task)
        unit = "points of accuracy" if metric == "test_accuracy" else "bits per byte, sign flipped"
        settings = [s for s, *_ in GRID_SETTINGS if any(k[0] == study and k[2] == s for k in cells)]
        out += [f"*{title}, {bits} bits* (difference to fp32 in {unit}; positive = better)", "",
                "| codebook | " + " | ".join(SETTING_TITLES[s] for s in settings) + " |",
                "|---|" + "---|" * len(settings)]
        for comp in GRID_CODEBOOKS:
            row = [_cell_text(cells.get((study, comp, s))) for s in settings]
            if any(t != "–" for t in row):
                out.append(f"| {label(comp)} | " + " | ".join(row) + " |")
        out.append("")
    studies = [s for s, *_ in GRID_STUDIES if any(k[0] == s for k in cells)]
    out += ["*Within seed noise of fp32* (no run diverged and the mean difference is not below zero by more than "
            "two standard errors, 3 seeds; bold above): ✓, else the mean difference in standard errors, or ✗ diverged.",
            "", "| codebook | setting | " + " | ".join(studies) + " | every study |",
            "|---|---|" + "---|" * len(studies) + "---|"]
    for comp in GRID_CODEBOOKS:
        for setting, *_ in GRID_SETTINGS:
            got = [cells.get((s, comp, setting)) for s in studies]
            if all(c is None for c in got):
                continue
            marks = ["–" if c is None else "✗" if c["diverged"] else "✓" if c["noise"] else
                     f"{c['mean'] / c['se']:+.1f} se" if c["se"] > 0 else "below" for c in got]
            every = "yes" if all(c is not None and c["noise"] for c in got) else "no"
            out.append(f"| {label(comp)} | {SETTING_TITLES[setting]} | " + " | ".join(marks) + f" | {every} |")
    out += ["", "*The best setting of each study* (the highest mean difference to fp32 among runs that did not diverge):",
            "", "| study | codebook | setting | difference to fp32 | within noise |", "|---|---|---|---|---|"]
    for study in studies:
        mine = {k: c for k, c in cells.items() if k[0] == study and not c["diverged"]}
        if mine:
            (_, comp, setting), c = max(mine.items(), key=lambda kv: kv[1]["mean"])
            out.append(f"| {study} | {label(comp)} | {SETTING_TITLES[setting]} | {_cell_text(c).strip('*')} | "
                       f"{'yes' if c['noise'] else 'no'} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.feedback_probe", description=__doc__.split("\n")[0])
    p.add_argument("--ef", help="folder of the runs with --error-feedback")
    p.add_argument("--base", help="folder of the same runs without it (holds the fp32 runs)")
    p.add_argument("--task", default="mnist_mlp", help="sets the metric: text → test_loss, else test_accuracy")
    p.add_argument("--grid", metavar="ROOT", help="the grid of issue 20: ROOT/<study>/<setting>/ (GRID_STUDIES, "
                                                   "GRID_SETTINGS) against the committed studies in --base-root")
    p.add_argument("--base-root", default="experiments/results")
    p.add_argument("--bits", type=int, default=2)
    a = p.parse_args(argv)
    if a.grid:
        print(grid(a.grid, a.base_root, a.bits))
    elif a.ef and a.base:
        print(compare(a.ef, a.base, a.task))
    else:
        p.error("give --ef and --base, or --grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
