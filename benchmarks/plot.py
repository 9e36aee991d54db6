"""Turn the benchmark CSVs of benchmarks/results/ into PNGs and the markdown headline tables.

    cpu_throughput.csv / bench_gpu.csv      -> <name>.png  GB/s vs n per op, one line per impl and bit width
                                               <name>.md   native vs reference vs copy at equal n, same run
    e2e_ddp.csv                             -> e2e_ddp.png  step time vs link bandwidth, one line per compressor
                                               e2e_ddp.md
    cost_model.csv                          -> cost_model.png  projected step time vs world size
A CSV that is absent is skipped. Only each CSV's latest ``run`` is drawn (``--all-runs`` to pool them), so a figure
never mixes a busy machine's numbers with a quiet one's.

    .venv/bin/python benchmarks/plot.py [--results benchmarks/results] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

import _helper as H  # noqa: E402

THROUGHPUT_OPS = ("compress", "decompress", "decompress_sum")


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def latest_run(rows: list[dict], all_runs: bool = False) -> list[dict]:
    if all_runs or not rows:
        return rows
    last = max(r.get("run", "") for r in rows)
    return [r for r in rows if r.get("run", "") == last]


def _median(rows, key="gbps") -> float:
    vals = [_f(r[key]) for r in rows if not math.isnan(_f(r.get(key)))]
    return statistics.median(vals) if vals else math.nan


def _stamp(rows: list[dict]) -> str:
    r = rows[0]
    return f"{r.get('device_name', '?')}, {r.get('threads', '?')} threads, torch {r.get('torch', '?')}, " \
           f"{r.get('date', '?')[:10]}"


# ---- throughput ----

def plot_throughput(rows: list[dict], out: Path) -> Path:
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(dtypes), len(THROUGHPUT_OPS), figsize=(5 * len(THROUGHPUT_OPS), 3.6 * len(dtypes)),
                             squeeze=False)
    for i, dt in enumerate(dtypes):
        copy = [r for r in rows if r["dtype"] == dt and r["op"] == "copy"]
        for j, op in enumerate(THROUGHPUT_OPS):
            ax = axes[i][j]
            sel = [r for r in rows if r["dtype"] == dt and r["op"] == op]
            for impl in dict.fromkeys(r["impl"] for r in sel):
                for bits in sorted({int(r["bits"]) for r in sel if r["impl"] == impl}):
                    pts = [r for r in sel if r["impl"] == impl and int(r["bits"]) == bits]
                    ns = sorted({int(r["n"]) for r in pts})
                    ax.plot(ns, [_median([r for r in pts if int(r["n"]) == n]) for n in ns], marker="o",
                            linestyle="--" if impl == "reference" else "-", label=f"{impl} b={bits}")
            if copy:
                ns = sorted({int(r["n"]) for r in copy})
                ax.plot(ns, [_median([r for r in copy if int(r["n"]) == n]) for n in ns], color="black",
                        marker="s", label="torch copy")
            ax.set(xscale="log", yscale="log", title=f"{op} ({dt})", xlabel="elements n", ylabel="GB/s (read+written)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle(_stamp(rows), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput_table(rows: list[dict]) -> str:
    """Per op, dtype, bits at the largest n the reference was timed at: GB/s of each impl, copy, and the ratios."""
    ref_ns = [int(r["n"]) for r in rows if r["impl"] == "reference"]
    n = max(ref_ns) if ref_ns else max(int(r["n"]) for r in rows)
    top = max(int(r["n"]) for r in rows)
    fast = [i for i in dict.fromkeys(r["impl"] for r in rows) if i not in ("reference", "torch")]
    table = []
    for op in THROUGHPUT_OPS:
        for dt in dict.fromkeys(r["dtype"] for r in rows):
            copy = _median([r for r in rows if r["op"] == "copy" and r["dtype"] == dt and int(r["n"]) == n])
            for bits in sorted({int(r["bits"]) for r in rows if r["op"] == op and r["dtype"] == dt}):
                def g(impl, at=n):
                    return _median([r for r in rows if r["op"] == op and r["dtype"] == dt and int(r["bits"]) == bits
                                    and r["impl"] == impl and int(r["n"]) == at])
                ref = g("reference")
                line = {"op": op, "dtype": dt, "b": bits}
                for impl in fast:
                    line[f"{impl} GB/s"] = g(impl)
                line["reference GB/s"] = ref
                line["copy GB/s"] = copy
                for impl in fast:
                    line[f"{impl}/reference"] = g(impl) / ref if ref else math.nan
                    line[f"{impl}/copy"] = g(impl) / copy if copy else math.nan
                    if top != n:
                        line[f"{impl} GB/s n=2^{int(math.log2(top))}"] = g(impl, top)
                table.append(line)
    head = f"n = 2^{int(math.log2(n))} = {n} elements, block 2048; {_stamp(rows)}; run {rows[0].get('run', '?')}\n\n"
    return head + H.format_table(table, list(table[0])) if table else head


# ---- end to end ----

def plot_e2e(rows: list[dict], out: Path) -> Path:
    shaped = [r for r in rows if _f(r.get("bandwidth_gbit")) > 0 and not math.isnan(_f(r.get("step_ms_median")))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for comp in dict.fromkeys(r["compressor"] for r in shaped):
        pts = sorted(((_f(r["bandwidth_gbit"]), _f(r["step_ms_median"])) for r in shaped if r["compressor"] == comp))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle=":" if comp == "compute-only" else "-", label=comp)
    ax.set(xscale="log", yscale="log", xlabel="link bandwidth (Gbit/s, tc tbf)", ylabel="step time (ms, median)",
           title=f"DDP step, gloo, world size {rows[0].get('world', 2)}, "
                 f"{_f(rows[0].get('params')) / 1e6:.1f} M params")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(_stamp(rows), fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def e2e_table(rows: list[dict]) -> str:
    table = []
    for r in rows:
        table.append({"link Gbit/s": r.get("bandwidth_gbit") or r.get("net", ""),
                      "measured Gbit/s": _f(r.get("link_gbit_measured")), "compressor": r["compressor"],
                      "step ms": _f(r.get("step_ms_median")), "vs allreduce": _f(r.get("speedup_vs_allreduce")),
                      "MB sent/rank/step": _f(r.get("wire_bytes_per_rank_step")) / 1e6,
                      "note": r.get("note", "")})
    params = _f(rows[0].get("params")) / 1e6
    return (f"world size {rows[0].get('world', 2)}, {params:.1f} M params ({4 * params:.0f} MB fp32 gradients), "
            f"{_stamp(rows)}\n\n" + H.format_table(table, list(table[0])))


# ---- cost model ----

def plot_cost(rows: list[dict], out: Path) -> Path:
    keys = list(dict.fromkeys((r["params"], r["gbit"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        sel = [r for r in rows if (r["params"], r["gbit"]) == key]
        for comp in dict.fromkeys((r["compressor"], r["bits"]) for r in sel):
            pts = [r for r in sel if (r["compressor"], r["bits"]) == comp]
            label = comp[0] if comp[0].startswith(("powersgd", "allreduce", "fp16")) else f"{comp[0]} b={comp[1]}"
            ax.plot([int(r["world"]) for r in pts], [_f(r["step_ms"]) for r in pts], marker=".", label=label)
        ax.set(xscale="log", yscale="log", xlabel="world size", ylabel="projected step ms",
               title=f"{_f(key[0]) / 1e6:g} M params, {_f(key[1]):g} Gbit/s")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"α–β model (α = {rows[0].get('alpha_us')} µs); kernels: {rows[0].get('kernel_source')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(H.RESULTS_DIR), help="folder holding the CSVs")
    p.add_argument("--out", default=None, help="folder for PNG/md (default: --results)")
    p.add_argument("--all-runs", action="store_true", help="pool every run instead of the latest")
    args = p.parse_args(argv)
    src, out = Path(args.results), Path(args.out or args.results)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name in ("cpu_throughput", "bench_gpu", "gpu_throughput"):
        rows = latest_run([r for r in H.read_csv(src / f"{name}.csv") if r.get("gbps")], args.all_runs)
        if rows:
            made.append(plot_throughput(rows, out / f"{name}.png"))
            (out / f"{name}.md").write_text(throughput_table(rows) + "\n")
            made.append(out / f"{name}.md")
    rows = latest_run(H.read_csv(src / "e2e_ddp.csv"), args.all_runs)
    if rows:
        made.append(plot_e2e(rows, out / "e2e_ddp.png"))
        (out / "e2e_ddp.md").write_text(e2e_table(rows) + "\n")
        made.append(out / "e2e_ddp.md")
    rows = H.read_csv(src / "cost_model.csv")
    if rows:
        made.append(plot_cost(rows, out / "cost_model.png"))
    for m in made:
        print(f"wrote {m}")
    if not made:
        print(f"plot: no CSVs in {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
