"""Ahead-of-time compile of every Triton kernel for sm_80 and sm_90, without a GPU.

The interpreter forgives what real lowering rejects (types, layouts, unsupported ops), so CI also runs
triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32)) through TTIR → TTGIR → LLVM → PTX → cubin (ptxas)
for bits 2..5 and each input/output dtype. This runs in a subprocess: the test session sets TRITON_INTERPRET=1,
which makes @triton.jit return interpreter objects that cannot be compiled. The PTX is also checked for the
numerics the kernels rely on: a correctly rounded fp64 division for the scale, a correctly rounded fp32 division
for r = 1/γ̂ (the v1.1 encode (docs/format.md): z = g·r), no FMA in decompress_sum's accumulation (launched with enable_fp_fusion=False),
no flush-to-zero anywhere. The "-i32" cases declare the size arguments 32-bit, as Triton types any Python int below
2^31, and check that the TTIR never adds, subtracts or multiplies them in 32 bits (issue 11, finding 1).
"""
import importlib
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = [80, 90]
BITS = [2, 3, 4, 5]
FLOATS = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}


def _case(module, kernel, types, consts, warps, checks=(), fusion=True):
    # every kernel: no flush-to-zero (subnormal scales and values must round like the reference)
    return dict(module=module, kernel=kernel, types=types, consts=consts, warps=warps, fusion=fusion,
                checks=list(checks) + ["!.ftz."], sizes=[])


# Integer arguments that hold element counts, offsets or block sizes. Triton types a Python int below 2^31 as
# i32, so every launch with n < 2^31 compiles the kernel with these as i32: the "-i32" cases declare them so and
# check that the TTIR never adds, subtracts or multiplies them in 32 bits (n + CHUNK − 1 wraps near 2^31).
SIZE_ARGS = ("n", "seg", "block_size", "nblocks", "codes_w0", "nparts", "tpb", "nbytes")


def _as_i32(spec):
    types = {a: ("i32" if a in SIZE_ARGS and t == "i64" else t) for a, t in spec["types"].items()}
    return dict(spec, types=types, sizes=[a for a in types if a in SIZE_ARGS])


def cases():
    """{case id: spec}: every kernel of tnq_kernels.triton with the argument types its launcher passes."""
    out = {}
    for arch in ARCHS:
        def add(name, spec):
            out[f"sm{arch}-{name}"] = dict(spec, arch=arch)
        add("header", _case("compress", "header_kernel", dict(out_ptr="*i32", w0="i32", w1="i32", w2="i32",
                            w4="i32", w5="i32", zero_lo="i32", zero_hi="i32"), {}, 1))
        for dt, ptr in FLOATS.items():
            add(f"partials-{dt}", _case("scale_truncate", "partials_kernel",
                                        dict(x_ptr=ptr, part_ptr="*fp64", n="i64"),
                                        dict(CHUNK=4096, RULE=0), 8))
            for mode, chunk in [(0, 2048), (1, 4096), (2, 4096)]:  # one block / B = 0 / tiles of long blocks
                add(f"scale_truncate-{dt}-m{mode}", _case(
                    "scale_truncate", "scale_truncate_kernel",
                    dict(x_ptr=ptr, scales_ptr="*fp32", z_ptr="*fp32", part_ptr="*fp64", table_ptr="*fp32",
                         n="i64", seg="i32", nparts="i32", block_size="i32", tpb="i32"),
                    dict(BITS=3, RULE=0, CHUNK=chunk, MODE=mode, NPART=1024 if mode == 1 else 1), 4,
                    ["div.rn.f32"] + (["div.rn.f64"] if mode < 2 else [])))
            add(f"tile_partials-{dt}", _case("scale_truncate", "tile_partials_kernel",
                                             dict(x_ptr=ptr, part_ptr="*fp64", n="i64", block_size="i32",
                                                  tpb="i64"), dict(TILE=16384, CHUNK=4096, RULE=1), 8))
            for bits in BITS:
                for rows, chunk, max_rule in [(1, 2048, False), (16, 128, True)]:
                    add(f"compress_blocks-{dt}-b{bits}-c{chunk}", _case(
                        "compress", "compress_blocks_kernel",
                        dict(x_ptr=ptr, out_ptr="*i32", table_ptr="*fp32", n="i64", block_size="i32",
                             nblocks="i64", codes_w0="i64", key0="i32", key1="i32"),
                        dict(BITS=bits, BITS_P2=4 if bits <= 4 else 8, RULE=int(max_rule), ROWS=rows, CHUNK=chunk,
                             NEAREST=max_rule), 4, ["div.rn.f32"] + ([] if max_rule else ["div.rn.f64"])))
                for tiles in (False, True):
                    add(f"compress_{'tiles' if tiles else 'b0'}-{dt}-b{bits}", _case(
                        "compress", "compress_kernel",
                        dict(x_ptr=ptr, out_ptr="*i32", part_ptr="*fp64", table_ptr="*fp32", n="i64", seg="i32",
                             nparts="i32", block_size="i32", tpb="i32", codes_w0="i64", key0="i32", key1="i32"),
                        dict(BITS=bits, BITS_P2=4 if bits <= 4 else 8, RULE=0, CHUNK=4096, TILES=tiles,
                             NPART=1 if tiles else 1024, NEAREST=tiles), 8,
                        ["div.rn.f32"] + ([] if tiles else ["div.rn.f64"])))
                add(f"decompress-{dt}-b{bits}", _case(
                    "decompress", "decompress_kernel",
                    dict(in_ptr="*i32", out_ptr=ptr, table_ptr="*fp32", n="i64", block_size="i32", codes_w0="i64"),
                    dict(BITS=bits, CHUNK=2048, SCALE_MODE=2 if bits == 3 else 1, EXACT=True), 4, fusion=False))
        for max_rule in (False, True):
            add(f"block_scale-max{int(max_rule)}", _case(
                "scale_truncate", "block_scale_kernel",
                dict(part_ptr="*fp64", scales_ptr="*fp32", flags_ptr="*i32", n="i64", block_size="i32", tpb="i64"),
                dict(NPART=64, RULE=int(max_rule), HAS_FLAGS=True), 2, [] if max_rule else ["div.rn.f64"]))
        for dt, ptr in FLOATS.items():
            add(f"checked-{dt}", _case(
                "decompress", "checked_kernel",
                dict(in_ptr="*i32", acc_ptr="*fp32", out_ptr=ptr, levels_ptr="*fp32", n="i64", nbytes="i64",
                     weight="fp32"), dict(ACC_IN=True, WEIGHTED=True, CHUNK=2048, EXACT=True), 4,
                ["!fma.rn.f32"], fusion=False))
        for bits in BITS:
            add(f"quantize-b{bits}", _case("quantize", "quantize_kernel",
                                           dict(z_ptr="*fp32", codes_ptr="*u8", table_ptr="*fp32", n="i64",
                                                key0="i32", key1="i32"),
                                           dict(BITS=bits, CHUNK=2048, NEAREST=bits == 3), 4))
            add(f"pack-b{bits}", _case("pack", "pack_kernel", dict(codes_ptr="*u8", words_ptr="*i32", n="i64"),
                                       dict(BITS=bits, BITS_P2=4 if bits <= 4 else 8, CHUNK=2048), 4))
            add(f"unpack-b{bits}", _case("pack", "unpack_kernel", dict(words_ptr="*i32", codes_ptr="*u8", n="i64"),
                                         dict(BITS=bits, CHUNK=2048), 4))
            for dt in (["float32", "bfloat16"] if bits == 3 else ["float32"]):
                sig = dict(ptrs=("*i32",) * 8, ws=("fp32",) * 8, acc_ptr="*fp32", out_ptr=FLOATS[dt],
                           table_ptr="*fp32", n="i64", block_size="i32", codes_w0="i64")
                add(f"decompress_sum-{dt}-b{bits}", _case(
                    "decompress_sum", "decompress_sum_kernel", sig,
                    dict(W=8, ACC_IN=True, WEIGHTED=True, BITS=bits, CHUNK=2048, SCALE_MODE=1, EXACT=True), 4,
                    ["!fma.rn.f32"], fusion=False))
    # one i32 variant per kernel and path (the TTIR check does not depend on the arch, bits or dtype)
    seen = set()
    for name in sorted(out):
        spec = out[name]
        key = (spec["kernel"],) + tuple(spec["consts"].get(k) for k in ("MODE", "TILES", "ROWS", "RULE"))
        if spec["arch"] == 90 and key not in seen and any(a in SIZE_ARGS for a in spec["types"]):
            seen.add(key)
            out[name + "-i32"] = _as_i32(spec)
    return out


def i32_size_arithmetic(ttir, sizes):
    """The TTIR lines that add, subtract or multiply a value derived (in i32) from the `sizes` arguments, in i32.

    Taint starts at the i32 size arguments and flows through i32 integer ops (and splats/broadcasts of them); a
    sign extension to i64 ends it, as a comparison does. Division and remainder cannot overflow and propagate."""
    import re
    tainted = {f"%{a}" for a in sizes}
    bad = []
    flow = ("arith.addi", "arith.subi", "arith.muli", "arith.divsi", "arith.remsi", "arith.minsi", "arith.maxsi",
            "arith.select", "tt.splat", "tt.broadcast", "tt.expand_dims")
    for line in ttir.splitlines():
        m = re.match(r"\s*(%[\w.]+)(?::\d+)? = ([\w.]+) (.*)", line)
        if not m:
            continue
        res, op, rest = m.groups()
        operands = set(re.findall(r"%[\w.]+", rest.split(" : ")[0]))
        if not operands & tainted or op not in flow:
            continue
        types = rest.split(" : ")[-1] if " : " in rest else ""
        if re.search(r"\bi32\b|xi32>", types.split("->")[-1]):
            tainted.add(res)
            if op in ("arith.addi", "arith.subi", "arith.muli"):
                bad.append(line.strip())
    return bad


def compile_case(spec):
    """Compile one case; returns (ok, message)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    try:
        mod = importlib.import_module(f"tnq_kernels.triton.{spec['module']}")
        fn = getattr(mod, spec["kernel"])
        sig = {a: spec["types"].get(a, "constexpr") for a in fn.arg_names}
        missing = [a for a in fn.arg_names if sig[a] == "constexpr" and a not in spec["consts"]]
        if missing:
            return False, f"no type or value for {missing}"
        cc = triton.compile(ASTSource(fn, sig, spec["consts"]), target=GPUTarget("cuda", spec["arch"], 32),
                            options=dict(num_warps=spec["warps"], enable_fp_fusion=spec["fusion"]))
        ptx = cc.asm["ptx"]
        for c in spec["checks"]:
            if c.startswith("!") == (c.lstrip("!") in ptx):
                return False, f"PTX check failed: {c}"
        bad = i32_size_arithmetic(cc.asm["ttir"], spec["sizes"])
        if bad:
            return False, f"i32 arithmetic on sizes {spec['sizes']} (wraps near 2^31): {bad[:3]}"
        if not cc.asm.get("cubin"):
            return False, "no cubin produced"
        return True, ""
    except Exception as e:  # report every failure, do not stop at the first
        return False, f"{type(e).__name__}: {e}"[:4000]


def main():
    specs = cases()
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as ex:
        results = dict(zip(specs, ex.map(compile_case, specs.values())))
    print(json.dumps(results))


def _ptxas_missing():
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        path = get_ptxas(90).path
    except Exception as e:
        return f"Triton's NVIDIA backend or its ptxas is unavailable ({e})"
    if not path or not os.path.exists(path):
        return f"ptxas not found (Triton looked for {path!r})"
    return None


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton", reason="triton is not installed")
    why = _ptxas_missing()
    if why:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(cases()))
def test_kernel_compiles(compiled, case):
    ok, msg = compiled[case]
    assert ok, msg


def test_every_kernel_is_covered():
    import ast
    pkg = os.path.join(ROOT, "tnq_kernels", "triton")
    kernels = set()
    for f in os.listdir(pkg):
        if f.endswith(".py"):
            tree = ast.parse(open(os.path.join(pkg, f)).read())
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and any(
                        "jit" in ast.unparse(d) for d in node.decorator_list):
                    kernels.add((f[:-3], node.name))
    covered = {(s["module"], s["kernel"]) for s in cases().values()}
    assert kernels == covered, f"kernels without an AOT case: {sorted(kernels - covered)}"


if __name__ == "__main__":
    main()
