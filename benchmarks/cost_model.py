"""Analytic α–β model of a data-parallel step at world sizes 8..1024, fed by measured (or labelled-assumed) kernels.

Per DDP bucket (25 MB of fp32 gradients), with p ranks, link bandwidth β (bytes/s per rank, each direction) and
per-message latency α, NCCL's ring algorithms cost
    allreduce(S)       2(p−1)·α + 2(p−1)/p · S/β
    allgather(P each)   (p−1)·α +  (p−1)   · P/β
    all-to-all(P)       (p−1)·α +  (p−1)/p · P/β          (P = the bytes one rank holds before the exchange)
    reduce-scatter(S)   (p−1)·α +  (p−1)/p · S/β          (S = the bytes one rank holds before the exchange)
and a kernel moving R bytes read + W written costs (R + W)/throughput. The throughput (GB/s per op and bit width)
comes from one or more kernel sources, each projected separately and named in every row (``kernel_source``):
    gpu            MEASURED: results/bench_gpu.csv, device cuda (bench_gpu.py on a GPU)
    cpu            MEASURED: results/cpu_throughput.csv, device cpu (test_bench_cpu.py; the machine's threads)
    assumed-gpu    ASSUMED, not measured: every tnq kernel at --assume-fraction of a --assume-copy-gbps device copy
                   (default 85% of 2600 GB/s: docs/benchmarks.md's target on an H100 whose device copy reaches ~2.6 TB/s)
    a CSV path     MEASURED: that throughput CSV, rows of --device
Default: gpu when bench_gpu.csv holds CUDA rows, else cpu and assumed-gpu side by side. Compressors:
    allreduce       T_c + allreduce(4n)
    fp16            T_c + allreduce(2n) + cast 4n→2n and back at the source's copy bandwidth
    powersgd<r>     T_c + 2·allreduce(4·r·n/m) + max(6·n·r flops at the matmul rate, 3 passes over the gradient
                        at copy bandwidth) (gradient as m×m matrices; at r = 4 the matmuls are memory-bound)
    tnq allgather   T_c + compress(n) + allgather(P(n)) + decompress_sum(p payloads of n)
    tnq two_phase   T_c + compress(n) + all-to-all(P(n)) + decompress_sum(p payloads of n/p) + compress(n/p)
                        + allgather(P(n/p)) + decompress(n)
FSDP2 (sharded training; the gradient's reduce-scatter only, as tnq_kernels.fsdp replaces it):
    fsdp-fp32       T_c + reduce-scatter(4n)
    fsdp-bf16       T_c + reduce-scatter(2n) + the cast 4n→2n at the source's copy bandwidth
    fsdp-tnq        T_c + compress(n) + all-to-all(P(n)) + decompress_sum(p payloads of n/p)     (flat)
    fsdp-tnqh       T_c + all-to-all over the node's k ranks of 4n bytes at β_node + compress(n/k)
                        + all-to-all among the p/k nodes of P(n/k) + decompress_sum(p/k payloads of n/p)
                    (hierarchical, k = --node-size ranks per node, β_node = --node-gbit; only the p/k-rank
                    exchange crosses the slow link: (p/k−1)/(p/k)·P(n/k) bytes per rank instead of
                    (p−1)/p·P(n))
T_c (forward + backward) is a parameter; communication is assumed NOT overlapped with it (an upper bound; DDP
overlaps buckets with backward, which helps every compressor alike). decompress_sum is taken as bandwidth-bound, so
its measured GB/s at W = 4 is used for every p.

    .venv/bin/python benchmarks/cost_model.py                       # gpu if measured, else cpu + assumed-gpu
    .venv/bin/python benchmarks/cost_model.py --kernels assumed-gpu --assume-fraction 0.5
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
#: the stated GPU assumption (never a measurement): an H100's device copy (~2.6 TB/s read + written of its 3.35 TB/s
#: HBM3 peak) and docs/benchmarks.md's target for the tnq kernels, 85% of that copy
ASSUMED_COPY_GBPS = 2600.0
ASSUMED_FRACTION = 0.85
#: PowerSGD's matmul rate per source kind, an assumption in both cases (it rarely binds: see step())
ASSUMED_MATMUL_TFLOPS = {"cuda": 200.0, "cpu": 0.1}
IMPL_PREFERENCE = ("auto", "cuda", "triton", "native", "torch", "reference")
BUCKET_BYTES = 25 * 2**20
COLUMNS = ("params", "gbit", "alpha_us", "world", "compressor", "bits", "step_ms", "comm_ms", "kernel_ms",
           "compute_ms", "speedup_vs_allreduce", "wire_bytes_per_rank", "kernel_source", "kernels_measured")


class Kernels:
    """GB/s per (op, bits) of one kernel source: measured (fp32 rows of the largest n, the preferred impl, the latest
    run of a throughput CSV) or assumed (:meth:`assumed`). ``source`` says which, and is written into every row."""

    def __init__(self, path: str | None, device: str, matmul_tflops: float | None = None):
        self.table: dict[tuple[str, int], float] = {}
        self.fallbacks: set[str] = set()
        self.measured = False
        self.matmul_tflops = ASSUMED_MATMUL_TFLOPS.get(device, 200.0) if matmul_tflops is None else matmul_tflops
        rows = [r for r in H.read_csv(path) if r.get("dtype") == "float32" and r.get("gbps")
                and (r.get("device") or device) == device] if path else []
        picked = []
        for op in KERNEL_OPS:
            cand = [r for r in rows if r["op"] == op]
            for bits in ({0} if op == "copy" else {2, 3, 4, 5}):
                sel = [r for r in cand if op == "copy" or int(r["bits"]) == bits]
                sel = [r for r in sel if op == "copy" or r["impl"] != "reference"] or sel
                if not sel:
                    continue
                rank = {i: k for k, i in enumerate(IMPL_PREFERENCE)}
                # the preferred impl at the largest n with the most threads; among its runs, the latest
                best = min(sel, key=lambda r: (rank.get(r["impl"], 99), -int(r["n"]), -int(r.get("threads") or 0)))
                sel = [r for r in sel if (r["impl"], r["n"], r.get("threads")) ==
                       (best["impl"], best["n"], best.get("threads"))]
                last = max(r.get("run", "") for r in sel)
                same = [r for r in sel if r.get("run", "") == last]
                self.table[(op, bits)] = sorted(float(r["gbps"]) for r in same)[len(same) // 2]
                picked += same
        if self.table:
            self.measured = True
            threads = sorted({r.get("threads", "") for r in picked if r.get("threads")})
            name = picked[0].get("device_name") or device
            self.source = (f"measured: {Path(path).name} ({device}: {name}"
                           + (f", {'/'.join(threads)} threads" if threads else "") + ")")
        else:
            self._assume(ASSUMED_COPY_GBPS, ASSUMED_FRACTION)

    @classmethod
    def assumed(cls, copy_gbps: float = ASSUMED_COPY_GBPS, fraction: float = ASSUMED_FRACTION,
                matmul_tflops: float | None = None) -> "Kernels":
        """Every tnq kernel at ``fraction`` of a ``copy_gbps`` device copy: an assumption, labelled as one."""
        if not copy_gbps > 0 or not 0 < fraction <= 1:
            raise ValueError(f"assumed kernels need copy_gbps > 0 and 0 < fraction <= 1, got copy_gbps={copy_gbps}, "
                             f"fraction={fraction}")
        k = cls(None, "cuda", matmul_tflops)
        k._assume(copy_gbps, fraction)
        return k

    def _assume(self, copy_gbps: float, fraction: float) -> None:
        self.measured = False
        self.table = {}
        self.assumption = {"copy": copy_gbps, **{op: fraction * copy_gbps for op in KERNEL_OPS if op != "copy"}}
        self.source = (f"ASSUMED GPU, not measured: tnq kernels at {fraction:.0%} of a {copy_gbps:g} GB/s device "
                       f"copy, matmul {self.matmul_tflops:g} TFLOP/s")

    def gbps(self, op: str, bits: int) -> float:
        if not self.measured:
            return self.assumption[op]
        key = (op, 0 if op == "copy" else bits)
        if key in self.table:
            return self.table[key]
        if op == "decompress_sum" and ("decompress", bits) in self.table:
            # not every runner times decompress_sum; it streams the same bytes per payload as decompress
            self.fallbacks.add("decompress_sum≈decompress")
            return self.table[("decompress", bits)]
        raise ValueError(f"kernel CSV has no float32 {op} row for bits={bits}; re-run the benchmark or pass "
                         f"--kernels with one that does")

    def seconds(self, op: str, n: float, bits: int = 3, world: int = 1) -> float:
        read, written = H.op_bytes(op, int(n), torch.float32, bits=bits, block_size=2048, world=world)
        return (read + written) / (self.gbps(op, bits) * 1e9)


def allreduce(p, nbytes, alpha, beta):
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / beta


def allgather(p, each, alpha, beta):
    return (p - 1) * alpha + (p - 1) * each / beta


def alltoall(p, held, alpha, beta):
    return (p - 1) * alpha + (p - 1) / p * held / beta


def reduce_scatter(p, held, alpha, beta):
    return (p - 1) * alpha + (p - 1) / p * held / beta


def step(compressor: str, bits: int, n: float, p: int, alpha: float, beta: float, compute: float, k: Kernels,
         powersgd_side: int = 4096, node_size: int = 8, node_beta: float = 450e9) -> dict:
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
        # M·Q, Mᵀ·P and P·Qᵀ each stream the m×m gradient once (12 bytes/element in all) for 2r flops/element:
        # at r = 4 that is memory-bound on both GPU and CPU, so the copy bandwidth usually sets the time
        kernel = max(6 * m * bits / (k.matmul_tflops * 1e12), 12 * m / (k.gbps("copy", 0) * 1e9))
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
    elif compressor == "fsdp-fp32":
        comm, wire = reduce_scatter(p, 4 * m, alpha, beta), (p - 1) / p * 4 * m
    elif compressor == "fsdp-bf16":
        comm, wire = reduce_scatter(p, 2 * m, alpha, beta), (p - 1) / p * 2 * m
        kernel = 6 * m / (k.gbps("copy", 0) * 1e9)  # fp32→bf16 before the reduce-scatter
    elif compressor == "fsdp-tnq":
        P = H.payload_bytes(int(m), bits, 2048)
        comm, wire = alltoall(p, P, alpha, beta), (p - 1) / p * P
        kernel = k.seconds("compress", m, bits) + k.seconds("decompress_sum", m / p, bits, world=p)
    elif compressor == "fsdp-tnqh":
        kk = min(node_size, p)
        nodes = max(1, p // kk)
        P = H.payload_bytes(int(math.ceil(m / kk)), bits, 2048)
        comm = alltoall(kk, 4 * m, alpha, node_beta) + alltoall(nodes, P, alpha, beta)
        wire = (nodes - 1) / nodes * P  # the slow link only; the node link carries (k−1)/k·4m
        kernel = k.seconds("compress", m / kk, bits) + k.seconds("decompress_sum", m / p, bits, world=nodes)
    else:
        raise ValueError(f"compressor must be allreduce, fp16, powersgd, tnq-allgather, tnq-two_phase, fsdp-fp32, "
                         f"fsdp-bf16, fsdp-tnq or fsdp-tnqh, got {compressor!r}")
    return {"step_ms": 1e3 * (compute + nb * (comm + kernel)), "comm_ms": 1e3 * nb * comm,
            "kernel_ms": 1e3 * nb * kernel, "wire_bytes_per_rank": nb * wire}


def project(params: list[float], gbits: list[float], worlds: list[int], alpha_us: float, compute_ms: float,
            k: Kernels, bits_list=(2, 3, 4), powersgd_rank: int = 4, **kw) -> list[dict]:
    """One row per (params, Gbit/s, world, compressor) under the kernel source ``k`` (see the module docstring)."""
    configs = [("allreduce", 32), ("fp16", 16), ("powersgd", powersgd_rank)]
    configs += [(f"tnq-{s}", b) for s in ("allgather", "two_phase") for b in bits_list]
    configs += [("fsdp-fp32", 32), ("fsdp-bf16", 16)] + [(f"fsdp-{s}", b) for s in ("tnq", "tnqh") for b in bits_list]
    rows = []
    for n in params:
        for g in gbits:
            for p in worlds:
                base = None
                for name, bits in configs:
                    r = step(name, bits, n, p, alpha_us * 1e-6, g * 1e9 / 8, compute_ms * 1e-3, k, **kw)
                    base = r["step_ms"] if name == "allreduce" else base  # FSDP rows too: same gradient
                    label = f"{name}{bits}" if name == "powersgd" else name
                    rows.append({"params": int(n), "gbit": g, "alpha_us": alpha_us, "world": p, "compressor": label,
                                 "bits": bits, **r, "compute_ms": compute_ms,
                                 "speedup_vs_allreduce": base / r["step_ms"], "kernel_source": k.source,
                                 "kernels_measured": k.measured})
    return rows


def _f(v) -> float:
    return float(v)


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _has_rows(path: Path, device: str) -> bool:
    return any(r.get("device") == device and r.get("gbps") for r in H.read_csv(path))


def kernel_sources(spec: str, device: str, copy_gbps: float, fraction: float,
                   matmul_tflops: float | None) -> list[Kernels]:
    """``spec``: comma-separated gpu, cpu, assumed-gpu or CSV paths (see the module docstring); '' = the default."""
    gpu_csv, cpu_csv = H.results_path("bench_gpu.csv"), H.results_path("cpu_throughput.csv")
    if not spec:
        spec = "gpu" if _has_rows(gpu_csv, "cuda") else "cpu,assumed-gpu"
    out = []
    for name in [v.strip() for v in spec.split(",") if v.strip()]:
        if name == "assumed-gpu":
            out.append(Kernels.assumed(copy_gbps, fraction, matmul_tflops))
            continue
        path, dev = {"gpu": (gpu_csv, "cuda"), "cpu": (cpu_csv, "cpu")}.get(name, (Path(name), device))
        if not _has_rows(path, dev):
            raise ValueError(f"--kernels {name!r}: {path} has no measured {dev} rows; accepted: gpu, cpu, "
                             f"assumed-gpu or a throughput CSV path (run the benchmark first, or use assumed-gpu)")
        out.append(Kernels(str(path), dev, matmul_tflops))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default="",
                   help="comma-separated kernel sources: gpu, cpu, assumed-gpu or a throughput CSV path "
                        "(default: gpu if results/bench_gpu.csv has CUDA rows, else cpu,assumed-gpu)")
    p.add_argument("--device", default="cuda", help="the device column to read from a CSV path (cuda or cpu)")
    p.add_argument("--assume-copy-gbps", type=float, default=ASSUMED_COPY_GBPS,
                   help="assumed-gpu: device-copy GB/s (read + written) of the GPU assumed")
    p.add_argument("--assume-fraction", type=float, default=ASSUMED_FRACTION,
                   help="assumed-gpu: tnq kernel GB/s as a fraction of that copy (docs/benchmarks.md target: 0.85)")
    p.add_argument("--params", default="25e6,350e6", help="gradient elements, comma-separated")
    p.add_argument("--gbit", default="10,25,100,400", help="per-rank link bandwidth, Gbit/s, comma-separated")
    p.add_argument("--alpha-us", type=float, default=10.0, help="latency per message step, µs")
    p.add_argument("--compute-ms", type=float, default=100.0, help="forward + backward time per step, ms")
    p.add_argument("--worlds", default=",".join(map(str, WORLD_SIZES)))
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--powersgd-side", type=int, default=4096, help="PowerSGD: gradient viewed as m×m matrices")
    p.add_argument("--node-size", type=int, default=8, help="fsdp-tnqh: ranks per node (k)")
    p.add_argument("--node-gbit", type=float, default=3600.0,
                   help="fsdp-tnqh: per-rank bandwidth inside a node, Gbit/s (assumed; 3600 = 450 GB/s NVLink)")
    p.add_argument("--matmul-tflops", type=float, default=None,
                   help=f"PowerSGD matmul TFLOP/s (default, assumed: {ASSUMED_MATMUL_TFLOPS})")
    p.add_argument("--csv", default=str(H.results_path("cost_model.csv")), help="CSV to write ('' for none)")
    args = p.parse_args(argv)
    for name in ("alpha_us", "compute_ms", "matmul_tflops"):
        if (getattr(args, name) or 0) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")

    sources = kernel_sources(args.kernels, args.device, args.assume_copy_gbps, args.assume_fraction,
                             args.matmul_tflops)
    rows = []
    for k in sources:
        rows += project(_floats(args.params), _floats(args.gbit), [int(w) for w in _floats(args.worlds)],
                        args.alpha_us, args.compute_ms, k, bits_list=[int(b) for b in _floats(args.bits)],
                        powersgd_side=args.powersgd_side, node_size=args.node_size,
                        node_beta=args.node_gbit * 1e9 / 8)
    if args.csv:
        path = Path(args.csv)
        if path.exists():
            path.unlink()  # a projection, not a measurement: the latest one replaces the previous
        H.append_csv(path, [{**r, "date": H.environment()["date"]} for r in rows], COLUMNS)
    print(f"α–β projection, α = {args.alpha_us} µs, T_compute = {args.compute_ms} ms "
          "(both parameters, not measured)")
    for k in sources:
        print(f"kernels: {k.source}")
        used = k.table or {(op, 0): v for op, v in k.assumption.items()}
        print("  GB/s used: " + ", ".join(f"{op}/b{b}={v:.3g}" for (op, b), v in sorted(used.items()))
              + (f" (assumed: {', '.join(sorted(k.fallbacks))})" if k.fallbacks else ""))
    print(headline(rows))
    return 0


def headline(rows: list[dict]) -> str:
    """Step ms per compressor (rows) × world size (columns), one table per (kernel source, params, Gbit/s)."""
    out = []
    for key in dict.fromkeys((r["params"], r["gbit"], r["kernel_source"]) for r in rows):
        sel = [r for r in rows if (r["params"], r["gbit"], r["kernel_source"]) == key]
        worlds = list(dict.fromkeys(r["world"] for r in sel))
        table = []
        for comp in dict.fromkeys((r["compressor"], r["bits"]) for r in sel):
            line = {"compressor": comp[0] if comp[0].startswith("powersgd") else f"{comp[0]} b={comp[1]}"}
            for w in worlds:
                r = next(r for r in sel if (r["compressor"], r["bits"]) == comp and r["world"] == w)
                line[f"p={w}"] = r["step_ms"]
            table.append(line)
        out.append(f"\n{_f(key[0]) / 1e6:g} M params, {_f(key[1]):g} Gbit/s per rank, kernels {key[2]} — step ms")
        out.append(H.format_table(table, list(table[0])))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
