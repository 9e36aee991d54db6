"""One command for a CUDA machine: build, test, sanitize, capture and benchmark the CUDA and Triton backends, and
write everything into one results folder ready to commit.

    make gpu-check NO_VENV=1                       # = python3 benchmarks/gpu_check.py with the machine's own torch
    python benchmarks/gpu_check.py --out DIR       # results folder (default: benchmarks/results/gpu/<date>-<gpu>/)
    python benchmarks/gpu_check.py --skip-build --quick-bench   # options: see --help

Steps, each reported as ok / FAILED / skipped (with why):
  1. build     `python -m pip install --no-build-isolation --no-deps -e .` (offline, against the torch of the
               python running this; falls back to `python setup.py build_ext --inplace`), then checks in a fresh
               process that every tnq op has the extension's C++ CUDA kernel (not the Triton forwarder).
  2. pytest    TNQ_TEST_CUDA=1 (Triton compiles for the GPU instead of the interpreter): the CUDA-vs-reference and
               Triton-vs-reference tests, the review findings (tests/test_gpu_review.py), API, CPU backend,
               constants (--full-tests: the whole suite).
  3. graph     the CUDA-graph capture test alone (compress / decompress / decompress_sum captured with static
               shapes and replayed on new data, Triton and CUDA), so its verdict stands on its own line.
  4. sanitize  compute-sanitizer memcheck and racecheck on a small run of every C++ CUDA op (incl. the _into ops,
               a graph-captured decode, B >= n), torch's caching allocator off so an out-of-bounds access hits the
               end of a real allocation.
  5. bench     benchmarks/bench_gpu.py: Triton, CUDA, the reference under torch.compile, and the peers: GB/s (read +
               written), % of a device copy, b = 2..5, fp32/bf16, n = 2^20..2^28, L2 flushed, do_bench median.
The folder gets gpu_check.log (everything), build.log, pytest.log, graph.log, sanitizer.log, bench.log,
bench_gpu.csv and SUMMARY.md: GPU, driver, versions, date, the step summary in plain words, the side-by-side
Triton | CUDA table with the faster backend per op (the default for CUDA tensors should follow it: ops.py
registers the C++ kernels when built), and the roofline prediction to compare against (docs/gpu-roofline.md).
Without a CUDA device it still runs the build and the CPU-side tests, says "no CUDA device" and exits with 3.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TESTS = ["tests/test_cuda_backend.py", "tests/test_cuda_build.py", "tests/test_cuda_host.py", "tests/test_triton.py",
         "tests/test_gpu_review.py", "tests/test_api.py", "tests/test_cpu_backend.py", "tests/test_constants.py"]
GRAPH_TEST = "tests/test_gpu_review.py::test_cuda_graph_capture_compress_decompress_sum"
NO_CUDA_EXIT = 3

SANITIZE_SCRIPT = r"""
import os, torch, tnq_kernels
from tnq_kernels import ops
assert not (set(ops.SCHEMAS) - ops.NATIVE_CUDA_OPS), "extension built without the CUDA kernels"
torch.manual_seed(0)
quick = os.environ.get("TNQ_SANITIZE_QUICK") == "1"  # racecheck is ~100x slower: fewer cases, every kernel
for n in ((33, 40000) if quick else (1, 31, 33, 4097, 40000)):
    for dtype in ((torch.float32, torch.bfloat16) if quick else (torch.float32, torch.bfloat16, torch.float16)):
        x = torch.randn(n, device="cuda").to(dtype)
        x_odd = torch.randn(n + 1, device="cuda").to(dtype)[1:]  # misaligned: the binding copies it
        for bits in ((1, 3) if quick else (1, 2, 3, 5, 8)):
            for bs in (0, 32, 2048, 16416):
                p = tnq_kernels.compress(x, bits, bs, seed=1, backend="cuda")
                tnq_kernels.compress(x_odd, bits, bs, seed=1, backend="cuda")
                y = tnq_kernels.decompress(p, backend="cuda")
                tnq_kernels.decompress_sum([p] * 18, [0.5] * 18, backend="cuda")
                tnq_kernels.decompress_sum([p, p], None, dtype=torch.float16, backend="cuda")
                s, z = tnq_kernels.scale_truncate(x, bits, bs, backend="cuda")
                c = tnq_kernels.quantize(z, bits, seed=3, backend="cuda")
                w = tnq_kernels.pack(c, bits, backend="cuda")
                tnq_kernels.unpack(w, bits, n, backend="cuda")
                out = torch.empty(n + 1, dtype=dtype, device="cuda")
                torch.ops.tnq.decompress_into(p, out[:n])
                torch.ops.tnq.decompress_into(p, out[1:])  # misaligned destination
                torch.ops.tnq.decompress_sum_into([p] * 3, [0.5] * 3, out[:n])
        tnq_kernels.compress(x, 3, 1 << 30, seed=1, backend="cuda")  # B >= n: one block
# decode while a CUDA graph is captured: the header is parsed on the device
p = tnq_kernels.compress(torch.randn(5000, device="cuda"), 3, 96, seed=1, backend="cuda")
bad = p.clone(); bad[5] = 9
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    torch.ops.tnq.decompress(p, [5000], torch.float32)
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = torch.ops.tnq.decompress(p, [5000], torch.bfloat16)
    ys = torch.ops.tnq.decompress_sum([p, p, bad], [0.5, 0.5, 1.0], [5000], torch.float16)
g.replay()
torch.cuda.synchronize()
assert torch.isnan(ys).all() and not torch.isnan(y).any()
print("sanitize run: done")
print("sanitize run: done")
"""


class Log:
    """Prints and, when an output folder is given, appends to gpu_check.log there."""

    def __init__(self, out: Path | None):
        self.out = out
        self.file = open(out / "gpu_check.log", "w") if out else None

    def __call__(self, *parts):
        msg = " ".join(str(p) for p in parts)
        print(msg, flush=True)
        if self.file:
            self.file.write(msg + "\n")
            self.file.flush()


def run(cmd, log: Log, name: str, env=None, timeout=None) -> tuple[int, str]:
    """Run a command from the repository root; its output goes to the console and to <out>/<name>.log."""
    log(f"$ {' '.join(cmd)}")
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, (e.stdout or b"").decode(errors="replace") + f"\n(timed out after {timeout} s)"
    except FileNotFoundError as e:
        rc, text = 127, str(e)
    if log.out:
        with open(log.out / f"{name}.log", "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}\n(rc={rc}, {time.time() - t0:.0f} s)\n")
    tail = text.strip().splitlines()[-25:]
    for ln in tail:
        log("   ", ln)
    log(f"   (rc={rc}, {time.time() - t0:.0f} s)")
    return rc, text


def environment() -> dict:
    info = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch cuda"] = str(torch.version.cuda)
        info["cuda device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        if torch.cuda.is_available():
            cap = torch.cuda.get_device_capability(0)
            info["capability"] = f"sm_{cap[0]}{cap[1]}"
    except Exception as e:  # torch itself broken: report, the steps will fail with details
        info["torch"] = f"import failed: {e}"
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:
        info["triton"] = f"not importable ({type(e).__name__})"
    sys.path.insert(0, str(ROOT))
    import build_cuda
    nvcc = build_cuda.find_nvcc()
    if nvcc:
        v = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        rel = [ln for ln in v if "release" in ln]
        info["nvcc"] = f"{nvcc}: {(rel or v or ['?'])[-1]}"
    else:
        info["nvcc"] = "not found"
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        info["nvidia-smi"] = r.stdout.strip().replace("\n", " | ") or r.stderr.strip()
    return info


def has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def step_build(log: Log) -> str:
    env = dict(os.environ)
    rc, text = run([PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."], log, "build",
                   env=env)
    if rc != 0:
        log("pip install -e failed; trying `setup.py build_ext --inplace`")
        rc, text = run([PY, "setup.py", "build_ext", "--inplace"], log, "build", env=env)
        if rc != 0:
            return "FAILED (see build.log)"
    for ln in text.splitlines():
        if "tnq build" in ln:
            log("   ", ln.strip())
    probe = ("from tnq_kernels import ops\n"
             "print('native_error', ops.native_error)\n"
             "print('native_cuda', sorted(ops.NATIVE_CUDA_OPS))\n"
             "print('missing', sorted(set(ops.SCHEMAS) - ops.NATIVE_CUDA_OPS))\n")
    rc, text = run([PY, "-c", probe], log, "build")
    if rc != 0:
        return "FAILED: the built extension does not import"
    if "missing []" not in text:
        return "FAILED: built without the C++ CUDA kernels (is nvcc on PATH / CUDA_HOME set?)"
    return "ok"


def step_pytest(log: Log, full: bool, cuda: bool) -> str:
    env = dict(os.environ)
    targets = ["tests"] if full else [t for t in TESTS if (ROOT / t).exists()]
    if cuda:
        env["TNQ_TEST_CUDA"] = "1"  # conftest.py then leaves TRITON_INTERPRET unset: Triton compiles for the GPU
        env.pop("TRITON_INTERPRET", None)
    elif not full:
        # no GPU: the CUDA tests skip themselves; the Triton tests would only rerun CI's interpreter pass
        targets = [t for t in targets if t != "tests/test_triton.py"]
    rc, _ = run([PY, "-m", "pytest", "-q", "-rs", *targets], log, "pytest", env=env)
    return "ok" if rc == 0 else f"FAILED (pytest rc={rc}, see pytest.log)"


def step_graph(log: Log) -> str:
    env = dict(os.environ, TNQ_TEST_CUDA="1")
    env.pop("TRITON_INTERPRET", None)
    rc, text = run([PY, "-m", "pytest", "-q", "-rs", GRAPH_TEST], log, "graph", env=env)
    if rc == 0 and " passed" in text and "skipped" not in text:
        return "ok (Triton and CUDA captured and replayed, results equal the reference)"
    return f"FAILED (rc={rc}, see graph.log)" if rc else "FAILED: skipped (see graph.log)"


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    sys.path.insert(0, str(ROOT))
    import build_cuda
    nvcc = build_cuda.find_nvcc()
    homes = [build_cuda.cuda_home_of(nvcc)] if nvcc else []
    homes += [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for h in homes:
        for sub in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer"):
            p = os.path.join(h, sub)
            if h and os.path.isfile(p):
                return p
    return None


def step_sanitize(log: Log, tools: list[str]) -> str:
    tool = find_sanitizer()
    if tool is None:
        return "skipped: no compute-sanitizer on PATH or in the CUDA toolkit"
    # without the caching allocator each tensor is its own cudaMalloc, so reading past a tensor is reported
    results = []
    for t in tools:
        env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", TNQ_SANITIZE_QUICK="1" if t != "memcheck" else "0")
        rc, text = run([tool, "--tool", t, "--error-exitcode", "1", "--target-processes", "all", PY, "-c",
                        SANITIZE_SCRIPT], log, "sanitizer", env=env, timeout=1800)
        ok = rc == 0 and "sanitize run: done" in text
        results.append(f"{t} {'ok' if ok else 'FAILED'}")
    return ", ".join(results) if all(r.endswith("ok") for r in results) else "FAILED: " + ", ".join(results)


def bnb_env(log: Log, out: Path | None) -> dict | None:
    """An environment in which bitsandbytes imports, for the benchmark's peer rows: None when it already imports or
    no wheel was carried; otherwise the carried wheel ($TNQ_BNB_WHEEL, or shared/wheels/bitsandbytes-*.whl) is
    unpacked with pip --no-deps --no-index into a scratch folder put on PYTHONPATH (nothing is installed into the
    machine's python)."""
    probe = subprocess.run([PY, "-c", "import bitsandbytes"], capture_output=True)
    if probe.returncode == 0:
        return None
    wheels = [os.environ["TNQ_BNB_WHEEL"]] if os.environ.get("TNQ_BNB_WHEEL") else \
        sorted(str(p) for p in (ROOT / "shared" / "wheels").glob("bitsandbytes-*.whl"))
    if not wheels:
        log("   bitsandbytes: not installed and no wheel carried (TNQ_BNB_WHEEL or shared/wheels/): its rows say so")
        return None
    target = (out or ROOT / "build") / "pydeps"
    rc, _ = run([PY, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target),
                 wheels[-1]], log, "bench")
    if rc != 0:
        return None
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p))


def step_bench(log: Log, out: Path | None, quick: bool) -> tuple[str, Path | None]:
    csv = (out / "bench_gpu.csv") if out else ROOT / "benchmarks" / "results" / "bench_gpu.csv"
    cmd = [PY, "benchmarks/bench_gpu.py", "--csv", str(csv)]  # default backends and peers
    if quick:
        cmd += ["--log2n", "20", "24", "--bits", "3"]
    rc, _ = run(cmd, log, "bench", env=bnb_env(log, out))
    # long blocks take the tiled path (B = 2^20 at n = 2^24: 1024 tiles); one short run shows it keeps up
    csv_big = csv.with_name(csv.stem + "_B2e20.csv")
    rc_big, _ = run([PY, "benchmarks/bench_gpu.py", "--csv", str(csv_big), "--block-size", str(1 << 20),
                     "--log2n", "24", "--bits", "3", "--backends", "triton", "cuda", "--peers",
                     "--ops", "compress"], log, "bench")
    status = "ok" if rc == 0 and rc_big == 0 else f"FAILED (rc={rc}/{rc_big}, see bench.log)"
    return status, (csv if csv.exists() else None)


def default_out(cuda: bool) -> Path:
    """benchmarks/results/gpu/<UTC date>-<gpu name>/ (or -nocuda): one folder per run, ready to commit."""
    name = "nocuda"
    if cuda:
        import torch
        name = "".join(ch if ch.isalnum() else "-" for ch in torch.cuda.get_device_name(0)).strip("-").lower()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    return ROOT / "benchmarks" / "results" / "gpu" / f"{stamp}-{name}"


def plain_summary(summary: dict, cuda: bool) -> str:
    if not cuda:
        return ("No CUDA device: only the build and the CPU-side tests ran. Nothing here says anything about GPU "
                "correctness or speed.")
    failed = [k for k, v in summary.items() if v.startswith("FAILED")]
    skipped = [k for k, v in summary.items() if v.startswith("skipped")]
    words = ["Every step passed." if not failed else f"Failed: {', '.join(failed)} (see the logs)."]
    if skipped:
        words.append(f"Skipped: {', '.join(skipped)}.")
    words.append("Correctness: the CUDA and Triton kernels were compared with the pure-PyTorch reference byte for "
                 "byte on this GPU (pytest step); memory errors and shared-memory races were looked for by "
                 "compute-sanitizer; CUDA-graph capture was replayed on new data. Speed: the table below, one run.")
    return " ".join(words)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for logs and CSV (default: $OUT)")
    ap.add_argument("--skip-build", action="store_true", help="use the extension already built in the tree")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--full-tests", action="store_true", help="the whole test suite, not just the GPU-relevant files")
    ap.add_argument("--skip-sanitizer", action="store_true")
    ap.add_argument("--no-racecheck", action="store_true", help="memcheck only (racecheck is slow)")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--quick-bench", action="store_true", help="n = 2^20, 2^24 and b = 3 only")
    ap.add_argument("--no-out", action="store_true", help="print only, write no results folder")
    args = ap.parse_args(argv)
    cuda = has_cuda()
    out = None if args.no_out else Path(args.out).resolve() if args.out else default_out(cuda)
    if out:
        out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    log(f"# gpu_check: {ROOT} with {PY}" + ("" if cuda else "  -- no CUDA device: GPU steps will be skipped"))
    summary = {}
    summary["build"] = "skipped: --skip-build" if args.skip_build else step_build(log)
    built = not summary["build"].startswith("FAILED")
    if args.skip_tests:
        summary["pytest"] = "skipped: --skip-tests"
    elif not built:
        summary["pytest"] = "skipped: build failed"
    else:
        summary["pytest"] = step_pytest(log, args.full_tests, cuda)
        if not cuda and summary["pytest"] == "ok":
            summary["pytest"] = "ok (CPU-side only: CUDA tests skipped, no CUDA device)"
    if not cuda:
        summary["graph"] = "skipped: no CUDA device"
    elif not built:
        summary["graph"] = "skipped: build failed"
    else:
        summary["graph"] = step_graph(log)
    if args.skip_sanitizer:
        summary["sanitizer"] = "skipped: --skip-sanitizer"
    elif not cuda:
        summary["sanitizer"] = "skipped: no CUDA device"
    elif not built:
        summary["sanitizer"] = "skipped: build failed"
    else:
        summary["sanitizer"] = step_sanitize(log, ["memcheck"] + ([] if args.no_racecheck else ["racecheck"]))
    csv = None
    if args.skip_bench:
        summary["bench"] = "skipped: --skip-bench"
    elif not cuda:
        summary["bench"] = "skipped: no CUDA device"
    else:
        summary["bench"], csv = step_bench(log, out, args.quick_bench)

    # the report: environment, step summary and the table come last so they are what a reader sees
    env_info = environment()
    report = ["# gpu_check results", ""]
    report += [f"- {k}: {v}" for k, v in env_info.items()]
    report += ["", "## Steps", ""] + [f"- {k}: {v}" for k, v in summary.items()]
    report += ["", "## In plain words", "", plain_summary(summary, cuda)]
    if csv is not None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import _helper as H
        import bench_gpu
        rows = H.read_csv(csv)
        if rows:
            run_id = rows[-1].get("run")
            rows = [r for r in rows if r.get("run") == run_id]  # this session's rows only
        report += ["", "## Triton | CUDA (GB/s = bytes read + written per second; %copy of a device copy)", "",
                   bench_gpu.side_by_side(rows)]
        big = csv.with_name(csv.stem + "_B2e20.csv")
        if big.exists():
            rows = H.read_csv(big)
            rows = [r for r in rows if r.get("run") == rows[-1].get("run")] if rows else rows
            report += ["", "## Long blocks: B = 2^20, n = 2^24, b = 3 (the tiled paths)", "",
                       bench_gpu.side_by_side(rows)]
    report += ["", "Compare with the prediction in docs/gpu-roofline.md (benchmarks/roofline.py)."]
    log("")
    for ln in report:
        log(ln)
    if out:
        (out / "SUMMARY.md").write_text("\n".join(report) + "\n")
        log(f"# results folder (commit it): {out}")
    if not cuda:
        log("no CUDA device: the build and CPU-side checks ran; the GPU checks did not")
        return NO_CUDA_EXIT
    return 0 if all(not v.startswith("FAILED") for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
