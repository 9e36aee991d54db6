"""Turn the benchmark CSVs of benchmarks/results/ into PNGs and the markdown headline tables.

    cpu_throughput.csv / bench_gpu.csv      -> <name>.png  GB/s vs n per op, one line per impl and bit width
                                               <name>.md   native vs reference vs copy, same run
                                               (the latest run of each thread count, most threads first)
    e2e_ddp.csv                             -> e2e_ddp.png  step time vs link bandwidth, one line per compressor
                                               e2e_ddp.md
    tta_ddp.csv + tta_ddp_curves.csv        -> tta_ddp.png  test accuracy vs training seconds, one panel per link
                                               tta_ddp.md   seconds and steps to the target, median (min-max)
    cost_model.csv                          -> cost_model.png  projected step time vs world size, per kernel source
                                               cost_model.md
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


def latest_run(rows: list[dict], all_runs: bool = False, pick: tuple[str, ...] = ()) -> list[dict]:
    """The rows of the latest run, or of the latest run named in ``pick`` when the rows hold one of those."""
    if all_runs or not rows:
        return rows
    when: dict[str, str] = {}  # run id -> its newest ISO date: run ids changed format, so they do not sort by time
    for r in rows:
        run = r.get("run", "")
        when[run] = max(when.get(run, ""), r.get("date", ""))
    last = max(set(when) & set(pick) or set(when), key=lambda run: (when[run], run))
    return [r for r in rows if r.get("run", "") == last]


def _median(rows, key="gbps") -> float:
    vals = [_f(r[key]) for r in rows if not math.isnan(_f(r.get(key)))]
    return statistics.median(vals) if vals else math.nan


def _stamp(rows: list[dict]) -> str:
    r = rows[0]
    loads = [_f(x.get("loadavg_1m")) for x in rows if not math.isnan(_f(x.get("loadavg_1m")))]
    load = f", load {min(loads):.2g}-{max(loads):.2g}" if loads else ""
    return f"{r.get('device_name', '?')}, {r.get('threads', '?')} threads, torch {r.get('torch', '?')}, " \
           f"{r.get('date', '?')[:10]}{load}"


def latest_per_threads(rows: list[dict], all_runs: bool = False, pick: tuple[str, ...] = ()) -> list[list[dict]]:
    """The latest run of each thread count, most threads first: a 1-thread run (steady on a shared machine) and an
    all-cores run are both worth showing, and neither should hide the other."""
    groups = {}
    for r in rows:
        groups.setdefault(r.get("threads", ""), []).append(r)
    return [latest_run(groups[t], all_runs, pick) for t in sorted(groups, key=lambda t: -_f(t) if t else 0)]


# ---- throughput ----

def plot_throughput(groups: list[list[dict]], out: Path) -> Path:
    panels = [(rows, dt) for rows in groups for dt in dict.fromkeys(r["dtype"] for r in rows)]
    fig, axes = plt.subplots(len(panels), len(THROUGHPUT_OPS), figsize=(5 * len(THROUGHPUT_OPS), 3.6 * len(panels)),
                             squeeze=False)
    for i, (rows, dt) in enumerate(panels):
        copies = {impl: [r for r in rows if r["dtype"] == dt and r["op"] == "copy" and r["impl"] == impl]
                  for impl in dict.fromkeys(r["impl"] for r in rows if r["op"] == "copy")}
        for j, op in enumerate(THROUGHPUT_OPS):
            ax = axes[i][j]
            sel = [r for r in rows if r["dtype"] == dt and r["op"] == op]
            for impl in dict.fromkeys(r["impl"] for r in sel):
                for bits in sorted({int(r["bits"]) for r in sel if r["impl"] == impl}):
                    pts = [r for r in sel if r["impl"] == impl and int(r["bits"]) == bits]
                    ns = sorted({int(r["n"]) for r in pts})
                    ax.plot(ns, [_median([r for r in pts if int(r["n"]) == n]) for n in ns], marker="o",
                            linestyle="--" if impl == "reference" else "-", label=f"{impl} b={bits}")
            for impl, copy in copies.items():
                ns = sorted({int(r["n"]) for r in copy})
                ax.plot(ns, [_median([r for r in copy if int(r["n"]) == n]) for n in ns], color="black",
                        marker="s", linestyle=":" if impl.endswith("clone") else "-",
                        label="torch copy (new output)" if impl.endswith("clone") else "torch copy")
            ax.set(xscale="log", yscale="log", title=f"{op} ({dt}, {rows[0].get('threads', '?')} threads)",
                   xlabel="elements n", ylabel="GB/s (read+written)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle(" | ".join(_stamp(rows) for rows in groups), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def throughput_table(rows: list[dict]) -> str:
    """Per op, dtype, bits: each fast impl vs the reference at the largest n the reference was timed at, and vs a
    copy at the largest n overall (where the copy no longer runs from cache: at 2^20 fp32, 4 MB each way, it does)."""
    ref_ns = [int(r["n"]) for r in rows if r["impl"] == "reference"]
    n = max(ref_ns) if ref_ns else max(int(r["n"]) for r in rows)
    top = max(int(r["n"]) for r in rows)
    at_top = "" if top == n else f" n=2^{int(math.log2(top))}"
    fast = [i for i in dict.fromkeys(r["impl"] for r in rows if r["op"] != "copy") if i != "reference"]
    table = []
    for op in THROUGHPUT_OPS:
        for dt in dict.fromkeys(r["dtype"] for r in rows):
            # the copy into a preallocated tensor: memcpy bandwidth, the baseline docs/benchmarks.md names
            copy = _median([r for r in rows if r["op"] == "copy" and r["impl"] == "torch" and r["dtype"] == dt
                            and int(r["n"]) == top])
            for bits in sorted({int(r["bits"]) for r in rows if r["op"] == op and r["dtype"] == dt}):
                def g(impl, at=n):
                    return _median([r for r in rows if r["op"] == op and r["dtype"] == dt and int(r["bits"]) == bits
                                    and r["impl"] == impl and int(r["n"]) == at])
                ref = g("reference")
                line = {"op": op, "dtype": dt, "b": bits}
                for impl in fast:
                    line[f"{impl} GB/s"] = g(impl)
                line["reference GB/s"] = ref
                for impl in fast:
                    line[f"{impl}/reference"] = g(impl) / ref if ref else math.nan
                if at_top:
                    for impl in fast:
                        line[f"{impl} GB/s{at_top}"] = g(impl, top)
                line[f"copy GB/s{at_top}"] = copy
                fresh = _median([r for r in rows if r["op"] == "copy" and r["impl"] == "torch-clone"
                                 and r["dtype"] == dt and int(r["n"]) == top])
                if not math.isnan(fresh):
                    line["copy to new tensor GB/s"] = fresh
                for impl in fast:
                    line[f"{impl}/copy{at_top}"] = g(impl, top) / copy if copy else math.nan
                table.append(line)
    head = (f"vs reference at n = 2^{int(math.log2(n))} (the largest n it was timed at), vs copy at n = "
            f"2^{int(math.log2(top))}; block 2048; {_stamp(rows)}; run {rows[0].get('run', '?')}\n\n")
    return head + H.format_table(table, list(table[0])) if table else head


def readme_table(rows: list[dict], run: str | None = None) -> str:
    """The README's CPU table, from ONE run: ``run``, else the latest 1-thread run (else the latest run).

    Per op and dtype over b = 2..5: ns per element at the run's largest n, and the fraction of a copy into a
    preallocated tensor (GB/s read + written over the copy's GB/s at that n, same run); decodes into ``out=``
    (impl "native-out"). Then compress against the reference at the largest n the reference was timed at.
    """
    rows = [r for r in rows if r.get("gbps")]
    if run is not None:
        rows = [r for r in rows if r.get("run") == run]
    else:
        groups = latest_per_threads(rows)
        rows = next((g for g in groups if g[0].get("threads") == "1"), groups[0] if groups else [])
    if not rows:
        return "No CPU benchmark run in benchmarks/results/cpu_throughput.csv: run `make bench`."
    top = max(int(r["n"]) for r in rows)
    dtypes = [d for d in ("float32", "bfloat16") if any(r["dtype"] == d for r in rows)]

    def sel(op, impl, dt, bits=None, n=top):
        return _select(rows, op, impl, dt, n, bits)

    def span(vals, fmt):
        vals = [v for v in vals if not math.isnan(v)]
        return "—" if not vals else fmt(min(vals)) if len(vals) == 1 or fmt(min(vals)) == fmt(max(vals)) else \
            f"{fmt(min(vals))}–{fmt(max(vals))}"

    short = {"float32": "fp32", "bfloat16": "bf16"}
    world = max((int(r["world"]) for r in rows if r["op"] == "decompress_sum"), default=0)
    ops = [("compress", "native", "compress"), ("compress", "native-tnq", "compress, `codebook=\"tnq\"`"),
           ("decompress", "native-out", "decompress into `out`"),
           ("decompress_sum", "native-out", f"decompress_sum, {world} payloads, into `out`")]
    ops = [o for o in ops if any(r["op"] == o[0] and r["impl"] == o[1] for r in rows)]
    bits = sorted({int(r["bits"]) for r in rows if r["op"] == "compress"})
    b = " / ".join(map(str, bits))
    head = "| op | " + " | ".join(f"{short.get(dt, dt)}, b = {b} | of copy" for dt in dtypes) + " |"
    lines = [head, "|---|" + "---|---|" * len(dtypes)]
    for op, impl, name in ops:
        cells = []
        for dt in dtypes:
            ns = [_median(sel(op, impl, dt, k), "median_s") * 1e9 / top for k in bits]
            copy = _median(sel("copy", "torch", dt))
            cells += [" / ".join("—" if math.isnan(x) else f"{x:.2f}" for x in ns),
                      span([_median(sel(op, impl, dt, k)) / copy for k in bits], lambda x: f"{x:.2f}")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref_n = max((int(r["n"]) for r in rows if r["impl"] == "reference" and r["op"] == "compress"), default=0)
    ratio = [_median(sel("compress", "native", dt, k, ref_n)) / _median(sel("compress", "reference", dt, k, ref_n))
             for dt in dtypes for k in bits] if ref_n else []
    r0 = rows[0]
    intro = (f"Run `{r0.get('run', '?')}` ({_stamp(rows)}, 1-minute load average): n = 2^{int(math.log2(top))}, "
             f"block {r0.get('block_size', '?')}; ns per element (median wall-clock time) and \"of copy\" (GB/s read "
             f"+ written over that of a copy into a preallocated tensor, same n, same run) over b = {b}.")
    tail = (f"Compress is {span(ratio, lambda x: f'{x:.0f}')}× the reference at n = 2^{int(math.log2(ref_n))} (the "
            f"largest n the reference is timed at), same run." if ref_n else "")
    vs_tnq = _vs_tnq(rows, dtypes, bits, top)
    if vs_tnq:
        how = "timed call by call in turn" if _default_vs_tnq_impl(rows) == "native-default" else "same run"
        tail += (" " if tail else "") + (f"The default codebook's compress takes {span(vs_tnq, lambda x: f'{x:.2f}')}"
                                         f"× the time of tnq's (the paper's codebook), same n, {how}.")
    return "\n".join([intro, ""] + lines + ([""] + [tail] if tail else []))


#: the CPU compress targets (SPEC §7): fraction of a copy's GB/s, default codebook, b = 2..5; and its time over tnq's
COMPRESS_TARGET = {"float32": 0.30, "bfloat16": 0.20}
VS_TNQ_TARGET = 1.10


def _select(rows: list[dict], op: str, impl: str, dtype: str, n: int, bits: int | None = None) -> list[dict]:
    """The rows of one (op, impl, dtype) at ``n`` elements (and ``bits``, unless None)."""
    return [r for r in rows if r["op"] == op and r["impl"] == impl and r["dtype"] == dtype and int(r["n"]) == n
            and (bits is None or int(r["bits"]) == bits)]


def _vs_tnq(rows: list[dict], dtypes: list[str], bits: list[int], n: int) -> list[float]:
    """One run's default-codebook compress time over tnq's (the target: within 10%) per dtype and b, at ``n``;
    [] where the run did not time tnq."""
    if not any(r["impl"] == "native-tnq" for r in rows):
        return []
    mine = _default_vs_tnq_impl(rows)
    return [_median(_select(rows, "compress", mine, dt, n, b), "median_s")
            / _median(_select(rows, "compress", "native-tnq", dt, n, b), "median_s") for dt in dtypes for b in bits]


def _default_vs_tnq_impl(rows: list[dict]) -> str:
    """The rows to set against "native-tnq": "native-default" where the run timed the two call by call in turn
    (test_compress_default_vs_tnq), else (runs before it) the default's own "native" rows."""
    return "native-default" if any(r["impl"] == "native-default" for r in rows) else "native"


def compress_runs_table(rows: list[dict]) -> str:
    """One line per run that timed both the default codebook and tnq (impl "native-tnq") at its largest n: threads,
    load, the copy's GB/s, compress's fraction of it over b = 2..5 per dtype, and the default's time over tnq's;
    whether each target is met in that run. Every such run, so one lucky run cannot stand for the others."""
    runs = [run for run in dict.fromkeys(r.get("run") for r in rows)
            if any(r.get("run") == run and r["impl"] == "native-tnq" and r.get("gbps") for r in rows)]
    table = []
    for run in runs:
        rr = [r for r in rows if r.get("run") == run and r.get("gbps")]
        top = max(int(r["n"]) for r in rr)
        line = {"run": run, "cpu": rr[0].get("device_name", "?"), "threads": rr[0].get("threads", "?"),
                "load 1m": _stamp(rr).rpartition("load ")[2]}
        ratios_tnq, met = [], True
        for dt in [d for d in COMPRESS_TARGET if any(r["dtype"] == d for r in rr)]:
            copy = _median(_select(rr, "copy", "torch", dt, top))
            bits = sorted({int(r["bits"]) for r in _select(rr, "compress", "native", dt, top)})
            frac = [_median(_select(rr, "compress", "native", dt, top, b)) / copy for b in bits]
            ratios_tnq += _vs_tnq(rr, [dt], bits, top)
            met &= min(frac) >= COMPRESS_TARGET[dt]
            short = "fp32" if dt == "float32" else "bf16"
            line[f"{short} copy GB/s"] = copy
            line[f"{short} compress, of copy (≥ {COMPRESS_TARGET[dt]:.2f})"] = f"{min(frac):.2f}–{max(frac):.2f}"
        line[f"time vs tnq (≤ {VS_TNQ_TARGET:.2f})"] = f"{min(ratios_tnq):.2f}–{max(ratios_tnq):.2f}"
        line["tnq timed"] = "in turn" if _default_vs_tnq_impl(rr) == "native-default" else "after"
        line["all met"] = "yes" if met and max(ratios_tnq) <= VS_TNQ_TARGET else "no"
        table.append(line)
    if not table:
        return "No run has timed tnq next to the default codebook yet: run `make bench`."
    return (f"n = 2^{int(math.log2(top))}, b = 2–5, the default codebook; \"of copy\": GB/s read + written over "
            "that of a copy into a preallocated tensor measured in the same run; \"time vs tnq\": median time of "
            "the default's compress over tnq's, same run, timed either call by call in turn (\"in turn\") or one "
            "case after the other (\"after\").\n\n" + H.format_table(table, list(table[0])))


# ---- end to end ----

def plot_e2e(rows: list[dict], out: Path) -> Path:
    shaped = [r for r in rows if _f(r.get("bandwidth_gbit")) > 0 and not math.isnan(_f(r.get("step_ms_median")))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for comp in dict.fromkeys(r["compressor"] for r in shaped):
        pts = sorted(((_f(r["bandwidth_gbit"]), _f(r["step_ms_median"])) for r in shaped if r["compressor"] == comp))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle=":" if comp == "compute-only" else "-", label=comp)
    ax.set(xscale="log", yscale="log", xlabel="link bandwidth (Gbit/s, tc tbf)", ylabel="step time (ms, median)",
           title=f"{'FSDP2' if rows[0]['compressor'].startswith('fsdp-') else 'DDP'} step, gloo, world size "
                 f"{rows[0].get('world', 2)}, "
                 f"{_f(rows[0].get('params')) / 1e6:.1f} M params")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(_stamp(rows), fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def e2e_latest(rows: list[dict], all_runs: bool = False, pick: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """{"e2e_ddp": the latest DDP run's rows, "e2e_fsdp": the latest FSDP2 run's}: a run with an fsdp-… compressor
    (e2e_ddp.py --world 4 --compressors compute-only,fsdp-…) is an FSDP2 run, with its own table."""
    fsdp_runs = {r.get("run") for r in rows if r["compressor"].startswith("fsdp-")}
    return {"e2e_ddp": latest_run([r for r in rows if r.get("run") not in fsdp_runs], all_runs, pick),
            "e2e_fsdp": latest_run([r for r in rows if r.get("run") in fsdp_runs], all_runs, pick)}


def e2e_table(rows: list[dict]) -> str:
    table = []
    for r in rows:
        table.append({"link Gbit/s": r.get("bandwidth_gbit") or r.get("net", ""),
                      "measured Gbit/s": _f(r.get("link_gbit_measured")), "compressor": r["compressor"],
                      "step ms": _f(r.get("step_ms_median")), "vs allreduce": _f(r.get("speedup_vs_allreduce")),
                      "MB sent/rank/step": _f(r.get("wire_bytes_per_rank_step")) / 1e6,
                      "tnq payload MB/rank/step": _f(r.get("payload_bytes_per_rank_step")) / 1e6,
                      "wire ms": _f(r.get("wire_ms")), "tnq kernel ms": _f(r.get("tnq_kernel_ms")),
                      "load 1m": _f(r.get("loadavg_1m")), "note": r.get("note", "")})
    params = _f(rows[0].get("params")) / 1e6
    return (f"world size {rows[0].get('world', 2)}, {params:.1f} M params ({4 * params:.0f} MB fp32 gradients), "
            f"{_stamp(rows)}; run {rows[0].get('run', '?')}\n\n"
            "MB sent = what this rank's interface (the shaped link) sent per step, TCP/IP included; tnq payload MB = "
            "the tnq state's own count of the bytes it sent (FSDP2 hierarchical: node link included); wire ms = "
            "MB sent / measured link rate; tnq kernel ms = the hook's compress + decode calls alone for the same "
            "buckets, timed on the rank's own thread.\n\n"
            + H.format_table(table, list(table[0])))


def e2e_vs_fp16(rows: list[dict], compressor: str = "tnq-allgather-3") -> str:
    """One line per DDP run and link rate that timed both torch's fp16 hook and ``compressor``: their median step
    times and the ratio (the target: ≤ 0.80 at 10 and 25 Gbit/s), with the run's load. Every run, oldest first."""
    table = []
    for run in dict.fromkeys(r.get("run") for r in rows):
        rr = [r for r in rows if r.get("run") == run]
        for bw in dict.fromkeys(r.get("bandwidth_gbit") for r in rr):
            got = {r["compressor"]: r for r in rr if r.get("bandwidth_gbit") == bw}
            if "fp16" not in got or compressor not in got:
                continue
            fp16, ours = _f(got["fp16"]["step_ms_median"]), _f(got[compressor]["step_ms_median"])
            loads = [_f(r.get("loadavg_1m")) for r in got.values()]
            table.append({"run": run, "link Gbit/s": bw, "measured Gbit/s": _f(got["fp16"].get("link_gbit_measured")),
                          "fp16 step ms": fp16, f"{compressor} step ms": ours, "ratio": ours / fp16,
                          "load 1m": f"{min(loads):.2g}–{max(loads):.2g}"})
    return H.format_table(table, list(table[0])) if table else "(no run yet)"


# ---- time to accuracy ----

def _spread(vals: list[float], fmt: str) -> str:
    """median (min–max) of the finite ``vals``, or — when there are none."""
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "—"
    med = format(statistics.median(vals), fmt)
    return med if len(vals) == 1 else f"{med} ({format(min(vals), fmt)}–{format(max(vals), fmt)})"


def _tta_groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The timed rows (mode "run"), grouped by (link, compressor) in the order they ran."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("mode", "run") == "run":
            groups.setdefault((str(r.get("bandwidth_gbit", "")), r["compressor"]), []).append(r)
    return groups


def _reached(r: dict) -> bool:
    return str(r.get("reached")) == "True"


def tta_table(rows: list[dict]) -> str:
    """Per link and compressor, over seeds: how many reached the target, training seconds and steps to it (median
    (min–max) over the seeds that reached it), the ratio to fp32 all-reduce's median seconds on the same link, the
    final accuracy and the bytes each rank sent per step."""
    groups = _tta_groups(rows)
    if not groups:
        return "no time-to-accuracy runs (mode run) in these rows"
    fp32 = {link: statistics.median(v) for (link, comp), g in groups.items() if comp == "allreduce"
            for v in [[_f(r["seconds_to_target"]) for r in g if _reached(r)]] if v}
    table = []
    for (link, comp), g in groups.items():
        secs = [_f(r["seconds_to_target"]) for r in g if _reached(r)]
        ratio = fp32.get(link, math.nan) / statistics.median(secs) if secs else math.nan
        table.append({
            "link Gbit/s": link or g[0].get("net", ""),
            "measured Gbit/s": _spread([_f(r.get("link_gbit_measured")) for r in g], ".3g"),
            "compressor": comp + (f" ({g[0]['codebook']})" if g[0].get("codebook") else ""),
            "reached": f"{sum(map(_reached, g))}/{len(g)}",
            "seconds to target": _spread(secs, ".3g"),
            "steps to target": _spread([_f(r["steps_to_target"]) for r in g if _reached(r)], ".0f"),
            "fp32 s / this s": ratio,
            "final accuracy": _spread([_f(r["final_accuracy"]) for r in g], ".4f"),
            "MB sent/rank/step": _spread([_f(r.get("wire_bytes_per_rank_step")) / 1e6 for r in g], ".3g"),
            "step ms": _spread([_f(r.get("step_ms_mean")) for r in g], ".0f"),
            "load 1m": _spread([_f(r.get("loadavg_1m")) for r in g], ".2g"),
        })
    r0 = next(iter(groups.values()))[0]
    seeds = sorted({str(r.get("seed")) for g in groups.values() for r in g})
    params = _f(r0.get("params")) / 1e6
    return (f"MNIST, MLP with {params:.2f} M params ({4 * params:.3g} MB fp32 gradients), 2 gloo ranks, target test "
            f"accuracy {_f(r0.get('target')):.4g}, seeds {', '.join(seeds)}; {_stamp(rows)}; run "
            f"{r0.get('run', '?')}\n\n"
            "Seconds are training time only (the slower rank's, evaluations excluded); median (min–max) over the seeds "
            "that reached the target; fp32 s / this s = fp32 all-reduce's median seconds to target on the same link "
            "over this compressor's (> 1: sooner). MB sent/rank/step from the interface counters (TCP/IP included; "
            "— over loopback).\n\n" + H.format_table(table, list(table[0])))


def plot_tta(rows: list[dict], curves: list[dict], out: Path) -> Path:
    """Test accuracy against training seconds, one panel per link, one colour per compressor, one line per seed,
    the target dashed."""
    groups = _tta_groups(rows)
    links = list(dict.fromkeys(link for link, _ in groups))
    comps = list(dict.fromkeys(comp for _, comp in groups))
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(comps)}
    fig, axes = plt.subplots(1, max(1, len(links)), figsize=(6.5 * max(1, len(links)), 4.6), squeeze=False)
    target = _f(rows[0].get("target")) if rows else math.nan
    for ax, link in zip(axes[0], links):
        for comp in comps:
            for i, seed in enumerate(dict.fromkeys(str(r["seed"]) for r in groups.get((link, comp), []))):
                pts = sorted((_f(c["step"]), _f(c["train_seconds"]), _f(c["test_accuracy"])) for c in curves
                             if c.get("mode", "run") == "run" and str(c.get("bandwidth_gbit", "")) == link
                             and c["compressor"] == comp and str(c["seed"]) == seed)
                ax.plot([q[1] for q in pts], [q[2] for q in pts], color=colors[comp], lw=1.2, alpha=0.8,
                        label=comp if i == 0 else None)
        if not math.isnan(target):
            ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.4g}")
            ax.set_ylim(max(0.0, target - 0.15), min(1.0, target + 0.03))
        ax.set(xlabel="training seconds (evaluations excluded)", ylabel="test accuracy",
               title=f"{link} Gbit/s" if link else "loopback")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"MNIST time to accuracy, DDP 2 ranks, gloo; {_stamp(rows)}" if rows else "", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- cost model ----

def plot_cost(rows: list[dict], out: Path) -> Path:
    """One row of panels per (kernel source, params), one column per link bandwidth: measured and assumed kernel
    throughputs never share a panel."""
    lines = list(dict.fromkeys((r.get("kernel_source", ""), r["params"]) for r in rows))
    gbits = list(dict.fromkeys(r["gbit"] for r in rows))
    fig, axes = plt.subplots(len(lines), len(gbits), figsize=(4.2 * len(gbits), 3.6 * len(lines)), squeeze=False)
    for i, (source, params) in enumerate(lines):
        for j, g in enumerate(gbits):
            ax = axes[i][j]
            sel = [r for r in rows if (r.get("kernel_source", ""), r["params"], r["gbit"]) == (source, params, g)]
            for comp in dict.fromkeys((r["compressor"], r["bits"]) for r in sel):
                pts = [r for r in sel if (r["compressor"], r["bits"]) == comp]
                label = comp[0] if comp[0].startswith(("powersgd", "allreduce", "fp16")) else f"{comp[0]} b={comp[1]}"
                ax.plot([int(r["world"]) for r in pts], [_f(r["step_ms"]) for r in pts], marker=".", label=label,
                        linestyle="--" if "two_phase" in comp[0] else "-")
            tag = "MEASURED" if source.startswith("measured") else "ASSUMED"
            ax.set(xscale="log", yscale="log", xlabel="world size", ylabel="projected step ms",
                   title=f"{_f(params) / 1e6:g} M params, {_f(g):g} Gbit/s, {tag} kernels")
            ax.title.set_fontsize(8)
            ax.grid(True, which="both", alpha=0.3)
        axes[i][0].annotate(source, (0, 1.12), xycoords="axes fraction", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"α–β model (α = {rows[0].get('alpha_us')} µs, T_compute = {rows[0].get('compute_ms')} ms), "
                 f"{rows[0].get('date', '?')[:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cost_table(rows: list[dict], worlds=(8, 64, 1024)) -> str:
    """Projected step ms at a few world sizes, one table per kernel source, rows (params, Gbit/s, compressor)."""
    have = sorted({int(r["world"]) for r in rows})
    worlds = [w for w in worlds if w in have] or have
    out = [f"α–β projection (α = {rows[0].get('alpha_us')} µs, T_compute = {rows[0].get('compute_ms')} ms, both "
           f"parameters), {rows[0].get('date', '?')[:10]}; step ms, (× vs allreduce)"]
    for source in dict.fromkeys(r.get("kernel_source", "") for r in rows):
        table = []
        sel = [r for r in rows if r.get("kernel_source", "") == source]
        for key in dict.fromkeys((r["params"], r["gbit"], r["compressor"], r["bits"]) for r in sel):
            line = {"params M": _f(key[0]) / 1e6, "Gbit/s": _f(key[1]),
                    "compressor": key[2] if key[2].startswith(("powersgd", "allreduce", "fp16"))
                    else f"{key[2]} b={key[3]}"}
            for w in worlds:
                r = next((r for r in sel if (r["params"], r["gbit"], r["compressor"], r["bits"]) == key
                          and int(r["world"]) == w), None)
                line[f"p={w}"] = "—" if r is None else \
                    f"{_f(r['step_ms']):.4g} ({_f(r['speedup_vs_allreduce']):.2f}×)"
            table.append(line)
        out.append(f"\nkernels: {source}\n\n" + H.format_table(table, list(table[0])))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(H.RESULTS_DIR), help="folder holding the CSVs")
    p.add_argument("--out", default=None, help="folder for PNG/md (default: --results)")
    p.add_argument("--all-runs", action="store_true", help="pool every run instead of the latest")
    p.add_argument("--run", action="append", default=[],
                   help="draw this run id instead of the latest, in each CSV that holds it (repeatable)")
    args = p.parse_args(argv)
    src, out = Path(args.results), Path(args.out or args.results)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name in ("cpu_throughput", "bench_gpu", "gpu_throughput"):
        groups = latest_per_threads([r for r in H.read_csv(src / f"{name}.csv") if r.get("gbps")], args.all_runs,
                                    tuple(args.run))
        if groups:
            made.append(plot_throughput(groups, out / f"{name}.png"))
            (out / f"{name}.md").write_text("\n\n".join(throughput_table(rows) for rows in groups) + "\n")
            made.append(out / f"{name}.md")
    for name, rows in e2e_latest(H.read_csv(src / "e2e_ddp.csv"), args.all_runs, tuple(args.run)).items():
        if rows:
            made.append(plot_e2e(rows, out / f"{name}.png"))
            (out / f"{name}.md").write_text(e2e_table(rows) + "\n")
            made.append(out / f"{name}.md")
    rows = latest_run([r for r in H.read_csv(src / "tta_ddp.csv") if r.get("mode") == "run"], args.all_runs,
                      tuple(args.run))
    if rows:
        runs = {r["run"] for r in rows}
        curves = [c for c in H.read_csv(src / "tta_ddp_curves.csv") if c.get("run") in runs]
        made.append(plot_tta(rows, curves, out / "tta_ddp.png"))
        (out / "tta_ddp.md").write_text(tta_table(rows) + "\n")
        made.append(out / "tta_ddp.md")
    rows = H.read_csv(src / "cost_model.csv")
    if rows:
        made.append(plot_cost(rows, out / "cost_model.png"))
        (out / "cost_model.md").write_text(cost_table(rows) + "\n")
        made.append(out / "cost_model.md")
    for m in made:
        print(f"wrote {m}")
    if not made:
        print(f"plot: no CSVs in {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
