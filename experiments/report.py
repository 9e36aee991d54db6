"""Outputs of the MNIST experiment: the Markdown table of final accuracies and the PNG plots, from the CSV rows."""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import statistics
from collections import defaultdict

RUN_FIELDS = ("compressor", "bits", "seed", "mode", "backend", "steps", "seconds", "ms_per_step", "final_accuracy",
              "final_test_loss", "task", "optimizer", "lr", "block_size", "per_tensor", "partition", "rng",
              "rounding", "residual")
_KNOWN = ("none", "clip_tnq", "clip_rtnq", "tnq", "rtnq", "tnq_max", "tqsgd", "qsgd_l2", "nuqsgd_l2", "nqsgd", "qsgd")
LABEL = {"none": "none (fp32)", "tnq": "TNQ (ours)", "rtnq": "RTNQ (robust TNQ)", "tnq_max": "TNQ-max (max-scaled)",
         "tqsgd": "TQSGD",
         "nqsgd": "NQSGD", "qsgd": "QSGD", "qsgd_l2": "QSGD-L2 (Alistarh)",
         "nuqsgd_l2": "NUQSGD-L2 (Ramezani-Kebrya)", "clip_tnq": "fp32, TNQ's truncation only",
         "clip_rtnq": "fp32, RTNQ's truncation only"}


def _order() -> tuple[str, ...]:
    """Row order: fp32, the TNQ family, then the baselines; codebooks unknown here go last, by name."""
    try:
        from tnq_kernels.codebooks import CODEBOOK_IDS
        extra = tuple(sorted(c for c in CODEBOOK_IDS if c not in _KNOWN))
    except ImportError:  # pragma: no cover
        extra = ()
    return _KNOWN + extra


ORDER = _order()


def order_key(comp: str) -> tuple[int, str]:
    """Sort key of a codebook in ORDER (unknown names last, by name)."""
    return (ORDER.index(comp) if comp in ORDER else len(ORDER), comp)


def label(comp: str) -> str:
    return LABEL.get(comp, comp)


def tnq_family(comp: str) -> bool:
    """TNQ and its variants; every other codebook is a baseline."""
    return "tnq" in comp


def read_runs(path: str) -> list[dict]:
    from tnq_kernels.api import DEFAULT_ROUNDING
    from tnq_kernels.rng import VERSION_BEFORE_RECORDING
    # what runs written before a column was recorded used: the v1.1 generator, stochastic rounding (the only one);
    # residual ("none" = no error feedback, else the residual's dtype): "" where it was not recorded
    before_recording = {"rng": VERSION_BEFORE_RECORDING, "rounding": DEFAULT_ROUNDING, "residual": ""}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["bits"], r["seed"], r["steps"] = int(r["bits"]), int(r["seed"]), int(r["steps"])
        for k, v in before_recording.items():
            r[k] = r.get(k) or v
    return rows


def write_runs(path: str, timings: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        w.writeheader()
        w.writerows(timings)


def final_by_seed(records: list[dict], metric: str = "test_accuracy") -> dict[tuple[str, int], dict[int, float]]:
    """(compressor, bits) -> {seed: final ``metric``} (the row with the largest step of each run)."""
    last: dict[tuple[str, int, int], dict] = {}
    for r in records:
        key = (r["compressor"], int(r["bits"]), int(r["seed"]))
        if key not in last or int(r["step"]) > int(last[key]["step"]):
            last[key] = r
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for (comp, bits, seed), r in sorted(last.items()):
        out[(comp, bits)][seed] = float(r[metric])
    return out


def final_rows(records: list[dict], metric: str = "test_accuracy") -> dict[tuple[str, int], list[float]]:
    """(compressor, bits) -> final ``metric``, one per seed in seed order (``final_by_seed`` without the seeds)."""
    return {k: list(v.values()) for k, v in final_by_seed(records, metric).items()}


def mean_sd(vals: list[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value). A run that diverged (NaN metric) makes both NaN ("nan" in the tables):
    ``statistics.stdev`` cannot take a NaN."""
    if any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _nan_low(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def fmt_mean(accs: list[float], n: bool = False) -> str:
    """mean ± std (4 decimals); ``n``: followed by the number of seeds in parentheses."""
    if not accs:
        return "–"
    m, sd = mean_sd(accs)
    return (f"{m:.4f} ± {sd:.4f}" if len(accs) > 1 else f"{m:.4f}") + (f" ({len(accs)})" if n else "")


def seeds_note(seed_sets: list[set[int]]) -> tuple[bool, str]:
    """(whether each cell must show its own seed count, the sentence's "over ... seed(s)" part) for cells holding
    ``seed_sets``: one shared set is named once; otherwise every cell says how many seeds it has."""
    distinct = {frozenset(s) for s in seed_sets if s}
    if len(distinct) == 1:
        seeds = sorted(next(iter(distinct)))
        return False, f"over {len(seeds)} seed(s) ({', '.join(map(str, seeds))})"
    return True, "over the seeds each cell has (their number in parentheses)"


def table(records: list[dict], metric: str = "test_accuracy", paper: bool = True) -> str:
    """Markdown: final ``metric``, mean ± std over seeds, per compressor x bits, with the paper's 3-bit values."""
    from .mnist import PAPER_3BIT
    by_seed = final_by_seed(records, metric)
    finals = {k: list(v.values()) for k, v in by_seed.items()}
    bits = sorted({b for (c, b) in finals if c != "none"}) or [32]  # fp32 alone: one column
    shown = [k for k in by_seed if (k[0] in ORDER and (k[1] in bits or k[0] == "none"))]
    per_cell, over = seeds_note([set(by_seed[k]) for k in shown])
    fmt = lambda v: fmt_mean(v, per_cell)  # noqa: E731
    head = "| compressor | " + " | ".join(f"{b} bits" for b in bits) + (" | paper, 3 bits |" if paper else " |")
    lines = [head, "|" + "---|" * (len(bits) + 1 + paper)]
    for comp in ORDER:
        if comp == "none":
            if ("none", 32) in finals:
                cell = fmt(finals[("none", 32)])
                lines.append(f"| {label(comp)} | " + " | ".join(cell for _ in bits) + (" | – |" if paper else " |"))
            continue
        if not any((comp, b) in finals for b in bits):
            continue
        ref = (f" {PAPER_3BIT[comp]:.4f} |" if comp in PAPER_3BIT else " – |") if paper else ""
        lines.append(f"| {label(comp)} | " + " | ".join(fmt(finals.get((comp, b), [])) for b in bits) + " |" + ref)
    lines.append("")
    what = ("Final test accuracy on the 10k MNIST test set" if metric == "test_accuracy" else
            f"Final {metric.replace('_', ' ')}")
    lines.append(f"{what}, mean ± std {over}.")
    return "\n".join(lines)


def _spread(vals: list[float], scale: float, digits: int) -> str:
    if not vals:
        return "–"
    m, sd = (v * scale for v in mean_sd(vals))
    return f"{m:+.{digits}f} ± {sd:.{digits}f}" if len(vals) > 1 else f"{m:+.{digits}f}"


def paired(records: list[dict], metric: str = "test_accuracy", higher_better: bool = True) -> list[dict]:
    """Seed-paired differences per (codebook, bits): codebook − fp32 and codebook − the best *other* baseline
    (the non-TNQ codebook with the best mean at those bits), each over the seeds both runs have.

    Returns rows {compressor, bits, n, vs_fp32: [per-seed], best: name, vs_best: [per-seed]}; differences are in
    the metric's own units, positive = higher.
    """
    fin = final_by_seed(records, metric)
    fp32 = fin.get(("none", 32), {})
    sign = 1.0 if higher_better else -1.0
    rows = []
    for comp in ORDER:
        for bits in sorted({b for (c, b) in fin if c == comp and c != "none"}):
            mine = fin[(comp, bits)]
            others = {c: v for (c, b), v in fin.items() if b == bits and c != comp and c != "none"
                      and not tnq_family(c)}
            best = max(others, key=lambda c: _nan_low(sign * mean_sd(list(others[c].values()))[0]), default=None)
            rows.append({"compressor": comp, "bits": bits, "n": len(mine),
                         "vs_fp32": [mine[s] - fp32[s] for s in sorted(mine) if s in fp32],
                         "best": best,
                         "vs_best": [mine[s] - others[best][s] for s in sorted(mine) if best and s in others[best]]})
    return rows


def paired_table(records: list[dict], metric: str = "test_accuracy", higher_better: bool = True) -> str:
    """Markdown of ``paired``: mean ± std over seeds and the per-seed values. Accuracy in points (×100)."""
    scale, digits, unit = (100.0, 2, "points") if metric == "test_accuracy" else (1.0, 4, "")
    lines = [f"| compressor | bits | seeds | − fp32 ({unit or metric}) | per seed | best other baseline "
             f"| − best baseline | per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in paired(records, metric, higher_better):
        per = lambda v: ", ".join(f"{x * scale:+.{digits}f}" for x in v) or "–"  # noqa: E731
        lines.append(f"| {label(r['compressor'])} | {r['bits']} | {r['n']} | {_spread(r['vs_fp32'], scale, digits)}"
                     f" | {per(r['vs_fp32'])} | {label(r['best']) if r['best'] else '–'} | "
                     f"{_spread(r['vs_best'], scale, digits)} | {per(r['vs_best'])} |")
    better = "higher" if higher_better else "lower"
    lines += ["", f"Seed-paired differences of the final {metric.replace('_', ' ')} ({better} is better): each "
                  f"seed's run minus the same seed's fp32 run (same init, same data order), and minus the same "
                  f"seed's run of the best other baseline (the non-TNQ codebook with the best mean at that width)."]
    return "\n".join(lines)


#: the project's training target for the default codebook (docs/experiments.md): at most this far below fp32,
#: in the metric's own units; only MNIST accuracy has one (0.2 points)
FP32_MARGIN = {"test_accuracy": 0.002}


def compared(comp: str) -> bool:
    """A codebook run that a verdict compares with: not fp32, not an fp32 diagnostic (``clip_*``, mnist.CLIPPED)."""
    from .mnist import CLIPPED
    return comp != "none" and comp not in CLIPPED


def paired_stats(d: list[float]) -> dict:
    """n, mean, sd, se = sd/√n of seed-paired differences ``d`` (positive = better), and ``below``: more than two
    standard errors below zero with n >= 3 seeds (False whenever a run diverged: a NaN difference)."""
    n = len(d)
    mean, sd = mean_sd(d) if d else (math.nan, math.nan)
    sd = sd if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "se": se, "below": n >= 3 and mean + 2 * se < 0}


def verdict(records: list[dict], codebook: str, bits: int, metric: str = "test_accuracy",
            higher_better: bool = True) -> dict | None:
    """The default codebook's standing at ``bits``, seed-paired: against fp32 and against *every* other codebook
    (the TNQ family included).

    A difference d is oriented so that d > 0 means ``codebook`` is better. "Below beyond noise" means the mean
    paired difference is more than two standard errors (std / sqrt(n)) below zero, with n >= 3 seeds; the worst
    comparison is the one with the lowest mean / standard error (the lowest mean with fewer than 3 seeds).
    ``target`` judges FP32_MARGIN where the metric has one: met when the mean paired difference to fp32 is at least
    −margin (``beyond_noise``: missed by more than two standard errors). A run of ``codebook`` that diverged (NaN)
    fails the verdict (``diverged``: its seeds). ``failed``: diverged, below another codebook beyond noise, or the
    fp32 target missed. Returns None without fp32 or the codebook's runs.
    """
    fin = final_by_seed(records, metric)
    mine, fp32 = fin.get((codebook, bits)), fin.get(("none", 32))
    if not mine or not fp32:
        return None
    sign = 1.0 if higher_better else -1.0

    def diff(other: dict[int, float]) -> dict:
        return paired_stats([sign * (mine[s] - other[s]) for s in sorted(mine) if s in other])

    others = {c: diff(v) for (c, b), v in fin.items() if b == bits and c != codebook and compared(c)}

    def rank(c: str) -> float:  # t with >= 3 seeds, else the mean (a t from 2 seeds says nothing)
        v = others[c]
        if math.isnan(v["mean"]):  # a run that diverged (NaN metric) is never the worst comparison
            return math.inf
        return v["mean"] / v["se"] if v["n"] >= 3 and v["se"] > 0 else v["mean"]

    diverged = [s for s, v in sorted(mine.items()) if math.isnan(v)]
    vs_fp32 = diff(fp32)
    target = None
    if metric in FP32_MARGIN:
        margin, f = FP32_MARGIN[metric], vs_fp32
        met = not diverged and f["mean"] >= -margin  # False for a NaN mean
        target = {"margin": margin, "met": met,
                  "beyond_noise": not met and f["n"] >= 3 and f["mean"] + 2 * f["se"] < -margin}
    below_any = sorted((c for c, v in others.items() if v["below"]), key=order_key)
    return {"codebook": codebook, "bits": bits, "vs_fp32": vs_fp32, "others": others,
            "worst": min(others, key=rank, default=None), "below_any": below_any, "target": target,
            "diverged": diverged, "failed": bool(diverged or below_any or (target and not target["met"]))}


def units(metric: str) -> tuple[float, int, str]:
    """(scale, decimals, unit) a paired difference of ``metric`` is shown in: accuracy in points, loss as is."""
    return (100.0, 2, "points") if metric == "test_accuracy" else (1.0, 4, "bpb")


def fmt_diff(d: dict, metric: str, n: bool = False) -> str:
    """A verdict difference as "mean ± std" in ``units`` (mean alone for one seed; "nan" for a diverged run)."""
    scale, digits, _ = units(metric)
    if d["n"] == 0:
        return "–"
    text = f"{d['mean'] * scale:+.{digits}f}" + (f" ± {d['sd'] * scale:.{digits}f}" if d["n"] > 1 else "")
    return text + (f" ({d['n']})" if n else "")


def t_of(d: dict) -> str:
    """" (t = mean / standard error)" with at least 3 seeds, else ""."""
    return f" (t {d['mean'] / d['se']:+.1f})" if d["n"] >= 3 and d["se"] > 0 else ""


def verdict_words(v: dict, metric: str) -> str:
    """One cell: FAILED (diverged), missed (which part) or met."""
    if v["diverged"]:
        return f"**FAILED**: diverged (NaN) on seed(s) {', '.join(map(str, v['diverged']))}"
    missed = []
    if v["target"] and not v["target"]["met"]:
        scale, _, unit = units(metric)
        missed.append(f"more than {v['target']['margin'] * scale:g} {unit} below fp32"
                      + (" (beyond noise)" if v["target"]["beyond_noise"] else ""))
    if v["below_any"]:
        missed.append("below " + ", ".join(label(c) for c in v["below_any"]) + " beyond noise")
    return "**missed**: " + "; ".join(missed) if missed else "met"


def _curves(records, bits, metric="test_accuracy"):
    runs = defaultdict(dict)
    for r in records:
        if r["compressor"] == "none" or int(r["bits"]) == bits:
            runs[r["compressor"]].setdefault(int(r["seed"]), []).append((int(r["step"]), float(r[metric])))
    return runs


def plot_accuracy_vs_step(records: list[dict], path: str, bits: int = 3, metric: str = "test_accuracy",
                          title: str = "MNIST, 8 clients") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for comp in ORDER:
        per_seed = _curves(records, bits, metric).get(comp)
        if not per_seed:
            continue
        steps = sorted({s for pts in per_seed.values() for s, _ in pts})
        by = [dict(pts) for pts in per_seed.values()]
        mean = [statistics.fmean([d[s] for d in by if s in d]) for s in steps]
        lo = [min(d[s] for d in by if s in d) for s in steps]
        hi = [max(d[s] for d in by if s in d) for s in steps]
        line, = ax.plot(steps, mean, label=label(comp) if comp == "none" else f"{label(comp)}, {bits} bits")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " "))
    if metric == "test_accuracy":
        ax.set_ylim(0.9, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if metric == "test_accuracy" else "upper right", fontsize=7)
    ax.set_title(f"{title}: {metric.replace('_', ' ')} vs step at {bits} bits (mean, min-max over seeds)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_bits(records: list[dict], path: str, metric: str = "test_accuracy",
                          title: str = "MNIST, 8 clients") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    finals = final_rows(records, metric)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for comp in ORDER[1:]:
        pts = sorted((b, v) for (c, b), v in finals.items() if c == comp)
        if not pts:
            continue
        xs = [b for b, _ in pts]
        ms, sds = zip(*(mean_sd(v) for _, v in pts))
        ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=label(comp))
    if ("none", 32) in finals:
        ax.axhline(statistics.fmean(finals[("none", 32)]), color="k", linestyle="--", label=label("none"))
    ax.set_xlabel("bits per gradient element")
    ax.set_ylabel(f"final {metric.replace('_', ' ')}")
    ax.set_xticks(sorted({b for (c, b) in finals if c != "none"}))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if metric == "test_accuracy" else "upper right", fontsize=7)
    ax.set_title(f"{title}: final {metric.replace('_', ' ')} vs bits (mean ± std over seeds)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform's answer elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int | None = None) -> str:
    """One line: CPU, cores, torch threads, torch version, today's date (UTC)."""
    import torch
    threads = threads or torch.get_num_threads()
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {threads} torch thread(s), torch {torch.__version__}, "
            f"{platform.system()} {platform.machine()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}")


def setup_line(config) -> str:
    """One sentence describing a sweep's shared configuration."""
    from .mnist import make_task_description, partition
    length = f"{config.steps} steps" if config.steps else f"{config.epochs} epochs"
    opt = (f"momentum SGD (lr {config.lr}, momentum {config.momentum}" if config.optimizer == "sgdm" else
           f"AdamW (lr {config.lr}, betas 0.9/0.999") + f", weight decay {config.weight_decay}, constant lr)"
    gran = ("one payload per parameter tensor" if config.per_tensor else
            "FSDP2 semantics: each FSDP unit's gradient reduce-scattered, one row per client, quantized once "
            "(tnq_kernels.fsdp.simulate)" if getattr(config, "fsdp", False) else
            "one payload per client per step (the DDP bucket)")
    block = "one scale per tensor" if config.block_size == 0 else f"block size {config.block_size}"
    return (f"Setup: {make_task_description(config)}, {config.clients} clients ({partition(config)}), batch "
            f"{config.batch_size} per client, {opt}, {length}, {gran}, {block}"
            f"{', error feedback' if getattr(config, 'error_feedback', False) else ''}.")


def task_metric(task: str) -> tuple[str, bool]:
    """(headline metric, higher is better) of a task: held-out loss for the text models, else test accuracy."""
    return ("test_loss", False) if task.startswith("text") else ("test_accuracy", True)


def metric_of(config) -> tuple[str, bool]:
    """``task_metric`` of a run configuration."""
    return task_metric(getattr(config, "task", "mnist"))


def write_all(records: list[dict], out_dir: str, config=None, timings: list[dict] | None = None,
              threads: int | None = None, hardware: str | None = None) -> None:
    """table.md (plus ``out_dir``/notes.md if present), accuracy_vs_step_<b>bit.png, accuracy_vs_bits.png.
    ``hardware``: the machine line to print (a rewrite from the CSVs keeps the one the runs were made on); default:
    this machine, now."""
    metric, higher = metric_of(config) if config is not None else ("test_accuracy", True)
    title = "8 clients" if config is None else f"{config.task}, {config.clients} clients"
    head = ("# MNIST, 8 clients: final test accuracy" if config is None or config.task == "mnist" else
            f"# {config.task}, {config.clients} clients: final {metric.replace('_', ' ')}")
    # the paper's 3-bit numbers are for its own setting: the CNN, IID clients, momentum SGD
    paper = config is None or (config.task == "mnist" and config.optimizer == "sgdm" and config.iid
                               and not config.dirichlet)
    text = head + "\n\n" + table(records, metric, paper=paper) + "\n"
    if any(r["compressor"] == "none" for r in records) and any(r["compressor"] != "none" for r in records):
        text += "\n## Seed-paired differences\n\n" + paired_table(records, metric, higher) + "\n"
    if config is not None:
        text += "\n" + setup_line(config) + "\n"
    text += f"\nHardware: {hardware or environment(threads)}.\n"
    if timings:
        total = sum(float(t["seconds"]) for t in timings)
        modes = sorted({t["mode"] for t in timings})
        by_comp: dict[str, set] = defaultdict(set)
        for t in timings:
            by_comp[t["compressor"]].add(t["backend"])
        backends = sorted({b for v in by_comp.values() for b in v} - {"none"})
        text += (f"\nRuntime: {len(timings)} runs, {total / 60:.1f} min of training in total, mode {'/'.join(modes)}, "
                 f"tnq backend {'/'.join(backends)} (per codebook: "
                 + ", ".join(f"{c} {'/'.join(sorted(v))}" for c, v in by_comp.items() if c != "none")
                 + "; see runs.csv for each run's ms/step).\n")
        if "reference" in backends:
            # the accuracies do not depend on the backend, only the time does
            text += ("\nBackend: \"reference\" is the pure-PyTorch oracle. The C++ backend (\"auto\", the default "
                     "when built) writes bit-identical payloads and decodes bit-identically at equal seed "
                     "(tests/test_cpu_backend.py, tests/test_mnist.py), so these accuracies hold for it unchanged; "
                     "it only trains faster.\n")
    notes = os.path.join(out_dir, "notes.md")
    if os.path.exists(notes):  # hand-written reading of the numbers, kept when a --resume rewrites the table
        with open(notes) as f:
            text += "\n" + f.read()
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    steps_bits = 3 if any(int(r["bits"]) == 3 for r in records) else min(int(r["bits"]) for r in records)
    plot_accuracy_vs_step(records, os.path.join(out_dir, f"{metric}_vs_step_{steps_bits}bit.png"
                                                if metric != "test_accuracy" else
                                                f"accuracy_vs_step_{steps_bits}bit.png"), steps_bits, metric, title)
    plot_accuracy_vs_bits(records, os.path.join(out_dir, "accuracy_vs_bits.png" if metric == "test_accuracy" else
                                                f"{metric}_vs_bits.png"), metric, title)
