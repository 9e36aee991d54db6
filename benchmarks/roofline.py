"""A roofline on paper for the fused GPU kernels, from their SASS (a PREDICTION, not a measurement).

    python benchmarks/roofline.py                 # prints the table, writes benchmarks/results/roofline.{csv,md}

For each fused kernel (CUDA: fused_blocks_kernel = compress, decode_sum_kernel = decompress; Triton:
compress_blocks_kernel, decompress_kernel), b = 2..5, fp32 and bf16 input/output, B = 2048 (the default):

1. SASS for sm_90: the CUDA kernels from the built extension (cuobjdump -sass of tnq_kernels/_C*.so); the Triton
   kernels compiled ahead of time (triton.compile for sm_90, no GPU, with the 16-byte alignment and divisible-by-16
   size specialisations a launch at n = 2^24 gets) and disassembled from their cubin. cuobjdump
   is the toolkit's or the copy the triton wheel ships.
2. Dynamic instructions per element, per thread: a walk of the SASS along the common path of an interior block
   (a conditional forward branch falls through, unless the skipped code holds the scalar tail loads or EXIT;
   loops that do not touch the element data run once; the element loops - those with a 128-bit global access -
   run elements-per-thread / elements-per-iteration times), divided by the elements one thread handles.
   Per-CTA work (table load, block reduction) is included, spread over the CTA's elements. It is an estimate:
   code that only warp 0 runs is counted for every warp, and a data-dependent branch is taken one way. BRA.DIV
   (the branch to the slow path of __syncwarp / vote / shuffle, taken only by a diverged warp) falls through.
3. Classes and Hopper (sm_90) per-SM issue rates, thread-operations per clock (CUDA C Programming Guide,
   arithmetic instruction throughput table for compute capability 9.0): fp32 add/mul/fma 128; fp64 64 (H100/H200
   SXM); integer add/logic/shift, compares, min/max, select, moves (the ALU pipe) 64; IMAD/IMUL 64 on the FMA
   pipe's heavy half (fp32 ops use both halves, so fp32/128 + imad/64 clocks add up); conversions 16; special functions (MUFU) 16;
   shared/global memory instructions 32 (one warp instruction per clock), shuffles and votes 32; all of them share
   4 warp schedulers that issue one warp instruction per clock each (128 thread-instructions per clock). Uniform-
   datapath instructions (U*, S2UR, ...) count against issue only.
4. Elements per second if compute-bound = SMs x clock x min over pipes (rate / count per element), including the
   issue limit; if memory-bound = copy bandwidth / bytes per element (bytes read + written). The predicted
   fraction of copy bandwidth is min(1, compute-bound / memory-bound). Copy bandwidth is taken as 90 % of the
   published HBM peak (the GPU run measures it: benchmarks/gpu_check.py); clock 1.755 GHz (a sustained clock
   under load; the boost clock is 1.98 GHz). H100 SXM5: 132 SMs, 3.35 TB/s; H200 SXM: 132 SMs, 4.8 TB/s.
"""
from __future__ import annotations

import argparse
import csv
import glob
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPUS = {"H100 SXM": dict(sms=132, bw=3.35e12), "H200 SXM": dict(sms=132, bw=4.8e12)}
CLOCK = 1.755e9
COPY_EFF = 0.90
ISSUE = 128  # thread-instructions per clock per SM (4 schedulers x 32 lanes)
RATES = {"fp32": 128, "imad": 64, "fp64": 64, "int": 64, "conv": 16, "sfu": 16, "mem": 32, "warp": 32,
         "uniform": None, "control": None}
BLOCK = 2048
RULE_M2M1 = 3  # tnq_constants.h kScaleM2M1: the default codebook's scale rule

_FP32 = ("FADD", "FMUL", "FFMA", "FMUL2", "FADD2", "FFMA2", "HADD2", "HMUL2", "HFMA2")
_FP64 = ("DADD", "DMUL", "DFMA", "DSETP", "DMNMX")
_CONV = ("F2F", "F2I", "I2F", "FRND", "F2FP", "I2I", "I2FP", "F2IP")
_MEM = ("LDG", "STG", "LDS", "STS", "LD", "ST", "ATOM", "ATOMG", "ATOMS", "RED", "LDC", "LDSM", "LDGSTS")
_WARP = ("SHFL", "VOTE", "MATCH", "REDUX")
_CONTROL = ("BRA", "BSSY", "BSYNC", "EXIT", "BAR", "RET", "CALL", "NOP", "WARPSYNC", "BMOV", "YIELD", "DEPBAR",
            "MEMBAR", "ERRBAR", "CCTL", "BREAK", "JMP", "BPT", "NANOSLEEP", "ELECT", "ACQBULK", "FENCE")


def op_class(opcode: str) -> str:
    base = opcode.split(".")[0]
    if base.startswith("U") and base not in ("UMOV",) or base in ("S2UR", "R2UR", "VOTEU", "UMOV"):
        return "uniform"
    if base in _FP32:
        return "fp32"
    if base in ("IMAD", "IMUL"):
        return "imad"
    if base in _FP64:
        return "fp64"
    if base in _CONV:
        return "conv"
    if base == "MUFU":
        return "sfu"
    if base in _MEM:
        return "mem"
    if base in _WARP:
        return "warp"
    if base in _CONTROL:
        return "control"
    return "int"  # IADD3, IMAD, LOP3, SHF, ISETP, FSETP, FMNMX, SEL, FSEL, PRMT, LEA, MOV, POPC, FLO, S2R, CS2R, ...


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def parse_functions(sass: str) -> dict[str, list[tuple[int, str, str, str]]]:
    """{function name: [(pc, predicate, opcode, operands)]} from cuobjdump -sass output."""
    funcs, cur = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = _LINE.search(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4)))
    return funcs


def _target(operands: str) -> int | None:
    m = re.search(r"(?:^|\s)`?\(?(0x[0-9a-f]+)", operands)
    return int(m.group(1), 16) if m else None


def _is_wide_global(op: str) -> bool:
    return (op.startswith("LDG") or op.startswith("STG")) and ".128" in op


def _is_scalar_load(op: str) -> bool:
    return op.startswith("LDG") and ".128" not in op and ".64" not in op


def walk(code, trips_of) -> dict[str, float]:
    """Dynamic instruction counts per class along the common path (see the module docstring).
    trips_of(loop body instructions) -> how many times an element loop runs (None: not an element loop)."""
    at = {pc: i for i, (pc, *_rest) in enumerate(code)}
    loops = {}  # head pc -> back-edge index
    for i, (pc, pred, op, args) in enumerate(code):
        if op.startswith("BRA"):
            t = _target(args)
            if t is not None and t <= pc and t in at:
                loops[t] = max(loops.get(t, -1), i)
    counts: dict[str, float] = {}

    def path(i, stop, mult):
        """Walk instructions from index i to index stop (exclusive), adding mult per instruction."""
        guard = 0
        while i < stop:
            guard += 1
            if guard > 100000:
                raise RuntimeError("SASS walk did not terminate")
            pc, pred, op, args = code[i]
            if pc in loops and loops[pc] < stop and mult > 0 and i != path.entered.get(pc):
                end = loops[pc]
                body = code[i:end + 1]
                trips = trips_of(body)
                path.entered[pc] = i
                path(i, end + 1, mult * (1 if trips is None else trips))
                path.entered.pop(pc, None)
                i = end + 1
                continue
            cls = op_class(op)
            counts[cls] = counts.get(cls, 0.0) + mult
            if op.startswith("EXIT") and not pred:
                return
            if op.startswith("BRA"):
                t = _target(args)
                if t is None or t not in at:
                    i += 1
                    continue
                j = at[t]
                if t <= pc:  # a back-edge: the loop's trips were counted at its head; fall out
                    i += 1
                    continue
                if op.startswith("BRA.DIV"):  # taken only by a diverged warp (the __syncwarp slow path)
                    i += 1
                    continue
                if not pred:
                    i = j
                    continue
                skipped = code[i + 1:j]
                if any(_is_scalar_load(o) or (o.startswith("EXIT") and not p) for _, p, o, _ in skipped):
                    i = j  # the skipped code is the tail path: the common path takes the branch
                else:
                    i += 1
                continue
            i += 1
    path.entered = {}
    path(0, len(code), 1.0)
    return counts


def element_trips(per_thread: float, v: int):
    """trips_of for loops with 128-bit global accesses (element loops): a thread's per_thread elements, V per
    wide access. An unroll-2 reduction loop has a two-vector main loop and a one-vector remainder loop."""
    def trips_of(body):
        wide = sum(1 for _, _, op, _ in body if _is_wide_global(op))
        if wide == 0:
            return None
        vectors = per_thread / v
        if _is_remainder(body):
            return vectors % 2
        if wide > 1:
            return vectors // wide
        return vectors
    return trips_of


def _is_remainder(body) -> bool:
    """The single-vector remainder of an unroll-2 reduction loop: one wide load, fp64 add or max, no store."""
    ops = [op for _, _, op, _ in body]
    return (sum(1 for o in ops if _is_wide_global(o)) == 1 and not any(o.startswith(("STG", "VOTE")) for o in ops)
            and any(o.startswith(("DADD", "FMNMX")) for o in ops))


# ---- the kernels ----

def cuobjdump() -> str:
    cands = [shutil.which("cuobjdump")]
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for c in cands:
        if c and os.path.isfile(c):
            return c
    raise SystemExit("no cuobjdump (CUDA toolkit or the triton wheel)")


def cuda_sass() -> dict:
    so = glob.glob(str(ROOT / "tnq_kernels" / "_C*.so"))
    if not so:
        raise SystemExit("build the extension with nvcc first (setup.py build_ext --inplace)")
    out = subprocess.run([cuobjdump(), "-sass", "-arch", "sm_90", so[0]], capture_output=True, text=True,
                         check=True).stdout
    return parse_functions(out)


def triton_sass(kernel: str, dtype: str, bits: int) -> list:
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    ptr = {"float32": "*fp32", "bfloat16": "*bf16"}[dtype]
    if kernel == "compress":
        mod = importlib.import_module("tnq_kernels.triton.compress")
        fn = mod.compress_blocks_kernel
        types = dict(x_ptr=ptr, out_ptr="*i32", table_ptr="*fp32", n="i64", block_size="i32", nblocks="i64",
                     codes_w0="i64", key0="i32", key1="i32")
        consts = dict(BITS=bits, BITS_P2=4 if bits <= 4 else 8, RULE=0, ROWS=1, CHUNK=BLOCK)
    else:
        mod = importlib.import_module("tnq_kernels.triton.decompress")
        fn = mod.decompress_kernel
        types = dict(in_ptr="*i32", out_ptr=ptr, table_ptr="*fp32", n="i64", block_size="i32", codes_w0="i64")
        consts = dict(BITS=bits, CHUNK=2048, SCALE_MODE=1, EXACT=True)
    sig = {a: types.get(a, "constexpr") for a in fn.arg_names}
    # what a launch at n = 2^24, B = 2048 specialises on: 16-byte aligned pointers, sizes divisible by 16
    aligned = [a for a in fn.arg_names if sig[a].startswith("*") or a in ("n", "block_size", "nblocks")]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    cc = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=4, enable_fp_fusion=kernel == "compress"))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cc.asm["cubin"])
        out = subprocess.run([cuobjdump(), "-sass", path], capture_output=True, text=True, check=True).stdout
    return next(iter(parse_functions(out).values()))


def cuda_function(funcs: dict, pattern: str) -> list:
    names = [k for k in funcs if re.search(pattern, k)]
    if len(names) != 1:
        raise SystemExit(f"expected one SASS function matching {pattern!r}, found {names}")
    return funcs[names[0]]


def rows():
    funcs = cuda_sass()
    out = []
    for dtype, dt_id, esize, v in (("float32", 0, 4, 4), ("bfloat16", 2, 2, 8)):
        for bits in (2, 3, 4, 5):
            # CUDA compress, B = 2048, the default codebook (rtnq: scale rule Σg²/(2Σ|g|), RULE = 3): one CTA per
            # block with one warp per 1024 elements (blocks.cuh run_blocks), 64 threads, 32 elements per thread
            code = cuda_function(funcs, rf"compress_cu.*fused_blocks_kernelILi{dt_id}ELi{bits}ELi{RULE_M2M1}ELb0E")
            per_thread = BLOCK / (32 * -(-BLOCK // 1024))
            out.append(("cuda", "compress", dtype, bits, walk(code, element_trips(per_thread, v)), per_thread,
                        esize + bits / 8 + 4 / BLOCK))
            # CUDA decompress: one V-element unit per thread at n = 2^24 (grid = n / (256 V) CTAs)
            code = cuda_function(funcs, rf"decode_sum_kernelILi{dt_id}ELi{bits}EE")
            out.append(("cuda", "decompress", dtype, bits, walk(code, element_trips(v, v)), v,
                        esize + bits / 8 + 4 / BLOCK))
            # Triton: 2048 elements per program, 4 warps, straight-line code: 16 elements per thread
            for kernel in ("compress", "decompress"):
                code = triton_sass(kernel, dtype, bits)
                per_thread = 2048 / 128
                out.append(("triton", kernel, dtype, bits, walk(code, element_trips(per_thread, 1)), per_thread,
                            esize + bits / 8 + 4 / BLOCK))
    return out


def predict(counts: dict, per_thread: float, bytes_per_elem: float, gpu: dict) -> tuple[float, str]:
    per_elem = {k: c / per_thread for k, c in counts.items()}
    total = sum(per_elem.values())
    limits = {"issue": ISSUE / total}
    for k, r in RATES.items():
        if r and per_elem.get(k) and k not in ("fp32", "imad"):
            limits[k] = r / per_elem[k]
    # IMAD (integer multiply-add, also the compiler's favourite move/shift/add) issues to the FMA pipe's heavy
    # half at 64 per clock; fp32 add/mul/fma use both halves (128): the pipe's clocks add up
    fma_clocks = per_elem.get("fp32", 0.0) / 128 + per_elem.get("imad", 0.0) / 64
    if fma_clocks:
        limits["fma pipe"] = 1.0 / fma_clocks
    bound = min(limits, key=limits.get)
    compute = gpu["sms"] * CLOCK * limits[bound]  # elements per second
    memory = COPY_EFF * gpu["bw"] / bytes_per_elem
    return min(1.0, compute / memory), bound


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for roofline.csv / .md")
    args = ap.parse_args(argv)
    table = []
    for backend, op, dtype, bits, counts, per_thread, nbytes in rows():
        per = {k: counts.get(k, 0.0) / per_thread for k in ("mem", "int", "imad", "fp32", "fp64", "conv", "sfu",
                                                            "warp", "control", "uniform")}
        row = dict(backend=backend, op=op, dtype=dtype, bits=bits, **{k: round(v, 2) for k, v in per.items()},
                   total=round(sum(per.values()), 2), bytes=round(nbytes, 3))
        for name, gpu in GPUS.items():
            frac, bound = predict(counts, per_thread, nbytes, gpu)
            row[f"{name} %copy"] = round(100 * frac, 1)
            row[f"{name} limit"] = "memory" if frac >= 1.0 else bound
        table.append(row)
    cols = list(table[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "roofline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(table)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    md = "\n".join(lines)
    (out / "roofline.md").write_text("PREDICTION from SASS (benchmarks/roofline.py), not a measurement.\n"
                                     "Instructions per element per thread by class; bytes per element read + "
                                     "written; predicted % of copy bandwidth.\n\n" + md + "\n")
    print(md)


if __name__ == "__main__":
    main()
