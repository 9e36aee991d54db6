"""The tables of README.md and docs/ come from the committed CSVs (experiments/docs_blocks.py): a block that differs
from what `python -m experiments.summary --docs` writes fails here."""
import csv
import os

import pytest

from experiments import docs_blocks, mnist, report, summary
from studies import write_study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")
BENCH = os.path.join(REPO, "benchmarks", "results")


def test_every_generated_block_matches_the_committed_csvs():
    stale = docs_blocks.rewrite(REPO, RESULTS, BENCH, check=True)
    assert stale == [], (f"generated blocks in {stale} differ from the CSVs: run `{docs_blocks.COMMAND}` from the "
                         f"repository root and commit the result")


def test_the_result_tables_are_generated_blocks():
    found = {}
    for path in docs_blocks.doc_files(REPO):
        with open(path) as f:
            for name in docs_blocks.blocks(f.read()):
                found.setdefault(name, []).append(os.path.relpath(path, REPO))
    assert set(found) == set(docs_blocks.BLOCKS)  # every block is used, and only known ones
    for name in ("default-vs-fp32", "training-3bit", "cpu-kernels"):
        assert "README.md" in found[name]
    for name in ("default-verdicts", "worst-case", "mnist-sweep"):
        assert "docs/experiments.md" in found[name]


def test_render_rewrites_only_the_block_body_and_rejects_unknown_names(tmp_path):
    text = ("intro 1.23\n<!-- generated: mnist-sweep (whatever) -->\nstale 0.5\n<!-- end: mnist-sweep -->\n"
            "outro\n")
    out = docs_blocks.render(text, RESULTS, BENCH)
    assert out.startswith("intro 1.23\n<!-- generated: mnist-sweep (whatever) -->\n| compressor |")
    assert out.endswith("<!-- end: mnist-sweep -->\noutro\n") and "stale 0.5" not in out
    assert docs_blocks.render(out, RESULTS, BENCH) == out
    with pytest.raises(ValueError, match="generated block name must be one of"):
        docs_blocks.render("<!-- generated: nope -->\nx\n<!-- end: nope -->\n", RESULTS, BENCH)


def _study(root, name, steps, task="text", seeds=3, rtnq_nan=False, widths=(3,)):
    points = []
    for seed in range(seeds):
        for comp, bits, loss in [("none", 32, 2.5)] + [(c, b, v) for b in widths for c, v in
                                                       [("rtnq", 2.6), ("tnq", 2.4 + 0.001 * seed)]]:
            acc = 0.5
            if rtnq_nan and comp == "rtnq":
                loss = acc = float("nan")
            points.append((comp, bits, seed, steps, acc, loss))
    write_study(root / name, points, steps, task)


def test_a_longer_study_of_the_same_setting_replaces_the_shorter_one(tmp_path):
    _study(tmp_path, "text600_sgdm", 600)
    _study(tmp_path, "text2000_sgdm", 2000)
    _study(tmp_path, "text2000_adamw_broken", 2000, task="mnist_mlp", rtnq_nan=True)
    names = summary.studies(str(tmp_path))
    assert summary.headline(str(tmp_path), names) == ["text2000_adamw_broken", "text2000_sgdm"]
    table = summary.glance(str(tmp_path), summary.headline(str(tmp_path), names), 3, labels=True, backend=False)
    assert "| text, SGDM, 2000 steps (3), bpb ↓ | 2.5000 ± 0.0000 | 2.4010 ± 0.0010 | 2.6000 ± 0.0000 |" in table
    assert "600 steps" not in table
    default = summary.default_table(str(tmp_path), summary.headline(str(tmp_path), names))
    assert "| text, SGDM, 2000 steps (bpb) | -0.1000 ± 0.0000 (3); behind `tnq` (t -344.7) |" in default
    assert "**FAILED**: diverged (NaN) on seed(s) 0, 1, 2" in default  # the MLP study's rtnq diverged
    # every study, the shorter one included, keeps its verdict rows
    assert "| text600_sgdm | 3 | 3 |" in summary.verdicts(str(tmp_path), names, "rtnq")


def test_a_shorter_study_stays_for_the_widths_the_longer_one_lacks(tmp_path):
    _study(tmp_path, "text600_sgdm", 600, widths=(2, 3))
    _study(tmp_path, "text300_sgdm", 300, widths=(2, 3))
    _study(tmp_path, "text2000_sgdm", 2000)
    names = summary.studies(str(tmp_path))
    assert summary.headline(str(tmp_path), names) == ["text2000_sgdm", "text600_sgdm"]
    default = summary.default_table(str(tmp_path), summary.headline(str(tmp_path), names))
    assert "| text, SGDM, 600 steps (bpb) | -0.1000 ± 0.0000 (3); behind `tnq`" in default
    assert "| text, SGDM, 2000 steps (bpb) | – | -0.1000" in default and "300 steps" not in default


def _bench_rows(run, date, scale):
    """A 1-thread CPU run at n = 2^20 (reference) and 2^24: every op takes ``scale`` seconds per 2^24 elements."""
    rows = []
    for dt in ("float32", "bfloat16"):
        for op, impl in [("copy", "torch"), ("compress", "native"), ("compress", "reference"),
                         ("decompress", "native-out"), ("decompress_sum", "native-out")]:
            for bits in ((0,) if op == "copy" else (2, 3)):
                for n in (1 << 20, 1 << 24):
                    if impl == "reference" and n > 1 << 20:
                        continue
                    sec = scale * n / (1 << 24) * (50.0 if impl == "reference" else 1.0) * (0.5 if op == "copy"
                                                                                               else 1.0)
                    rows.append({"date": date, "run": run, "device_name": "CPU X", "op": op, "impl": impl,
                                 "dtype": dt, "bits": bits, "block_size": 2048, "n": n, "world": 4 if
                                 op == "decompress_sum" else 1, "threads": 1, "median_s": sec,
                                 "gbps": n * 8 / sec / 1e9, "loadavg_1m": 0.5, "torch": "2.13.0"})
    return rows


def test_the_cpu_table_comes_from_one_run(tmp_path):
    plot, _ = docs_blocks.bench_modules()
    rows = _bench_rows("old", "2026-11-01T00:00:00Z", 0.001) + _bench_rows("new", "2026-12-01T00:00:00Z", 0.002)
    with open(tmp_path / "cpu_throughput.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: str(v) for k, v in r.items()} for r in rows)
    text = docs_blocks.BLOCKS["cpu-kernels"](RESULTS, str(tmp_path))
    assert "Run `new`" in text and "`old`" not in text
    ns = 0.002 / (1 << 24) * 1e9
    assert f"| compress | {ns:.2f} / {ns:.2f} | 0.50 |" in text  # half the copy's bytes per second
    assert "decompress_sum, 4 payloads, into `out`" in text
    assert "Compress is 50× the reference at n = 2^20" in text
    assert plot.readme_table(rows, run="old").startswith("Run `old`")


def _with_tnq(rows, ratio, in_turn=False):
    """``rows`` plus "native-tnq" compress rows at 1/ratio of the default's time (the default takes ratio x tnq);
    ``in_turn``: as test_compress_default_vs_tnq writes them, with the default's "native-default" rows beside them
    (those at 2x the default's own "native" time, so a ratio taken from the wrong rows shows)."""
    extra = []
    for r in rows:
        if r["op"] == "compress" and r["impl"] == "native":
            sec = r["median_s"] / ratio
            extra.append({**r, "impl": "native-tnq", "median_s": sec, "gbps": r["n"] * 8 / sec / 1e9})
            if in_turn:
                extra.append({**r, "impl": "native-default", "median_s": 2 * r["median_s"],
                              "gbps": r["gbps"] / 2})
                extra[-2].update(median_s=2 * sec, gbps=r["n"] * 8 / (2 * sec) / 1e9)
    return rows + extra


def test_the_compress_runs_table_judges_every_run_that_timed_tnq():
    plot, _ = docs_blocks.bench_modules()
    behind = _with_tnq(_bench_rows("behind", "2026-12-03T00:00:00Z", 0.002), 1.0)
    for r in behind:
        if r["op"] == "copy" and r["dtype"] == "float32":
            r["gbps"] *= 2  # a copy twice as fast: fp32 compress at 0.25 of it, below the 0.30 target
    rows = (_bench_rows("old", "2026-11-01T00:00:00Z", 0.001)  # no tnq rows: not a line of the table
            + _with_tnq(_bench_rows("met", "2026-12-01T00:00:00Z", 0.002), 1.05)
            + _with_tnq(_bench_rows("slow", "2026-12-02T00:00:00Z", 0.002), 1.2) + behind
            + _with_tnq(_bench_rows("turn", "2026-12-04T00:00:00Z", 0.002), 1.08, in_turn=True))
    text = plot.compress_runs_table(rows)
    assert "| old |" not in text
    # compress at half the copy's GB/s: 0.50 of copy against targets 0.30 (fp32) and 0.20 (bf16)
    assert "| met | CPU X | 1 | 0.5-0.5 | 134 | 0.50–0.50 | 134 | 0.50–0.50 | 1.05–1.05 | after | yes |" in text
    assert "| slow | CPU X | 1 | 0.5-0.5 | 134 | 0.50–0.50 | 134 | 0.50–0.50 | 1.20–1.20 | after | no |" in text
    assert "| behind | CPU X | 1 | 0.5-0.5 | 268 | 0.25–0.25 | 134 | 0.50–0.50 | 1.00–1.00 | after | no |" in text
    # timed in turn: the ratio comes from the "native-default" rows (2x the default's "native" time, and so is tnq's)
    assert "| turn | CPU X | 1 | 0.5-0.5 | 134 | 0.50–0.50 | 134 | 0.50–0.50 | 1.08–1.08 | in turn | yes |" in text
    turn = [r for r in rows if r["run"] == "turn"]
    assert "takes 1.08× the time of tnq's (the paper's codebook), same n, timed call by call in turn" in \
        plot.readme_table(turn)


def test_e2e_vs_fp16_takes_every_run_and_link_that_timed_both():
    plot, _ = docs_blocks.bench_modules()

    def row(run, bw, comp, ms):
        return {"run": run, "bandwidth_gbit": bw, "link_gbit_measured": "9.5", "compressor": comp,
                "step_ms_median": str(ms), "loadavg_1m": "1.5"}
    rows = [row("a", "10", "fp16", 100), row("a", "10", "tnq-allgather-3", 75), row("a", "25", "fp16", 80),
            row("b", "10", "tnq-allgather-3", 50)]  # run b has no fp16 step: no line
    text = plot.e2e_vs_fp16(rows)
    assert "| a | 10 | 9.5 | 100 | 75 | 0.75 | 1.5–1.5 |" in text
    assert "| a | 25 |" not in text and "| b |" not in text


def test_horizon_reads_the_same_runs_at_each_step_and_ranks_them(tmp_path):
    # tnq ahead of fp32 at step 600, behind it at 2000; rtnq level with fp32 throughout
    curve = {"none": {600: 2.7, 2000: 2.2}, "tnq": {600: 2.6, 2000: 2.3}, "rtnq": {600: 2.7, 2000: 2.2}}
    write_study(tmp_path / "text2000_sgdm", [(comp, 32 if comp == "none" else 3, seed, step, 0.5,
                                             loss + 0.01 * seed * (comp == "tnq"))
                                            for seed in range(3) for comp, by_step in curve.items()
                                            for step, loss in by_step.items()], 2000)
    table = summary.horizon(str(tmp_path), "text2000_sgdm", (600, 2000))
    assert "| fp32 | 2.7000 ± 0.0000 (3) | 2.2000 ± 0.0000 (3) |" in table
    assert "| `tnq` − fp32 | +0.0900 ± 0.0100 (3) (t +15.6) | -0.1100 ± 0.0100 (3) (t -19.1) |" in table
    assert "| ranking (best first) | `tnq` > " in table and "| fp32 > `rtnq` > `tnq` |" in table
