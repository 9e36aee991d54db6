"""Analytic α–β model of a data-parallel step at world sizes 8..1024, fed by measured kernel throughput.

Per DDP bucket (25 MB of fp32 gradients), with p ranks, link bandwidth β (bytes/s per rank, each direction) and
per-message latency α, NCCL's ring algorithms cost
    allreduce(S)       2(p−1)·α + 2(p−1)/p · S/β
    allgather(P each)   (p−1)·α +  (p−1)   · P/β
    all-to-all(P)       (p−1)·α +  (p−1)/p · P/β          (P = the bytes one rank holds before the exchange)
and a kernel moving R bytes read + W written costs (R + W)/throughput, the throughput (GB/s) measured for that op
and bit width by test_bench_cpu.py / bench_gpu.py (a CSV with _helper.THROUGHPUT_COLUMNS). Compressors:
    allreduce       T_c + allreduce(4n)
    fp16            T_c + allreduce(2n) + cast 4n→2n and back at the measured copy bandwidth
    powersgd<r>     T_c + 2·allreduce(4·r·n/m) + 6·n·r flops at --matmul-tflops (gradient as m×m matrices)
    tnq allgather   T_c + compress(n) + allgather(P(n)) + decompress_sum(p payloads of n)
    tnq two_phase   T_c + compress(n) + all-to-all(P(n)) + decompress_sum(p payloads of n/p) + compress(n/p)
                        + allgather(P(n/p)) + decompress(n)
T_c (forward + backward) is a parameter; communication is assumed NOT overlapped with it (an upper bound; DDP
overlaps buckets with backward, which helps every compressor alike). decompress_sum is taken as bandwidth-bound, so
its measured GB/s at W = 4 is used for every p.

    .venv/bin/python benchmarks/cost_model.py                            # GPU CSV if present, else assumed
    .venv/bin/python benchmarks/cost_model.py --kernels benchmarks/results/cpu_throughput.csv --device cpu
Prints a table last and writes benchmarks/results/cost_model.csv (--csv '' for none; rewritten, not appended).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import _helper as H  # noqa: E402

WORLD_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
KERNEL_OPS = ("copy", "compress", "decompress", "decompress_sum")
#: used only when no measured CSV exists: the SPEC §7 GPU target, 85% of an H100's ~2.6 TB/s device copy
ASSUMED_GBPS = {"copy": 2600.0, "compress": 2200.0, "decompress": 2200.0, "decompress_sum": 2200.0}
IMPL_PREFERENCE = ("auto", "cuda", "triton", "native", "torch", "reference")
BUCKET_BYTES = 25 * 2**20
COLUMNS = ("params", "gbit", "alpha_us", "world", "compressor", "bits", "step_ms", "comm_ms", "kernel_ms",
           "compute_ms", "speedup_vs_allreduce", "wire_bytes_per_rank", "kernel_source")


class Kernels:
    """Measured GB/s per (op, bits): fp32 rows of the largest n, the preferred impl, the latest run."""

    def __init__(self, path: str | None, device: str):
        self.source = "assumed (SPEC §7 H100 target)"
        self.table: dict[tuple[str, int], float] = {}
        self.fallbacks: set[str] = set()
        rows = [r for r in H.read_csv(path) if r.get("dtype") == "float32" and r.get("gbps")
                and (r.get("device") or device) == device] if path else []
        for op in KERNEL_OPS:
            cand = [r for r in rows if r["op"] == op]
            for bits in ({0} if op == "copy" else {2, 3, 4, 5}):
                sel = [r for r in cand if op == "copy" or int(r["bits"]) == bits]
                sel = [r for r in sel if op == "copy" or r["impl"] != "reference"] or sel
                if not sel:
                    continue
                rank = {i: k for k, i in enumerate(IMPL_PREFERENCE)}
                best = min(sel, key=lambda r: (rank.get(r["impl"], 99), -int(r["n"]), r.get("run", "")[::-1]))
                same = [r for r in sel if r["impl"] == best["impl"] and r["n"] == best["n"]
                        and r.get("run") == best.get("run")]
                self.table[(op, bits)] = sorted(float(r["gbps"]) for r in same)[len(same) // 2]
        if self.table:
            self.source = f"measured: {Path(path).name} ({device})"

    def gbps(self, op: str, bits: int) -> float:
        key = (op, 0 if op == "copy" else bits)
        if key in self.table:
            return self.table[key]
        if op == "decompress_sum" and ("decompress", bits) in self.table:
            # not every runner times decompress_sum; it streams the same bytes per payload as decompress
            self.fallbacks.add("decompress_sum≈decompress")
            return self.table[("decompress", bits)]
        if self.table:
            raise ValueError(f"kernel CSV has no float32 {op} row for bits={bits}; re-run the benchmark or pass "
                             f"--kernels with one that does")
        return ASSUMED_GBPS[op]

    def seconds(self, op: str, n: float, bits: int = 3, world: int = 1) -> float:
        read, written = H.op_bytes(op, int(n), torch.float32, bits=bits, block_size=2048, world=world)
        return (read + written) / (self.gbps(op, bits) * 1e9)


def allreduce(p, nbytes, alpha, beta):
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta


def allgather(p, each, alpha, beta):
    return (p - 1) * alpha + (p - 1) * each / beta


def alltoall(p, held, alpha, beta):
    return (p - 1) * alpha + (p - 1) / p * held / beta


def step(compressor: str, bits: int, n: float, p: int, alpha: float, beta: float, compute: float, k: Kernels,
         powersgd_side: int = 4096, matmul_tflops: float = 200.0) -> dict:
    """Seconds of one step for ``n`` fp32 gradient elements split into 25 MB buckets; see the module docstring."""
    nb = max(1, math.ceil(4 * n / BUCKET_BYTES))
    m = n / nb  # elements per bucket
    kernel = 0.0
    if compressor == "allreduce":
        comm, wire = allreduce(p, 4 * m, alpha, beta), 2 * (p - 1) / p * 4 * m
    elif compressor == "fp16":
        comm, wire = allreduce(p, 2 * m, alpha, beta), 2 * (p - 1) / p * 2 * m
        kernel = 2 * 6 * m / (k.gbps("copy", 0) * 1e9)  # fp32→fp16 before, fp16→fp32 after: 6 bytes/elem each
    elif compressor == "powersgd":
        small = 4 * bits * m / powersgd_side  # bits holds the rank r here
        comm, wire = 2 * allreduce(p, small, alpha, beta), 2 * 2 * (p - 1) / p * small
        kernel = 6 * m * bits / (matmul_tflops * 1e12)
    elif compressor == "tnq-allgather":
        P = H.payload_bytes(int(m), bits, 2048)
        comm, wire = allgather(p, P, alpha, beta), (p - 1) * P
        kernel = k.seconds("compress", m, bits) + k.seconds("decompress_sum", m, bits, world=p)
    elif compressor == "tnq-two_phase":
        P, Ps = H.payload_bytes(int(m), bits, 2048), H.payload_bytes(int(math.ceil(m / p)), bits, 2048)
        comm = alltoall(p, P, alpha, beta) + allgather(p, Ps, alpha, beta)
        wire = (p - 1) / p * P + (p - 1) * Ps
        kernel = (k.seconds("compress", m, bits) + k.seconds("decompress_sum", m / p, bits, world=p)
                  + k.seconds("compress", m / p, bits) + p * k.seconds("decompress", m / p, bits))
    else:
        raise ValueError(f"compressor must be allreduce, fp16, powersgd, tnq-allgather or tnq-two_phase, "
                         f"got {compressor!r}")
    return {"step_ms": 1e3 * (compute + nb * (comm + kernel)), "comm_ms": 1e3 * nb * comm,
            "kernel_ms": 1e3 * nb * kernel, "wire_bytes_per_rank": nb * wire}


def project(params: list[float], gbits: list[float], worlds: list[int], alpha_us: float, compute_ms: float,
            k: Kernels, bits_list=(2, 3, 4), powersgd_rank: int = 4, **kw) -> list[dict]:
    configs = [("allreduce", 32), ("fp16", 16), ("powersgd", powersgd_rank)]
    configs += [(f"tnq-{s}", b) for s in ("allgather", "two_phase") for b in bits_list]
    rows = []
    for n in params:
        for g in gbits:
            for p in worlds:
                base = None
                for name, bits in configs:
                    r = step(name, bits, n, p, alpha_us * 1e-6, g * 1e9 / 8, compute_ms * 1e-3, k, **kw)
                    base = r["step_ms"] if name == "allreduce" else base
                    label = f"{name}{bits}" if name == "powersgd" else name
                    rows.append({"params": int(n), "gbit": g, "alpha_us": alpha_us, "world": p, "compressor": label,
                                 "bits": bits, **r, "compute_ms": compute_ms,
                                 "speedup_vs_allreduce": base / r["step_ms"], "kernel_source": k.source})
    return rows


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    found = [c for c in (H.results_path("bench_gpu.csv"), H.results_path("gpu_throughput.csv")) if c.exists()]
    p.add_argument("--kernels", default=str(found[0]) if found else "",
                   help="throughput CSV (default: results/bench_gpu.csv if present, else SPEC-target GB/s)")
    p.add_argument("--device", default="cuda", help="the CSV's device column to use (cuda or cpu)")
    p.add_argument("--params", default="25e6,350e6", help="gradient elements, comma-separated")
    p.add_argument("--gbit", default="25,100,400", help="per-rank link bandwidth, Gbit/s, comma-separated")
    p.add_argument("--alpha-us", type=float, default=10.0, help="latency per message step, µs")
    p.add_argument("--compute-ms", type=float, default=100.0, help="forward + backward time per step, ms")
    p.add_argument("--worlds", default=",".join(map(str, WORLD_SIZES)))
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--powersgd-side", type=int, default=4096, help="PowerSGD: gradient viewed as m×m matrices")
    p.add_argument("--matmul-tflops", type=float, default=200.0, help="PowerSGD matmul throughput, TFLOP/s")
    p.add_argument("--csv", default=str(H.results_path("cost_model.csv")), help="CSV to write ('' for none)")
    args = p.parse_args(argv)
    for name in ("alpha_us", "compute_ms", "matmul_tflops"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")

    k = Kernels(args.kernels or None, args.device)
    rows = project(_floats(args.params), _floats(args.gbit), [int(w) for w in _floats(args.worlds)],
                   args.alpha_us, args.compute_ms, k, bits_list=[int(b) for b in _floats(args.bits)],
                   powersgd_side=args.powersgd_side, matmul_tflops=args.matmul_tflops)
    if args.csv:
        path = Path(args.csv)
        if path.exists():
            path.unlink()  # a projection, not a measurement: the latest one replaces the previous
        H.append_csv(path, [{**r, "date": H.environment()["date"]} for r in rows], COLUMNS)
    print(f"α–β projection, α = {args.alpha_us} µs, T_compute = {args.compute_ms} ms, kernels: {k.source}")
    if k.table:
        print("kernel GB/s used: " + ", ".join(f"{op}/b{b}={v:.3g}" for (op, b), v in sorted(k.table.items()))
              + (f" (assumed: {', '.join(sorted(k.fallbacks))})" if k.fallbacks else ""))
    print(headline(rows))
    return 0


def headline(rows: list[dict]) -> str:
    """Step ms per compressor (rows) × world size (columns), one table per (params, Gbit/s)."""
    out = []
    for key in dict.fromkeys((r["params"], r["gbit"]) for r in rows):
        sel = [r for r in rows if (r["params"], r["gbit"]) == key]
        worlds = list(dict.fromkeys(r["world"] for r in sel))
        table = []
        for comp in dict.fromkeys((r["compressor"], r["bits"]) for r in sel):
            line = {"compressor": comp[0] if comp[0].startswith("powersgd") else f"{comp[0]} b={comp[1]}"}
            for w in worlds:
                r = next(r for r in sel if (r["compressor"], r["bits"]) == comp and r["world"] == w)
                line[f"p={w}"] = r["step_ms"]
            table.append(line)
        out.append(f"\n{key[0] / 1e6:g} M params, {key[1]:g} Gbit/s per rank — step ms")
        out.append(H.format_table(table, list(table[0])))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
