"""GPU throughput of compress / decompress / decompress_sum: GB/s (bytes read + written) and % of a device copy of
the same tensor, for every tnq backend and for the peers a user would compare against.

    python benchmarks/bench_gpu.py [--csv PATH] [--bits 2 3 4 5] [--dtypes float32 bfloat16]
                                   [--log2n 20 22 24 26 28] [--backends triton cuda reference_compiled]
                                   [--peers fp16_cast bnb_nf4 bnb_blockwise8] [--world 4] [--block-size 2048]
    python benchmarks/bench_gpu.py --smoke      # no GPU needed: tiny sizes on CPU, Triton under the interpreter

Backends: "triton" = tnq_kernels.*(backend="triton"); "cuda" = the C++ CUDA kernels (backend="cuda"; reported as
unavailable when the extension was built without nvcc); "auto" = torch.ops.tnq on CUDA tensors, i.e. the C++ CUDA
kernels when built, otherwise ops.py's forwarder to the Triton kernels (the `auto_kernel` column says which);
"reference_compiled" = the pure-PyTorch reference under torch.compile, timed at --ref-bits / --ref-log2n only (one
compile per shape). Peers, on the same tensor: "fp16_cast" = what DDP's fp16_compress_hook does around its
all-reduce (bucket.to(float16), then a copy back into the bucket's dtype); "bnb_nf4" = bitsandbytes
quantize_4bit / dequantize_4bit (NF4, block 64); "bnb_blockwise8" = bitsandbytes quantize_blockwise /
dequantize_blockwise (8-bit dynamic, block 2048). bitsandbytes is optional: where it is not importable the rows say
so (on a machine without internet, carry its wheel; gpu_check.py installs one from $TNQ_BNB_WHEEL or shared/wheels/).
After the full table comes a side-by-side table (Triton | CUDA, GB/s and % of copy) and the faster backend per op
over n >= 2^24 (geometric mean of the time ratios), which is what ops.py's default for CUDA tensors should follow.
A backend that fails (not built, no triton) is reported in the table and the CSV (`status`), never a crash. Each
time is the median of triton.testing.do_bench, which zeroes a 256 MB buffer before every repetition (L2 flushed);
--smoke times with the helper's wall clock instead.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--log2n", type=int, nargs="+", default=[20, 22, 24, 26, 28])
    ap.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                    help="default: triton cuda reference_compiled (--smoke: triton cuda)")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    ap.add_argument("--ops", nargs="+", default=["compress", "decompress", "decompress_sum"],
                    choices=["compress", "decompress", "decompress_sum"])
    ap.add_argument("--world", type=int, default=4, help="payloads summed by decompress_sum")
    ap.add_argument("--ref-bits", type=int, nargs="+", default=[3], help="bits at which reference_compiled is timed")
    ap.add_argument("--ref-log2n", type=int, nargs="+", default=[24], help="sizes at which reference_compiled is timed")
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--csv", default=None, help="append rows to this CSV (default: results/bench_gpu.csv)")
    ap.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, n = 2^10 and 2^12, no GPU")
    args = ap.parse_args(argv)
    if args.smoke:
        args.log2n = [n for n in args.log2n if n <= 12] or [10, 12]
        args.ref_log2n = [n for n in args.ref_log2n if n <= 12]
    if args.backends is None:
        args.backends = ["triton", "cuda"] + ([] if args.smoke else ["reference_compiled"])
    return args


BACKENDS = ("triton", "cuda", "auto", "reference_compiled")
PEERS = ("fp16_cast", "bnb_nf4", "bnb_blockwise8")
BNB_NF4_BLOCK, BNB_8BIT_BLOCK = 64, 2048


def tnq_fns(backend: str, op: str, x, dtype, bits: int, block_size: int, world: int):
    """A no-argument callable running ``op`` with ``backend``; reference_compiled compiles the reference afresh for
    this shape (torch._dynamo.reset first, so no earlier shape's guards or cache limits apply)."""
    import torch
    import tnq_kernels
    name = "reference" if backend == "reference_compiled" else backend
    enc = lambda t: tnq_kernels.compress(t, bits, block_size, seed=1, backend=name)  # noqa: E731
    dec = lambda p: tnq_kernels.decompress(p, x.shape, dtype, backend=name)  # noqa: E731
    dsum = lambda ps: tnq_kernels.decompress_sum(ps, [1.0 / world] * world, x.shape, dtype, backend=name)  # noqa: E731
    if backend == "reference_compiled":
        torch._dynamo.reset()
        enc, dec, dsum = torch.compile(enc), torch.compile(dec), torch.compile(dsum)
    if op == "compress":
        return lambda: enc(x)
    payload = tnq_kernels.compress(x, bits, block_size, seed=1, backend=name)
    if op == "decompress":
        return lambda: dec(payload)
    payloads = [payload] * world
    return lambda: dsum(payloads)


def peer_fns(peer: str, x):
    """{op: (callable, bytes read, bytes written, bits per element)} for a peer on tensor x (1-D).
    Raises ImportError when bitsandbytes is missing."""
    import torch
    n, s = x.numel(), x.element_size()
    if peer == "fp16_cast":
        h = x.to(torch.float16)
        back = torch.empty_like(x)
        return {"compress": (lambda: x.to(torch.float16), n * s, 2 * n, 16),
                "decompress": (lambda: back.copy_(h), 2 * n, n * s, 16)}
    import bitsandbytes.functional as F  # optional peer
    if peer == "bnb_nf4":
        q, st = F.quantize_4bit(x, blocksize=BNB_NF4_BLOCK, quant_type="nf4")
        packed = (n + 1) // 2 + 4 * -(-n // BNB_NF4_BLOCK)  # 4-bit codes + one fp32 absmax per block
        return {"compress": (lambda: F.quantize_4bit(x, blocksize=BNB_NF4_BLOCK, quant_type="nf4"), n * s, packed, 4),
                "decompress": (lambda: F.dequantize_4bit(q, st), packed, n * s, 4)}
    if peer == "bnb_blockwise8":
        q, st = F.quantize_blockwise(x, blocksize=BNB_8BIT_BLOCK)
        packed = n + 4 * -(-n // BNB_8BIT_BLOCK)
        return {"compress": (lambda: F.quantize_blockwise(x, blocksize=BNB_8BIT_BLOCK), n * s, packed, 8),
                "decompress": (lambda: F.dequantize_blockwise(q, st), packed, n * s, 8)}
    raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")


def _unavailable(e: Exception) -> str:
    return f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def auto_kernel(op: str) -> str:
    """Which kernel torch.ops.tnq.<op> runs for CUDA tensors: 'cuda' (C++ build) or 'triton' (ops.py forwarder)."""
    import torch
    try:
        dump = torch._C._dispatch_dump(f"tnq::{op}")
    except RuntimeError:
        return "missing"
    line = next((ln for ln in dump.splitlines() if ln.startswith("CUDA")), "")
    if not line:
        return "missing"
    return "triton" if "ops.py" in line else "cuda"


def timer(device, smoke):
    """fn → median seconds (do_bench on CUDA, L2 flushed; the helper's wall clock for --smoke)."""
    import _helper as H
    if smoke:
        return lambda fn: H.time_fn(fn, device=device, warmup=1, repeat=3).median
    from triton.testing import do_bench
    return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3


def main(argv=None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before tnq_kernels.triton defines its kernels
    import torch

    import _helper as H
    import tnq_kernels  # noqa: F401  (loads the ops before any timing)

    if not args.smoke and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible to torch; nothing to measure (use --smoke to check the script)")
        return 0
    device = torch.device("cpu" if args.smoke else "cuda")
    env = H.environment(device)
    run = H.run_id()
    time_of = timer(device, args.smoke)
    print(f"# {env['device_name']}  torch {env['torch']}  triton {env['triton']}  cuda {env['cuda']}  "
          f"block_size {args.block_size}  run {run}")
    rows = []
    for dt_name in args.dtypes:
        dtype = getattr(torch, dt_name)
        for log2n in args.log2n:
            n = 1 << log2n
            x = torch.randn(n, device=device).to(dtype)
            y = torch.empty_like(x)
            copy_s = time_of(lambda: y.copy_(x))
            r_c, w_c = H.op_bytes("copy", n, dtype)
            copy_gbps = H.gbps(r_c + w_c, copy_s)
            base = dict(run=run, date=env["date"], device=env["device"], device_name=env["device_name"],
                        dtype=dt_name, block_size=args.block_size, n=n, world=1, threads=env["threads"])
            rows.append(dict(base, op="copy", impl="torch", bits="", median_s=copy_s, min_s=math.nan, repeats="",
                             bytes_read=r_c, bytes_written=w_c, gbps=copy_gbps, pct_copy=100.0, status="ok"))
            for bits in args.bits:
                for backend in args.backends:
                    if backend == "reference_compiled" and (bits not in args.ref_bits or log2n not in args.ref_log2n):
                        continue
                    for op in args.ops:
                        r, w = H.op_bytes(op, n, dtype, bits, args.block_size, world=args.world)
                        row = dict(base, op=op, impl=backend, bits=bits, min_s=math.nan, repeats="",
                                   bytes_read=r, bytes_written=w, world=args.world if op == "decompress_sum" else 1,
                                   auto_kernel=auto_kernel(op) if backend == "auto" else "")
                        try:
                            s = time_of(tnq_fns(backend, op, x, dtype, bits, args.block_size, args.world))
                            row.update(median_s=s, gbps=H.gbps(r + w, s), status="ok")
                            row["pct_copy"] = 100.0 * row["gbps"] / copy_gbps
                        except Exception as e:  # a missing backend is a result to report, not a crash
                            row.update(median_s=math.nan, gbps=math.nan, pct_copy=math.nan, status=_unavailable(e))
                        rows.append(row)
            for peer in args.peers:
                try:
                    fns = peer_fns(peer, x)
                except Exception as e:  # bitsandbytes missing or failing on this device: say so in the table
                    fns = {op: e for op in ("compress", "decompress")}
                for op, f in fns.items():
                    row = dict(base, op=op, impl=peer, bits="", min_s=math.nan, repeats="", auto_kernel="")
                    if isinstance(f, Exception):
                        row.update(median_s=math.nan, gbps=math.nan, pct_copy=math.nan, status=_unavailable(f))
                    else:
                        fn, r, w, b = f
                        row.update(bits=b, bytes_read=r, bytes_written=w)
                        try:
                            s = time_of(fn)
                            g = H.gbps(r + w, s)
                            row.update(median_s=s, gbps=g, pct_copy=100.0 * g / copy_gbps, status="ok")
                        except Exception as e:
                            row.update(median_s=math.nan, gbps=math.nan, pct_copy=math.nan, status=_unavailable(e))
                    rows.append(row)
    cols = ["op", "impl", "auto_kernel", "dtype", "bits", "n", "median_s", "gbps", "pct_copy", "status"]
    print(H.format_table(rows, cols))
    path = Path(args.csv) if args.csv else H.results_path("bench_gpu_smoke.csv" if args.smoke else "bench_gpu.csv")
    H.append_csv(path, rows, H.THROUGHPUT_COLUMNS)
    print(f"# wrote {len(rows)} rows to {path}")
    print(side_by_side(rows))
    return 0


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def side_by_side(rows, left: str = "triton", right: str = "cuda", min_log2n: int = 24) -> str:
    """Markdown table with one line per (op, dtype, bits, n): copy GB/s, then GB/s and % of copy of ``left`` and
    ``right`` and the faster of the two; then, per op, the geometric mean of time(left)/time(right) over
    n >= 2^min_log2n and the verdict. Accepts rows as written (floats) or read back from the CSV (strings)."""
    import _helper as H
    copy = {(r["dtype"], str(r["n"])): _num(r["gbps"]) for r in rows if r["op"] == "copy"}
    by = {}
    for r in rows:
        if r["op"] != "copy" and r["impl"] in (left, right):
            by.setdefault((r["op"], r["dtype"], str(r["bits"]), str(r["n"])), {})[r["impl"]] = r
    out, ratios = [], {}
    for (op, dtype, bits, n), pair in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], int(kv[0][2]),
                                                                         int(kv[0][3]))):
        a, b = pair.get(left, {}), pair.get(right, {})
        ga, gb = _num(a.get("gbps")), _num(b.get("gbps"))
        faster = left if ga > gb else right if gb > ga else "-"
        if int(n) >= 1 << min_log2n and ga > 0 and gb > 0:
            ratios.setdefault(op, []).append(gb / ga)  # = time(left) / time(right)
        out.append({"op": op, "dtype": dtype, "bits": bits, "n": f"2^{int(n).bit_length() - 1}",
                    "copy GB/s": copy.get((dtype, n), math.nan), f"{left} GB/s": ga,
                    f"{left} %copy": _num(a.get("pct_copy")), f"{right} GB/s": gb,
                    f"{right} %copy": _num(b.get("pct_copy")), "faster": faster})
    cols = ["op", "dtype", "bits", "n", "copy GB/s", f"{left} GB/s", f"{left} %copy", f"{right} GB/s",
            f"{right} %copy", "faster"]
    lines = [H.format_table(out, cols)] if out else [f"(no {left}/{right} rows)"]
    for op, rs in sorted(ratios.items()):
        g = math.exp(sum(math.log(r) for r in rs) / len(rs))
        verdict = right if g > 1 else left
        lines.append(f"# {op}: {verdict} is faster over n >= 2^{min_log2n} (time {left}/{right} = {g:.3f}, "
                     f"geometric mean of {len(rs)} cases)")
    if not ratios:
        lines.append(f"# no case with n >= 2^{min_log2n} where both {left} and {right} ran: no verdict")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
