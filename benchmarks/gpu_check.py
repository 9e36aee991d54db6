"""One command for a CUDA machine: build, test, sanitize and benchmark the CUDA and Triton backends.

    python benchmarks/gpu_check.py                 # everything, with the machine's own python/torch (no venv)
    OUT=/some/dir python benchmarks/gpu_check.py   # also write gpu_check.log, pytest.log, sanitizer.log,
                                                   # bench.log and bench_gpu.csv there
    python benchmarks/gpu_check.py --skip-build --quick-bench   # options: see --help

Steps, each reported as ok / FAILED / skipped (with why):
  1. build    `python -m pip install --no-build-isolation --no-deps -e .` (offline; falls back to
              `python setup.py build_ext --inplace`), then checks in a fresh process that every tnq op has the
              extension's C++ CUDA kernel (not the Triton forwarder).
  2. pytest   TNQ_TEST_CUDA=1 (Triton compiles for the GPU instead of the interpreter) on the CUDA, Triton, API,
              CPU-backend and constants tests (--full-tests: the whole suite).
  3. sanitize compute-sanitizer memcheck (and --racecheck) on a small compress / decompress / decompress_sum /
              stage-op run of the C++ CUDA kernels, with torch's caching allocator off so an out-of-bounds access
              hits the end of a real allocation.
  4. bench    benchmarks/bench_gpu.py: Triton, CUDA, the reference under torch.compile, and the peers (fp16 cast
              of DDP's fp16_compress_hook, bitsandbytes NF4 and 8-bit blockwise when importable or carried as a
              wheel in $TNQ_BNB_WHEEL / shared/wheels/): GB/s (read + written), % of a device copy, b = 2..5,
              fp32/bf16, n = 2^20..2^28, L2 flushed, do_bench median.
Printed last: GPU, driver, versions, date, the step summary and the side-by-side Triton | CUDA table with the
faster backend per op (the default for CUDA tensors should follow it: ops.py registers the C++ kernels when built).
Without a CUDA device it still runs the build and the CPU-side tests, prints "no CUDA device" and exits with 3.
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
TESTS = ["tests/test_cuda_backend.py", "tests/test_cuda_build.py", "tests/test_triton.py", "tests/test_api.py",
         "tests/test_cpu_backend.py", "tests/test_constants.py"]
NO_CUDA_EXIT = 3

SANITIZE_SCRIPT = r"""
import torch, tnq_kernels
from tnq_kernels import ops
assert not (set(ops.SCHEMAS) - ops.NATIVE_CUDA_OPS), "extension built without the CUDA kernels"
torch.manual_seed(0)
for n in (1, 31, 33, 4097, 40000):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(n, device="cuda").to(dtype)
        x_odd = torch.randn(n + 1, device="cuda").to(dtype)[1:]  # misaligned: the binding copies it
        for bits in (1, 2, 3, 5, 8):
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
torch.cuda.synchronize()
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
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    results = []
    for t in tools:
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
    return ("ok" if rc == 0 else f"FAILED (rc={rc}, see bench.log)"), (csv if csv.exists() else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for logs and CSV (default: $OUT)")
    ap.add_argument("--skip-build", action="store_true", help="use the extension already built in the tree")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--full-tests", action="store_true", help="the whole test suite, not just the GPU-relevant files")
    ap.add_argument("--skip-sanitizer", action="store_true")
    ap.add_argument("--racecheck", action="store_true", help="also run compute-sanitizer racecheck")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--quick-bench", action="store_true", help="n = 2^20, 2^24 and b = 3 only")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve() if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    cuda = has_cuda()
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
    if args.skip_sanitizer:
        summary["sanitizer"] = "skipped: --skip-sanitizer"
    elif not cuda:
        summary["sanitizer"] = "skipped: no CUDA device"
    elif not built:
        summary["sanitizer"] = "skipped: build failed"
    else:
        summary["sanitizer"] = step_sanitize(log, ["memcheck"] + (["racecheck"] if args.racecheck else []))
    csv = None
    if args.skip_bench:
        summary["bench"] = "skipped: --skip-bench"
    elif not cuda:
        summary["bench"] = "skipped: no CUDA device"
    else:
        summary["bench"], csv = step_bench(log, out, args.quick_bench)

    # the report: environment, step summary and the table come last so they are what a reader sees
    log("")
    log("## gpu_check report")
    for k, v in environment().items():
        log(f"- {k}: {v}")
    log("")
    for k, v in summary.items():
        log(f"- {k}: {v}")
    if csv is not None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import _helper as H
        import bench_gpu
        rows = H.read_csv(csv)
        if rows:
            run_id = rows[-1].get("run")
            rows = [r for r in rows if r.get("run") == run_id]  # this session's rows only
        log("")
        log(bench_gpu.side_by_side(rows))
    if out:
        log(f"# logs and CSV in {out}")
    if not cuda:
        log("no CUDA device: the build and CPU-side checks ran; the GPU checks did not")
        return NO_CUDA_EXIT
    return 0 if all(not v.startswith("FAILED") for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
