"""The one shared benchmark helper: timing, bytes accounting, hardware/version capture and CSV append.

Every benchmark in this folder (CPU pytest-benchmark, GPU runner, end-to-end DDP, cost model) reports through it,
so their CSVs share columns and the plot script reads them all the same way:

    t = time_fn(lambda: tnq_kernels.compress(x, 3), device=x.device, warmup=2, repeat=20, flush_l2=True)
    read, written = op_bytes("compress", x.numel(), x.dtype, bits=3)
    row = {**environment(x.device), "op": "compress", "impl": "native", "gbps": gbps(read + written, t.median)}
    append_csv(results_path("gpu_throughput.csv"), [row])

GB/s is bytes read + bytes written over the median time (STYLE rule 7), next to a plain copy of the same tensor,
which reads and writes ``n·itemsize`` bytes each. Import needs only torch (and tnq_kernels for payload sizes).
"""
from __future__ import annotations

import csv
import datetime as _dt
import functools
import math
import os
import platform
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPS = ("copy", "compress", "decompress", "decompress_sum")
#: columns every throughput CSV starts with (bench_gpu.py and test_bench_cpu.py); extra columns may follow.
THROUGHPUT_COLUMNS = ("date", "run", "device", "device_name", "op", "impl", "dtype", "bits", "block_size", "n",
                      "world", "threads", "median_s", "min_s", "repeats", "bytes_read", "bytes_written", "gbps")


# ---- timing ----

@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls (after warm-up)."""
    median: float
    min: float
    mean: float
    repeats: int

    @classmethod
    def of(cls, samples: list[float]) -> "Timing":
        return cls(statistics.median(samples), min(samples), statistics.fmean(samples), len(samples))


_L2_BUFFERS: dict = {}


def flush_l2(device) -> None:
    """Evict the GPU's L2 by writing a buffer larger than any current L2 (H100: 50 MB) so a timed kernel reads
    from HBM, as it would in training; a no-op on CPU (the CPU sizes we time are far beyond its caches)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    buf = _L2_BUFFERS.get(device)
    if buf is None:
        buf = _L2_BUFFERS[device] = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    buf.zero_()


def synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], *, device="cpu", warmup: int = 1, repeat: int = 5,
            max_seconds: float = 10.0, flush: bool = False) -> Timing:
    """Time ``fn()`` ``repeat`` times after ``warmup`` untimed calls; stops early once ``max_seconds`` of timed
    calls have run (at least one timed call always runs).

    On CUDA each call is bracketed by events on the current stream (host launch overhead excluded) and, with
    ``flush``, preceded by an untimed L2 flush; on CPU it is wall time by ``time.perf_counter``.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    spent = 0.0
    for _ in range(repeat):
        if flush:
            flush_l2(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
        if spent >= max_seconds:
            break
    return Timing.of(samples)


# ---- bytes accounting ----

def time_alternating(fns: Mapping[str, Callable[[], object]], *, rounds: int = 15,
                     warmup: int = 1) -> dict[str, Timing]:
    """Time the CPU functions ``fns`` call by call in turn, the order reversed every round (A B, B A, ...), so each
    sees the same machine: for a ratio of two kernels' times. Timed one after the other on the shared 2-core dev VM,
    the same kernel's median moved by 10-20% between cases; alternating, by about 2% (docs/benchmarks-cpu.md)."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return {name: Timing.of(v) for name, v in samples.items()}


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def payload_bytes(n: int, bits: int, block_size: int) -> int:
    from tnq_kernels import format as fmt
    return fmt.payload_bytes(n, bits, block_size)


def op_bytes(op: str, n: int, dtype: torch.dtype, bits: int = 3, block_size: int = 2048,
             world: int = 1) -> tuple[int, int]:
    """(bytes read, bytes written) of one call on n elements of ``dtype`` — the traffic a kernel must move at
    least once, which is what GB/s is measured against.

    copy: n·itemsize each way.  compress: input in, payload out.  decompress: payload in, tensor out.
    decompress_sum: ``world`` payloads in, one tensor out.
    """
    x = n * itemsize(dtype)
    if op == "copy":
        return x, x
    p = payload_bytes(n, bits, block_size)
    if op == "compress":
        return x, p
    if op == "decompress":
        return p, x
    if op == "decompress_sum":
        return world * p, x
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def gbps(nbytes: float, seconds: float) -> float:
    """Decimal GB/s (1e9 bytes per second); NaN when nothing was moved or no time was measured."""
    return nbytes / seconds / 1e9 if nbytes > 0 and seconds > 0 else math.nan


# ---- hardware / version capture ----

@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
    """The CPU's model name, with its family and model where /proc/cpuinfo has them (a VM may show a bare "AMD EPYC"
    for several generations), and the vector loops the C++ kernels run: e.g. "AMD EPYC (family 25 model 1, avx2)"."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    extra = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields and "model" in fields \
        else []
    from tnq_kernels import ops
    if ops.native_error is None:
        extra.append(ops._C.simd_path())
    return f"{name} ({', '.join(extra)})" if extra else name


@functools.lru_cache(maxsize=None)
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=10"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # an absent or broken optional package is reported, not raised
        return "absent"


def native_backend() -> str:
    """'loaded' when the C++ extension registered CPU kernels, else why not (one line)."""
    from tnq_kernels import ops
    return "loaded" if ops.native_error is None else f"absent ({type(ops.native_error).__name__})"


def environment(device="cpu") -> dict:
    """Date, host, hardware and versions for one CSV row. GPU fields are filled for a CUDA ``device``."""
    from tnq_kernels import rng
    device = torch.device(device)
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(),
        "device": device.type,
        "device_name": _cpu_model(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else math.nan,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda or "none",
        "tnq_native": native_backend(),
        "git": _git_commit(),
        "rng": rng.VERSION,  # the stochastic-rounding generator the compress rows ran (docs/RNG.md)
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_l2_mib"] = round(getattr(props, "L2_cache_size", 0) / 2**20, 1)
    return env


def run_id() -> str:
    """One id per benchmark session, so ratios (tnq vs copy vs reference) are taken within the same run."""
    return os.environ.get("TNQ_BENCH_RUN") or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


# ---- CSV ----

def results_path(name: str) -> Path:
    return RESULTS_DIR / name


def read_csv(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_csv(path, rows: Iterable[Mapping], columns: Iterable[str] = ()) -> Path:
    """Append ``rows`` (dicts) to the CSV at ``path``, creating it and its folder as needed.

    Columns are ``columns`` first, then the file's existing ones, then any new keys in first-seen order; when new
    keys appear the file is rewritten with the wider header (older rows get empty cells, but "rng" reads
    "v1.1" for rows written before the generator was recorded), so CSVs written by different versions of a
    benchmark stay one table.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    if not rows:
        return path
    old = read_csv(path)
    header: list[str] = []
    for c in list(columns) + (_header(path) if old or path.exists() else []):
        if c not in header:
            header.append(c)
    for r in rows:
        for k in r:
            if k not in header:
                header.append(k)
    if "rng" in header:
        from tnq_kernels import rng
        for r in old:  # rows written before the generator was recorded (no "rng" column, or an empty cell)
            if not r.get("rng"):
                r["rng"] = rng.VERSION_BEFORE_RECORDING
    path.parent.mkdir(parents=True, exist_ok=True)
    rewrite = not path.exists() or _header(path) != header
    mode, write_rows = ("w", old + rows) if rewrite else ("a", rows)
    with path.open(mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, restval="")
        if mode == "w":
            w.writeheader()
        for r in write_rows:
            w.writerow({k: _cell(v) for k, v in r.items()})
    return path


def _header(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def _cell(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    return v


def format_table(rows: list[Mapping], columns: list[str]) -> str:
    """A GitHub-markdown table of ``columns`` (floats shown with 3 significant digits)."""
    def show(v):
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.3g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
