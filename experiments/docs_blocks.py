"""The generated blocks of README.md and docs/: every table of results there is rebuilt from the committed CSVs.

A block in a Markdown file is

    <!-- generated: NAME (python -m experiments.summary --docs) -->
    ...
    <!-- end: NAME -->

``python -m experiments.summary --docs`` rewrites every block of every file in DOC_FILES; tests/test_generated_docs.py
fails when a committed block differs from what the committed CSVs give. Blocks (BLOCKS):

- ``training-3bit``: the final metric of every codebook at 3 bits, one row per headline study (summary.headline);
- ``default-vs-fp32``: the default codebook against fp32 at every width, with what its verdict finds;
- ``worst-case``: each codebook's worst seed-paired difference to fp32 over the headline studies and widths;
- ``default-verdicts``: the default codebook's verdict at every study and width (summary.verdicts);
- ``mnist-sweep``: the earlier 2-epoch MNIST sweep (experiments/results/mnist), as report.table writes it;
- ``mnist-2ep``, ``paper-2ep``: the 2-epoch CNN sweep of every codebook (mnist2ep_sgdm) and the paper preset at
  2 epochs (mnist2ep_paper_sgdm), the same way;
- ``text-horizons``: the 2000-step transformer studies read at 600-2000 steps (summary.horizon);
- ``ef-grid-2``, ``ef-grid-3``: the error-feedback grid at 2 and 3 bits (experiments/results/ef_grid,
  feedback_probe.grid);
- ``cpu-kernels``: the CPU kernel table from one run of benchmarks/results/cpu_throughput.csv (benchmarks/plot.py);
- ``cpu-kernels-avx2``: the same table for the AVX2 path (TNQ_NO_AVX512=1), from cpu_throughput_avx2.csv;
- ``cpu-compress-runs``: compress against its CPU targets, one line per run that timed tnq too (plot.compress_runs_table);
- ``e2e-ddp``, ``e2e-fsdp``: the latest DDP and FSDP2 runs of benchmarks/results/e2e_ddp.csv (plot.e2e_table);
- ``e2e-vs-fp16``: the 3-bit allgather step over torch's fp16 hook, every DDP run and link rate (plot.e2e_vs_fp16);
- ``tta``: the latest time-to-accuracy run of benchmarks/results/tta_ddp.csv (plot.tta_table).
"""
from __future__ import annotations

import glob
import os
import re
import sys
from typing import Callable

from . import feedback_probe, report, summary
from .mnist import read_csv

#: the Markdown files whose blocks are generated, relative to the repository root
DOC_FILES = ("README.md", "docs/*.md", "experiments/README.md")
COMMAND = "python -m experiments.summary --docs"
_BLOCK = re.compile(r"(<!-- generated: ([\w.-]+)[^>]*-->\n)(.*?)(<!-- end: \2 -->)", re.S)


def bench_modules():
    """benchmarks/plot.py and benchmarks/_helper.py (benchmarks/ is a folder of scripts, not a package)."""
    where = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    if where not in sys.path:
        sys.path.insert(0, where)
    import _helper  # noqa: E402
    import plot  # noqa: E402
    return plot, _helper


def _cpu_kernels(bench: str, name: str = "cpu_throughput.csv") -> str:
    plot, helper = bench_modules()
    return plot.readme_table(helper.read_csv(os.path.join(bench, name)))


def _cpu_compress_runs(bench: str) -> str:
    plot, helper = bench_modules()
    return plot.compress_runs_table(helper.read_csv(os.path.join(bench, "cpu_throughput.csv")))


def _e2e_vs_fp16(bench: str) -> str:
    plot, helper = bench_modules()
    return plot.e2e_vs_fp16(helper.read_csv(os.path.join(bench, "e2e_ddp.csv")))


def _e2e(bench: str, kind: str) -> str:
    plot, helper = bench_modules()
    rows = plot.e2e_latest(helper.read_csv(os.path.join(bench, "e2e_ddp.csv")))[kind]
    return plot.e2e_table(rows) if rows else "(no run yet)"


def _tta(bench: str) -> str:
    plot, helper = bench_modules()
    rows = plot.latest_run([r for r in helper.read_csv(os.path.join(bench, "tta_ddp.csv")) if r.get("mode") == "run"])
    return plot.tta_table(rows) if rows else "(no run yet)"


def _mnist_sweep(root: str, name: str = "mnist") -> str:
    return report.table(read_csv(os.path.join(root, name, "results.csv")))


#: the steps at which the long transformer studies are read (the 600-step studies' length first)
HORIZON_STEPS = (600, 1000, 1400, 2000)


def _horizons(root: str) -> str:
    return "\n\n".join(summary.horizon(root, name, HORIZON_STEPS) for name in ("text2000_sgdm", "text2000_adamw"))


#: block name -> its text, from (experiments results folder, benchmarks results folder)
BLOCKS: dict[str, Callable[[str, str], str]] = {
    "training-3bit": lambda root, bench: summary.glance(root, summary.headline(root, summary.studies(root)), 3,
                                                        labels=True, backend=False),
    "default-vs-fp32": lambda root, bench: summary.default_table(root, summary.headline(root, summary.studies(root))),
    "worst-case": lambda root, bench: summary.worst_case(root, summary.headline(root, summary.studies(root))),
    "default-verdicts": lambda root, bench: summary.verdicts(root, summary.studies(root), summary.DEFAULT),
    "mnist-sweep": lambda root, bench: _mnist_sweep(root),
    "mnist-2ep": lambda root, bench: _mnist_sweep(root, "mnist2ep_sgdm"),
    "paper-2ep": lambda root, bench: _mnist_sweep(root, "mnist2ep_paper_sgdm"),
    "text-horizons": lambda root, bench: _horizons(root),
    "ef-grid-2": lambda root, bench: feedback_probe.grid(os.path.join(root, "ef_grid"), root, 2),
    "ef-grid-3": lambda root, bench: feedback_probe.grid(os.path.join(root, "ef_grid"), root, 3),
    "cpu-kernels": lambda root, bench: _cpu_kernels(bench),
    "cpu-kernels-avx2": lambda root, bench: _cpu_kernels(bench, "cpu_throughput_avx2.csv"),
    "cpu-compress-runs": lambda root, bench: _cpu_compress_runs(bench),
    "e2e-vs-fp16": lambda root, bench: _e2e_vs_fp16(bench),
    "e2e-ddp": lambda root, bench: _e2e(bench, "e2e_ddp"),
    "e2e-fsdp": lambda root, bench: _e2e(bench, "e2e_fsdp"),
    "tta": lambda root, bench: _tta(bench),
}


def doc_files(repo: str) -> list[str]:
    return sorted(p for pat in DOC_FILES for p in glob.glob(os.path.join(repo, pat)))


def render(text: str, root: str, bench: str, cache: dict | None = None) -> str:
    """``text`` with every block's body replaced by what the CSVs give; an unknown block name is a ValueError."""
    cache = {} if cache is None else cache

    def body(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise ValueError(f"generated block name must be one of {sorted(BLOCKS)}, got {name!r}")
        if name not in cache:
            cache[name] = BLOCKS[name](root, bench).rstrip("\n") + "\n"
        return m.group(1) + cache[name] + m.group(4)
    return _BLOCK.sub(body, text)


def blocks(text: str) -> dict[str, list[str]]:
    """Block name -> the bodies of its blocks in ``text``, in order."""
    out: dict[str, list[str]] = {}
    for m in _BLOCK.finditer(text):
        out.setdefault(m.group(2), []).append(m.group(3))
    return out


def rewrite(repo: str = ".", root: str = "experiments/results", bench: str = "benchmarks/results",
            check: bool = False) -> list[str]:
    """Rewrite (``check``: only compare) every block of DOC_FILES; returns the files that changed (would change)."""
    changed, cache = [], {}
    for path in doc_files(repo):
        with open(path) as f:
            text = f.read()
        new = render(text, root, bench, cache)
        if new != text:
            changed.append(os.path.relpath(path, repo))
            if not check:
                with open(path, "w") as f:
                    f.write(new)
    return changed
