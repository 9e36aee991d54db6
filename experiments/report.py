"""Outputs of the MNIST experiment: the Markdown table of final accuracies and the PNG plots, from the CSV rows."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
from collections import defaultdict

RUN_FIELDS = ("compressor", "bits", "seed", "mode", "backend", "steps", "seconds", "ms_per_step", "final_accuracy")
ORDER = ("none", "tnq", "tqsgd", "nqsgd", "qsgd")
LABEL = {"none": "none (fp32)", "tnq": "TNQ (ours)", "tqsgd": "TQSGD", "nqsgd": "NQSGD", "qsgd": "QSGD"}


def read_runs(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["bits"], r["seed"], r["steps"] = int(r["bits"]), int(r["seed"]), int(r["steps"])
    return rows


def write_runs(path: str, timings: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        w.writeheader()
        w.writerows(timings)


def final_rows(records: list[dict]) -> dict[tuple[str, int], list[float]]:
    """(compressor, bits) -> final test accuracies, one per seed (the row with the largest step of each run)."""
    last: dict[tuple[str, int, int], dict] = {}
    for r in records:
        key = (r["compressor"], int(r["bits"]), int(r["seed"]))
        if key not in last or int(r["step"]) > int(last[key]["step"]):
            last[key] = r
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for (comp, bits, _), r in sorted(last.items()):
        out[(comp, bits)].append(float(r["test_accuracy"]))
    return out


def _fmt(accs: list[float]) -> str:
    if not accs:
        return "–"
    m = statistics.fmean(accs)
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return f"{m:.4f} ± {sd:.4f}" if len(accs) > 1 else f"{m:.4f}"


def table(records: list[dict]) -> str:
    """Markdown: final test accuracy, mean ± std over seeds, per compressor x bits, with the paper's 3-bit values."""
    from .mnist import PAPER_3BIT
    finals = final_rows(records)
    bits = sorted({b for (c, b) in finals if c != "none"})
    seeds = {int(r["seed"]) for r in records}
    head = "| compressor | " + " | ".join(f"{b} bits" for b in bits) + " | paper, 3 bits |"
    lines = [head, "|" + "---|" * (len(bits) + 2)]
    for comp in ORDER:
        if comp == "none":
            if ("none", 32) in finals:
                cell = _fmt(finals[("none", 32)])
                lines.append(f"| {LABEL[comp]} | " + " | ".join(cell for _ in bits) + " | – |")
            continue
        if not any((comp, b) in finals for b in bits):
            continue
        paper = f"{PAPER_3BIT[comp]:.4f}" if comp in PAPER_3BIT else "–"
        lines.append(f"| {LABEL[comp]} | " + " | ".join(_fmt(finals.get((comp, b), [])) for b in bits)
                     + f" | {paper} |")
    lines.append("")
    lines.append(f"Final test accuracy on the 10k MNIST test set, mean ± std over {len(seeds)} seed(s) "
                 f"({', '.join(map(str, sorted(seeds)))}).")
    return "\n".join(lines)


def _curves(records, bits):
    runs = defaultdict(dict)
    for r in records:
        if r["compressor"] == "none" or int(r["bits"]) == bits:
            runs[r["compressor"]].setdefault(int(r["seed"]), []).append((int(r["step"]), float(r["test_accuracy"])))
    return runs


def plot_accuracy_vs_step(records: list[dict], path: str, bits: int = 3) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for comp in ORDER:
        per_seed = _curves(records, bits).get(comp)
        if not per_seed:
            continue
        steps = sorted({s for pts in per_seed.values() for s, _ in pts})
        by = [dict(pts) for pts in per_seed.values()]
        mean = [statistics.fmean([d[s] for d in by if s in d]) for s in steps]
        lo = [min(d[s] for d in by if s in d) for s in steps]
        hi = [max(d[s] for d in by if s in d) for s in steps]
        line, = ax.plot(steps, mean, label=LABEL[comp] if comp == "none" else f"{LABEL[comp]}, {bits} bits")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("step (8 clients x 32 images)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.9, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"MNIST, 8 clients: test accuracy vs step at {bits} bits (mean, min-max over seeds)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_bits(records: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    finals = final_rows(records)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for comp in ORDER[1:]:
        pts = sorted((b, v) for (c, b), v in finals.items() if c == comp)
        if not pts:
            continue
        xs = [b for b, _ in pts]
        ms = [statistics.fmean(v) for _, v in pts]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts]
        ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=LABEL[comp])
    if ("none", 32) in finals:
        ax.axhline(statistics.fmean(finals[("none", 32)]), color="k", linestyle="--", label=LABEL["none"])
    ax.set_xlabel("bits per gradient element")
    ax.set_ylabel("final test accuracy")
    ax.set_xticks(sorted({b for (c, b) in finals if c != "none"}))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("MNIST, 8 clients: final test accuracy vs bits (mean ± std over seeds)")
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


def write_all(records: list[dict], out_dir: str, config=None, timings: list[dict] | None = None,
              threads: int | None = None) -> None:
    """table.md (plus ``out_dir``/notes.md if present), accuracy_vs_step_<b>bit.png, accuracy_vs_bits.png."""
    text = "# MNIST, 8 clients: final test accuracy\n\n" + table(records) + "\n"
    if config is not None:
        text += (f"\nSetup: AlexNet-style CNN (0.32M parameters), {config.clients} clients "
                 f"({'IID' if config.iid else 'non-IID'}), batch {config.batch_size} per client, momentum SGD "
                 f"(lr {config.lr}, momentum {config.momentum}), {config.epochs} epochs, block size "
                 f"{config.block_size}, one payload per client per step"
                 f"{', error feedback' if getattr(config, 'error_feedback', False) else ''}.\n")
    text += f"\nHardware: {environment(threads)}.\n"
    if timings:
        total = sum(float(t["seconds"]) for t in timings)
        modes = sorted({t["mode"] for t in timings})
        backends = sorted({t["backend"] for t in timings})
        text += (f"\nRuntime: {len(timings)} runs, {total / 60:.1f} min of training in total, mode {'/'.join(modes)}, "
                 f"tnq backend {'/'.join(backends)} (see runs.csv for each run's ms/step).\n")
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
    plot_accuracy_vs_step(records, os.path.join(out_dir, f"accuracy_vs_step_{steps_bits}bit.png"), steps_bits)
    plot_accuracy_vs_bits(records, os.path.join(out_dir, "accuracy_vs_bits.png"))
