"""Smoke tests of the benchmark tooling (benchmarks/): the shared helper, the α–β cost model, the end-to-end DDP and
time-to-accuracy scripts in their tiny loopback modes (no root, no tc) and the plot script on a small CSV. Seconds,
no timing asserted."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _helper as H  # noqa: E402
import cost_model  # noqa: E402
import plot  # noqa: E402
import tta_ddp  # noqa: E402


# ---- helper ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 4097])
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_op_bytes(dtype, n, bits):
    item = 4 if dtype == torch.float32 else 2
    p = 32 + (4 * math.ceil(n / 2048) + 15) // 16 * 16 + 4 * bits * math.ceil(n / 32)
    assert H.op_bytes("copy", n, dtype) == (n * item, n * item)
    assert H.op_bytes("compress", n, dtype, bits=bits) == (n * item, p)
    assert H.op_bytes("decompress", n, dtype, bits=bits) == (p, n * item)
    assert H.op_bytes("decompress_sum", n, dtype, bits=bits, world=3) == (3 * p, n * item)


def test_op_bytes_rejects_unknown_op():
    with pytest.raises(ValueError, match="op must be one of"):
        H.op_bytes("transpose", 10, torch.float32)


def test_time_fn_counts_calls_and_bounds_repeats():
    calls = []
    t = H.time_fn(lambda: calls.append(1), warmup=2, repeat=4)
    assert len(calls) == 6 and t.repeats == 4 and 0 <= t.min <= t.median
    with pytest.raises(ValueError, match="repeat"):
        H.time_fn(lambda: None, repeat=0)


def test_append_csv_widens_header(tmp_path):
    path = tmp_path / "r.csv"
    H.append_csv(path, [{"a": 1, "b": 2.5}])
    H.append_csv(path, [{"a": 3, "b": math.nan}])
    H.append_csv(path, [{"a": 4, "c": torch.bfloat16}], columns=["c"])
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["c", "a", "b"]
    assert [(r["a"], r["b"], r["c"]) for r in rows] == [("1", "2.5", ""), ("3", "", ""), ("4", "", "bfloat16")]


def test_append_csv_marks_rows_before_the_generator_was_recorded(tmp_path):
    path = tmp_path / "r.csv"
    H.append_csv(path, [{"op": "compress", "gbps": 1.0}])  # a row of a file written before the "rng" column
    H.append_csv(path, [{"op": "compress", "gbps": 2.0, "rng": "v1.2"}])
    assert [r["rng"] for r in H.read_csv(path)] == ["v1.1", "v1.2"]


def test_environment_names_hardware_and_versions():
    env = H.environment("cpu")
    assert env["rng"] == "v1.2"
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cpu_cores"] >= 1
    assert env["date"].endswith("Z") and env["tnq_native"]


# ---- cost model ----

def test_cost_model_traffic():
    k = cost_model.Kernels(None, "cuda")
    n, a, b = 100e6, 10e-6, 100e9 / 8

    def wire(comp, bits, p):
        return cost_model.step(comp, bits, n, p, a, b, 0.1, k)["wire_bytes_per_rank"]
    # ring allreduce of fp32 sends 2(p-1)/p · 4n bytes per rank; fp16 half of that
    assert wire("allreduce", 32, 8) == pytest.approx(2 * 7 / 8 * 4 * n, rel=1e-9)
    assert wire("fp16", 16, 8) == pytest.approx(wire("allreduce", 32, 8) / 2, rel=1e-9)
    # allgather traffic grows with p; two_phase stays within ~2 payloads per rank at any p (docs/integrations.md)
    assert wire("tnq-allgather", 3, 1024) > 100 * wire("tnq-allgather", 3, 8)
    assert wire("tnq-two_phase", 3, 1024) < 2.2 * n * 3 / 8
    assert wire("tnq-two_phase", 3, 1024) < wire("allreduce", 32, 1024) / 9


def test_cost_model_cli_writes_csv_and_table(tmp_path, capsys):
    kernels = tmp_path / "k.csv"
    rows = [{"run": "r1", "device": "cpu", "op": op, "impl": "native", "dtype": "float32", "bits": b, "n": 1 << 20,
             "gbps": 5.0} for op in ("compress", "decompress", "decompress_sum") for b in (2, 3, 4)]
    rows.append({"run": "r1", "device": "cpu", "op": "copy", "impl": "torch", "dtype": "float32", "bits": 0,
                 "n": 1 << 20, "gbps": 20.0})
    H.append_csv(kernels, rows, H.THROUGHPUT_COLUMNS)
    out = tmp_path / "cm.csv"
    assert cost_model.main(["--kernels", str(kernels), "--device", "cpu", "--params", "1e6", "--gbit", "10",
                            "--worlds", "8,1024", "--csv", str(out)]) == 0
    got = H.read_csv(out)
    assert len(got) == 2 * 17 and {r["kernels_measured"] for r in got} == {"True"}
    # FSDP2 rows: the hierarchical mode's slow-link bytes are ~1/k of the flat mode's (k = 8 ranks per node)
    wire = {r["compressor"] + r["bits"]: float(r["wire_bytes_per_rank"]) for r in got if r["world"] == "1024"}
    assert 7.5 < wire["fsdp-tnq3"] / wire["fsdp-tnqh3"] < 8.5, wire
    assert wire["fsdp-fp32" + "32"] == pytest.approx(2 * wire["fsdp-bf16" + "16"], rel=1e-4)
    assert {r["kernel_source"] for r in got} == {"measured: k.csv (cpu: cpu)"}
    assert "tnq-two_phase b=3" in capsys.readouterr().out
    with pytest.raises(ValueError, match="bits=5"):
        cost_model.main(["--kernels", str(kernels), "--device", "cpu", "--bits", "5", "--csv", ""])


def test_cost_model_labels_assumed_kernels_and_runs_sources_apart(tmp_path):
    kernels = tmp_path / "k.csv"
    H.append_csv(kernels, [{"run": "r1", "device": "cpu", "op": op, "impl": "native", "dtype": "float32", "bits": 3,
                            "n": 1 << 20, "threads": 1, "gbps": 5.0} for op in ("copy", "compress", "decompress")])
    out = tmp_path / "cm.csv"
    assert cost_model.main(["--kernels", f"{kernels},assumed-gpu", "--device", "cpu", "--params", "1e6", "--gbit",
                            "10", "--worlds", "8", "--bits", "3", "--assume-fraction", "0.5", "--csv",
                            str(out)]) == 0
    got = H.read_csv(out)
    by = {r["kernels_measured"]: r["kernel_source"] for r in got}
    assert by["True"].startswith("measured: k.csv") and "1 threads" in by["True"]
    # an assumption must read as one wherever the number travels (CSV, table, plot title)
    assert by["False"].startswith("ASSUMED") and "50% of a 2600 GB/s" in by["False"]
    assert len(got) == 2 * 9
    k = cost_model.Kernels.assumed(1000.0, 0.5)
    assert k.gbps("compress", 3) == 500.0 and k.gbps("copy", 0) == 1000.0 and not k.measured
    with pytest.raises(ValueError, match="fraction"):
        cost_model.Kernels.assumed(1000.0, 1.5)
    with pytest.raises(ValueError, match="--kernels 'nowhere.csv'.*accepted: gpu, cpu, assumed-gpu"):
        cost_model.main(["--kernels", "nowhere.csv", "--csv", ""])


# ---- end to end (tiny, loopback, no tc) ----

@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_e2e_ddp_tiny_loopback(tmp_path):
    out = tmp_path / "e2e.csv"
    proc = subprocess.run([sys.executable, str(BENCH / "e2e_ddp.py"), "--net", "loopback", "--tiny",
                           "--csv", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| loopback")  # the table comes last
    rows = {r["compressor"]: r for r in H.read_csv(out)}
    assert set(rows) == {"compute-only", "allreduce", "fp16", "powersgd4", "tnq-allgather-3", "tnq-two_phase-3"}
    for name, r in rows.items():
        if name.startswith("tnq") and r["note"].startswith("skipped"):
            pytest.fail(f"{name} was skipped: {r['note']}")
        assert float(r["step_ms_median"]) > 0 and r["in_sync"] == "True", (name, r)
    assert float(rows["allreduce"]["speedup_vs_allreduce"]) == 1.0


# ---- time to accuracy (tiny, loopback, no tc) ----

def test_tta_target_rule_and_batches():
    curve = [{"step": s, "test_accuracy": a} for s, a in ((0, 0.1), (10, 0.9), (20, 0.9537), (30, 0.97))]
    other = [{"step": s, "test_accuracy": a} for s, a in ((0, 0.1), (25, 0.9612), (30, 0.98))]
    # the first evaluation at or after half of 40 steps: 0.9537 and 0.9612; the lower one, down to 0.005
    assert tta_ddp.calibrated_target({0: curve, 1: other}, 40) == (0.95, {0: 0.9537, 1: 0.9612})
    with pytest.raises(ValueError, match="before 0.5 x --max-steps 100"):
        tta_ddp.calibrated_target({0: curve}, 100)
    # the two ranks' shares of a global batch are disjoint halves of it; seeds and epochs reorder the data
    a, b = (tta_ddp.batch_indices(3, 0, 8, 64, r, 2) for r in (0, 1))
    assert len(a) == len(b) == 4 and not set(a.tolist()) & set(b.tolist())
    assert not torch.equal(a, tta_ddp.batch_indices(3, 1, 8, 64, 0, 2))
    assert not torch.equal(a, tta_ddp.batch_indices(3 + 64 // 8, 0, 8, 64, 0, 2))


@pytest.mark.parametrize("flags, message", [
    (["--compressors", "allreduce,tnq-9"], "--compressors: 'tnq-9' is not a compressor; accepted: allreduce"),
    (["--compressors", "qsgd"], "--compressors: 'qsgd' is not a compressor"),
    (["--bandwidths", "1,-10"], "--bandwidths must be comma-separated Gbit/s >= 0"),
    (["--seeds", "0,x"], "--seeds and --hidden take comma-separated integers"),
    (["--target", "97"], "--target must be a test accuracy in (0, 1], got 97"),
    (["--batch", "31"], "--batch (the global batch, split over 2 ranks) must be even, got 31"),
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
])
def test_tta_refuses_bad_flags(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        tta_ddp.main(["--net", "loopback", "--tiny", "--csv", str(tmp_path / "t.csv")] + flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_tta_ddp_tiny_loopback(tmp_path, capsys):
    """--calibrate fixes the target from fp32 by the rule, a run then reads it, stops each compressor at the first
    evaluation at or above it, and writes the rows, curves, table and plot."""
    out = tmp_path / "tta_ddp.csv"
    base = ["--net", "loopback", "--tiny", "--seeds", "0", "--quiet", "--csv", str(out)]
    with pytest.raises(SystemExit):  # no target yet: the run is refused before any process starts
        tta_ddp.main(base)
    assert "run --calibrate first" in capsys.readouterr().err
    cmd = [sys.executable, str(BENCH / "tta_ddp.py")] + base
    proc = subprocess.run(cmd + ["--calibrate"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = __import__("json").loads((tmp_path / "tta_ddp_target.json").read_text())
    cal = [c for c in H.read_csv(tmp_path / "tta_ddp_curves.csv") if c["mode"] == "calibrate"]
    assert int(cal[-1]["step"]) == 40  # calibration runs fp32 to --max-steps
    at = next(float(c["test_accuracy"]) for c in cal if int(c["step"]) >= 20)
    assert saved["target"] == pytest.approx(math.floor(at / 0.005 + 1e-9) * 0.005) and 0.2 < saved["target"] < 1
    with pytest.raises(SystemExit):  # a target calibrated with other flags is refused
        tta_ddp.main(base + ["--lr", "0.1"])
    err = capsys.readouterr().err
    assert "calibrated with other flags" in err and "'lr': (0.05, 0.1)" in err

    proc = subprocess.run(cmd + ["--compressors", "allreduce,tnq-3"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["compressor"]: r for r in H.read_csv(out) if r["mode"] == "run"}
    assert set(rows) == {"allreduce", "tnq-3"}
    assert rows["tnq-3"]["codebook"] == "rtnq" and rows["tnq-3"]["bits"] == "3"  # the library's default state
    for name, r in rows.items():
        assert r["reached"] == "True" and r["in_sync"] == "True", (name, r)
        assert float(r["target"]) == saved["target"] and int(r["steps"]) == int(r["steps_to_target"]) <= 40
        assert float(r["final_accuracy"]) >= saved["target"] and float(r["seconds_to_target"]) > 0
        pts = [c for c in H.read_csv(tmp_path / "tta_ddp_curves.csv") if c["mode"] == "run" and c["compressor"] == name]
        accs = [float(c["test_accuracy"]) for c in pts]
        assert accs[-1] >= saved["target"] > max(accs[:-1])  # stopped at the first evaluation at the target
    # same seed, same batches, deterministic all-reduce: fp32 reaches the target where calibration said it would
    assert int(rows["allreduce"]["steps_to_target"]) <= 20
    assert (tmp_path / "tta_ddp.png").stat().st_size > 1000
    md = (tmp_path / "tta_ddp.md").read_text()
    assert "| loopback |" in md and "tnq-3 (rtnq) | 1/1 |" in md
    # plot.py rebuilds the same table from the CSVs (calibration rows left out)
    assert plot.main(["--results", str(tmp_path), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "tta_ddp.md").read_text() == md


# ---- plots ----

def test_plot_small_csvs(tmp_path):
    rows = []
    for n in (1 << 10, 1 << 12):
        rows.append({"run": "r2", "device": "cpu", "op": "copy", "impl": "torch", "dtype": "float32", "bits": 0,
                     "n": n, "gbps": 10.0})
        for op in ("compress", "decompress", "decompress_sum"):
            rows.append({"run": "r2", "device": "cpu", "op": op, "impl": "native", "dtype": "float32", "bits": 3,
                         "n": n, "gbps": 4.0})
            rows.append({"run": "r2", "device": "cpu", "op": op, "impl": "reference", "dtype": "float32",
                         "bits": 3, "n": n, "gbps": 0.1})
    H.append_csv(tmp_path / "cpu_throughput.csv", [{**r, "run": "r1", "gbps": 99.0} for r in rows] + rows)
    H.append_csv(tmp_path / "e2e_ddp.csv", [
        {"run": "e1", "bandwidth_gbit": bw, "compressor": c, "step_ms_median": ms, "params": 1e6, "world": 2}
        for bw in (1, 10) for c, ms in (("allreduce", 100.0 / bw), ("tnq-allgather-3", 20.0))])
    cost_model.main(["--kernels", "assumed-gpu", "--params", "1e6", "--gbit", "10", "--worlds", "8,16", "--csv",
                     str(tmp_path / "cost_model.csv")])
    assert plot.main(["--results", str(tmp_path)]) == 0
    for name in ("cpu_throughput.png", "e2e_ddp.png", "cost_model.png"):
        assert (tmp_path / name).stat().st_size > 1000
    md = (tmp_path / "cpu_throughput.md").read_text()
    # only the latest run is tabulated: native/reference = 4.0/0.1, native/copy = 0.4
    assert "| compress | float32 | 3 | 4 | 0.1 | 40 | 10 | 0.4 |" in md and "99" not in md
    assert "tnq-allgather-3" in (tmp_path / "e2e_ddp.md").read_text()
    assert "ASSUMED GPU" in (tmp_path / "cost_model.md").read_text()
    # --run picks an older run where a CSV holds it
    assert plot.main(["--results", str(tmp_path), "--run", "r1"]) == 0
    assert "| 99 |" in (tmp_path / "cpu_throughput.md").read_text()


def test_plot_tabulates_each_thread_count(tmp_path):
    rows = [{"run": run, "device": "cpu", "op": op, "impl": impl, "dtype": "float32", "bits": 3, "n": 1 << 12,
             "threads": t, "gbps": g * t} for run, t in (("a", 2), ("b", 1))
            for op, impl, g in (("copy", "torch", 10.0), ("compress", "native", 4.0), ("compress", "reference", 0.1))]
    H.append_csv(tmp_path / "cpu_throughput.csv", rows)
    assert plot.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "cpu_throughput.md").read_text()
    assert md.index("2 threads") < md.index("1 threads") and "run a" in md and "run b" in md


def test_bench_gpu_smoke_rows(tmp_path):
    """bench_gpu.py --smoke (CPU, Triton interpreter): every backend/peer gets a row per op, byte counts are the
    traffic each one must move, and a backend that cannot run (C++ CUDA on a CPU tensor) is reported, not raised."""
    out = tmp_path / "g.csv"
    cmd = [sys.executable, str(BENCH / "bench_gpu.py"), "--smoke", "--bits", "3", "--dtypes", "float32",
           "--log2n", "10", "--backends", "triton", "cuda", "--peers", "fp16_cast", "bnb_nf4", "--world", "2",
           "--csv", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {(r["op"], r["impl"]): r for r in H.read_csv(out)}
    n, p = 1024, H.payload_bytes(1024, 3, 2048)
    for op in ("compress", "decompress", "decompress_sum"):
        assert rows[(op, "triton")]["status"] == "ok" and float(rows[(op, "triton")]["gbps"]) > 0
        assert rows[(op, "cuda")]["status"].startswith("unavailable: ValueError")
    assert (int(rows[("decompress_sum", "triton")]["bytes_read"]), int(rows[("decompress_sum", "triton")]["world"])) \
        == (2 * p, 2)
    cast = rows[("compress", "fp16_cast")]
    assert cast["status"] == "ok" and (int(cast["bytes_read"]), int(cast["bytes_written"])) == (4 * n, 2 * n)
    nf4 = rows[("compress", "bnb_nf4")]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert nf4["status"].startswith("unavailable: ModuleNotFoundError")
    else:
        assert nf4["status"] == "ok" and int(nf4["bytes_written"]) == n // 2 + 4 * (n // 64)
    assert "no verdict" in res.stdout  # no CUDA row ran, so no default-backend verdict


def test_plot_latest_run_is_the_newest_by_date_not_by_run_id():
    # the run-id format changed ("cpu-2026…" then "2026…"): the newer id sorts first as a string
    rows = [{"run": "cpu-20261122T193218", "date": "2026-11-22T19:32:18", "gbps": 1.0},
            {"run": "20261130T044705", "date": "2026-11-30T04:47:05", "gbps": 2.0},
            {"run": "20261130T044705", "date": "2026-11-30T04:48:00", "gbps": 3.0}]
    assert [r["gbps"] for r in plot.latest_run(rows)] == [2.0, 3.0]
    assert [r["gbps"] for r in plot.latest_run(rows, pick=("cpu-20261122T193218",))] == [1.0]
    assert plot.latest_run(rows, all_runs=True) == rows
