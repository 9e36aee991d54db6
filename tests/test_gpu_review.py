"""Findings of the review of the GPU paths (issue 11), each pinned by a test that a CPU can run.

The Triton kernels run under TRITON_INTERPRET=1 on CPU tensors (conftest.py); with TNQ_TEST_CUDA=1 on a GPU the same
tests run the compiled kernels on CUDA tensors, and the tests marked "GPU only" run too (skipped here with the
reason). Generated-code checks (i32 arithmetic on sizes, no FMA, no FTZ) live in tests/test_triton_aot.py and
tests/test_cuda_build.py, where the kernels are compiled ahead of time.
"""
import os

if os.environ.get("TNQ_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib

import pytest
import torch

from conftest import laplace
from tnq_kernels import checks
from tnq_kernels import format as fmt
from tnq_kernels import reference as R

T = pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")
from tnq_kernels.triton import _common as TC  # noqa: E402

CUDA = os.environ.get("TNQ_TEST_CUDA") == "1"
if CUDA and not torch.cuda.is_available():
    pytest.skip("TNQ_TEST_CUDA=1 but torch sees no CUDA device", allow_module_level=True)
DEVICE = "cuda" if CUDA else "cpu"
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="GPU only: needs TNQ_TEST_CUDA=1 and a CUDA device")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
SEED = 0x5EED_0011


def on(x):
    return x.to(DEVICE)


# ---- the v1.1 encode (docs/format.md): z = clamp(g·r), r = fp32(1/scale) once per block, capped at FLT_MAX ----

@pytest.mark.parametrize("block", [0, 32, 2048, 8192])
def test_triton_truncate_multiplies_by_the_capped_inverse(block):
    # subnormal scales: 1/scale overflows fp32, r is capped at FLT_MAX; g/scale and g·r differ there, and for
    # ordinary data g/scale and g·fp32(1/scale) differ in the last bit for a good share of elements
    n = 3 * max(block, 64)
    x = laplace(n, seed=block + 1)
    x[: max(block, 64)] = torch.tensor(1e-45) * torch.randint(0, 4, (max(block, 64),)).float()
    s_want, z_want = R.scale_truncate(x, 3, block, 0)
    s_got, z_got = T.scale_truncate(on(x), 3, block, 0)
    assert torch.equal(s_got.cpu(), s_want)
    assert torch.equal(z_got.cpu(), z_want)
    assert torch.equal(T.compress(on(x), 3, block, 0, SEED).cpu(), R.compress(x, 3, block, 0, SEED))


# ---- finding 3: Triton quantize mapped a NaN z to code 0 ----

@pytest.mark.parametrize("bits", [2, 3, 5])
def test_triton_quantize_nan_and_inf_like_the_reference(bits):
    z = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e30, -1e30] * 5)
    want = R.quantize(z, bits, 0, SEED)
    assert want[0] == 2**bits - 2  # s − 1: searchsorted puts NaN last, p = NaN never rounds up
    assert torch.equal(T.quantize(on(z), bits, 0, SEED).cpu(), want)


# ---- finding 2: every Triton launcher makes its tensor's device current ----

@pytest.mark.skipif(CUDA, reason="records launches of the interpreter (CPU); on GPUs see test_launchers_follow_the_tensor_device_multi_gpu")
def test_every_launch_happens_inside_the_device_guard(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction
    active, launched = [], []

    @contextlib.contextmanager
    def guard(device):
        active.append(torch.device(device))
        try:
            yield
        finally:
            active.pop()

    orig = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        launched.append((self.fn.__name__, list(active)))
        return orig(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(TC, "device_guard", guard)
    monkeypatch.setattr(InterpretedFunction, "run", run)
    x = laplace(3 * 16416 + 100, seed=1)
    for block in (0, 96, 16416):  # the three compress/scale_truncate paths
        p = T.compress(x, 3, block, 0, SEED)
        T.scale_truncate(x, 3, block, 0)
    z = R.scale_truncate(x, 3, 96, 0)[1]
    codes = T.quantize(z, 3, 0, SEED)
    T.unpack(T.pack(codes, 3), 3, codes.numel())
    T.decompress(p, x.shape, torch.bfloat16)
    T.decompress_sum([p, p], [0.5, 0.25], x.shape, torch.float32)
    out = torch.empty(x.numel())
    T.decompress_into(p, out)
    T.decompress_sum_into([p, p], None, out)
    names = {name for name, _ in launched}
    assert {"compress_kernel", "compress_blocks_kernel", "scale_truncate_kernel", "quantize_kernel", "pack_kernel",
            "unpack_kernel", "decompress_kernel", "decompress_sum_kernel", "header_kernel", "partials_kernel",
            "tile_partials_kernel", "block_scale_kernel"} <= names
    outside = [(name, g) for name, g in launched if g != [x.device]]
    assert not outside, f"launched outside a guard for the tensor's device: {outside[:5]}"


@GPU_ONLY
def test_launchers_follow_the_tensor_device_multi_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x = laplace(10_000, seed=2).to("cuda:1")
    with torch.cuda.device(0):
        p = T.compress(x, 3, 2048, 0, SEED)
        y = T.decompress(p, x.shape, x.dtype)
    assert p.device == x.device and torch.equal(p.cpu(), R.compress(x.cpu(), 3, 2048, 0, SEED))
    assert torch.equal(y.cpu(), R.decompress(p.cpu(), x.shape, x.dtype))


# ---- finding 4: blocks longer than one register tile are split into tiles (many programs) ----

def test_large_blocks_are_tiled():
    import importlib
    st = importlib.import_module("tnq_kernels.triton.scale_truncate")
    mode, seg, nprog, chunk, tpb = st.segmentation(2**24, 2**20)
    assert mode == st.MODE_TILES and nprog == 1024 and tpb == 64 and seg == TC.TILE
    mode, _, nprog, _, tpb = st.segmentation(3 * 16416 + 100, 16416)  # tiles never cross a block end
    assert (mode, tpb, nprog) == (st.MODE_TILES, 2, 8)


@pytest.mark.parametrize("codebook", [0, 3])
@pytest.mark.parametrize("block,n", [(16416, 3 * 16416 + 100), (8192, 20000), (2**20, 40000)])
def test_tiled_blocks_equal_reference(codebook, block, n):
    x = laplace(n, seed=block, dtype=torch.bfloat16)
    x[-50] = float("inf") if codebook else float("nan")  # the last block is non-finite; the others are not
    p = T.compress(on(x), 4, block, codebook, SEED).cpu()
    want = R.compress(x, 4, block, codebook, SEED)
    nb = fmt.num_blocks(n, block)
    assert checks.read_header(p).flags == fmt.FLAG_NONFINITE
    # the non-finite block's scale is any NaN/Inf (docs/format.md); everything else byte for byte
    s_got, s_want = p[32: 32 + 4 * nb].view(torch.float32), want[32: 32 + 4 * nb].view(torch.float32)
    assert torch.equal(s_got[:-1], s_want[:-1]) and not torch.isfinite(s_got[-1])
    assert torch.equal(p[32 + 4 * nb:], want[32 + 4 * nb:]) and torch.equal(p[:32], want[:32])
    s, z = T.scale_truncate(on(x), 4, block, codebook)
    s_r, z_r = R.scale_truncate(x, 4, block, codebook)
    assert torch.equal(s.cpu()[:-1], s_r[:-1]) and torch.equal(z.cpu(), z_r)


# ---- item 7: decode into an existing tensor ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decompress_into_and_sum_into(dtype):
    ps = [R.compress(laplace(3001, seed=i), b, blk, c, i) for i, (b, blk, c) in
          enumerate([(3, 2048, 0), (3, 96, 0), (5, 0, 2)])]
    out = on(torch.full((3001,), 7.0, dtype=dtype))
    T.decompress_into(on(ps[1]), out)
    assert torch.equal(out.cpu(), R.decompress(ps[1], [3001], dtype))
    out2 = on(torch.empty((3, 1000, 1), dtype=dtype))[:, :, 0].reshape(3000)  # any contiguous tensor
    with pytest.raises(ValueError, match="3000"):
        T.decompress_into(on(ps[0]), out2)
    for weights in (None, [0.5, -2.0, 0.25]):
        T.decompress_sum_into([on(p) for p in ps], weights, out)
        assert torch.equal(out.cpu(), R.decompress_sum(ps, weights, [3001], dtype))
    with pytest.raises(ValueError, match="contiguous"):
        T.decompress_into(on(ps[0]), on(torch.empty(6002))[::2])
    with pytest.raises(ValueError, match="out must be float32"):
        T.decompress_into(on(ps[0]), on(torch.empty(3001, dtype=torch.float64)))


# ---- finding 6: while a CUDA graph is captured, decoding never reads the header on the host ----

def _no_host_reads(monkeypatch):
    T.decompress(on(R.compress(torch.ones(64), 3, 32, 0, 1)), [64], torch.float32)  # the warm-up before a capture

    def refuse(*args, **kwargs):
        raise AssertionError("the header was read on the host")
    monkeypatch.setattr(TC, "capturing", lambda device: True)
    monkeypatch.setattr(checks, "read_headers", refuse)
    monkeypatch.setattr(fmt, "parse_header", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)


LAYOUTS = [(3, 2048, 0), (2, 96, 1), (5, 0, 2), (8, 32, 3), (1, 4096, 0), (4, 8192, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_capture_path_decodes_without_host_reads(monkeypatch, dtype):
    n = 5000
    ps = [R.compress(laplace(n, seed=i), b, blk, c, i) for i, (b, blk, c) in enumerate(LAYOUTS)]
    ps[3] = R.compress(torch.cat([laplace(n - 64, seed=9), torch.full((64,), float("nan"))]), 8, 32, 3, 3)
    wants = [R.decompress(p, [50, 100], dtype) for p in ps]
    want_sum = R.decompress_sum(ps, [0.5, 1.5, -1.0, 0.0, 2.0, 0.125], [n], dtype)
    want_sum_unw = R.decompress_sum(ps[:3], None, [n], dtype)
    _no_host_reads(monkeypatch)
    for p, want in zip(ps, wants):
        assert torch.allclose(T.decompress(on(p), [50, 100], dtype).cpu(), want, rtol=0, atol=0, equal_nan=True)
    got = T.decompress_sum([on(p) for p in ps], [0.5, 1.5, -1.0, 0.0, 2.0, 0.125], [n], dtype).cpu()
    assert torch.allclose(got, want_sum, rtol=0, atol=0, equal_nan=True)
    out = on(torch.empty(n, dtype=dtype))
    T.decompress_sum_into([on(p) for p in ps[:3]], None, out)
    assert torch.equal(out.cpu(), want_sum_unw)
    T.decompress_into(on(ps[0]), out)
    assert torch.equal(out.cpu(), wants[0].reshape(-1))


@pytest.mark.parametrize("field,offset,value", [("magic", 0, 0x41), ("version", 4, 2), ("bits", 5, 9),
                                                ("codebook", 6, 200), ("block_size", 8, 33), ("numel", 16, 99)])
def test_capture_path_decodes_a_corrupted_payload_to_nan(monkeypatch, field, offset, value):
    p = R.compress(laplace(1000, seed=1), 3, 96, 0, 1)
    p[offset] = value
    _no_host_reads(monkeypatch)
    y = T.decompress(on(p), [1000], torch.float32).cpu()
    assert torch.isnan(y).all(), field
    truncated = R.compress(laplace(1000, seed=1), 3, 96, 0, 1)[:-16]  # length no longer matches the header
    assert torch.isnan(T.decompress(on(truncated), [1000], torch.float32).cpu()).all()


@GPU_ONLY
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_graph_capture_compress_decompress_sum(backend):
    import tnq_kernels
    from tnq_kernels import ops
    if backend == "cuda" and not {"compress", "decompress", "decompress_sum"} <= ops.NATIVE_CUDA_OPS:
        pytest.skip("the C++ CUDA backend is not built")
    n, dtype = 1 << 20, torch.bfloat16
    x = laplace(n, seed=3, dtype=dtype).cuda()
    peers = [R.compress(laplace(n, seed=10 + i, dtype=dtype), 3, 2048, 0, i).cuda() for i in range(3)]

    def step():
        p = tnq_kernels.compress(x, bits=3, block_size=2048, seed=77, backend=backend)
        y = tnq_kernels.decompress(p, x.shape, dtype, backend=backend)
        s = tnq_kernels.decompress_sum([p] + peers, [0.25] * 4, x.shape, dtype, backend=backend)
        return p, y, s

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = step()  # warm-up: compiles kernels, builds the device tables
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static = step()
    x.copy_(laplace(n, seed=4, dtype=dtype).cuda())
    g.replay()
    torch.cuda.synchronize()
    want_p = R.compress(x.cpu(), 3, 2048, 0, 77)
    assert torch.equal(static[0].cpu(), want_p)
    assert torch.equal(static[1].cpu(), R.decompress(want_p, x.shape, dtype))
    assert torch.equal(static[2].cpu(), R.decompress_sum([want_p] + [q.cpu() for q in peers], [0.25] * 4,
                                                         x.shape, dtype))
    assert not torch.equal(static[0], eager[0])  # the replay really recomputed


# ---- finding 4 (CUDA): the large-block path is sized by min(B, n) ----

def _cuda_host_function(name, restype, argtypes):
    import ctypes
    from tnq_kernels import ops
    if ops._C is None or "compress" not in ops.NATIVE_CUDA_OPS:
        pytest.skip("the extension was built without the CUDA kernels (no nvcc here, or TNQ_CUDA=0)")
    fn = getattr(ctypes.CDLL(ops._C.__file__), name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def test_cuda_large_block_workspace_and_grid_follow_min_B_n():
    import ctypes
    # the tiled path launches workspace/16 tile CTAs (one pair of fp64 partials each: Σ|g| or max|g|, and Σg² for
    # the L2 and second-moment scales), so this pins the grid too
    ws = _cuda_host_function("_ZN3tnq4cuda24compress_workspace_bytesEll", ctypes.c_int64,
                             [ctypes.c_int64, ctypes.c_int64])
    assert ws(100, 2**30) == 0  # B >= n, n small: the fused path, one CTA, no workspace (was 512 KiB)
    assert ws(2**20, 2**30) == 16 * 64  # one block of 2^20 elements: 64 tiles of 2^14 (was 65,536)
    assert ws(2**20, 0) == 16 * 64  # B = 0 is the same single block
    assert ws(2**24, 2**20) == 16 * 16 * 64  # B < n: unchanged
    assert ws(40000, 2048) == 0


# ---- the GPU run: gpu_check writes one results folder, and says so when there is no GPU ----

@pytest.mark.skipif(CUDA, reason="checks the no-GPU report; on a GPU gpu_check itself is the run")
def test_gpu_check_without_a_gpu_writes_an_honest_summary(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import gpu_check
    rc = gpu_check.main(["--skip-build", "--skip-tests", "--out", str(tmp_path)])
    assert rc == gpu_check.NO_CUDA_EXIT
    text = (tmp_path / "SUMMARY.md").read_text()
    for step in ("graph", "sanitizer", "bench"):
        assert f"- {step}: skipped: no CUDA device" in text
    assert "No CUDA device" in text and "torch:" in text and "date:" in text
    assert (tmp_path / "gpu_check.log").exists()


# ---- GPU only: the C++ CUDA kernels on the same findings ----

@GPU_ONLY
@pytest.mark.parametrize("block", [0, 32, 2048, 40000])
def test_cuda_truncate_multiplies_by_the_capped_inverse(block):
    from tnq_kernels import ops
    if "compress" not in ops.NATIVE_CUDA_OPS:
        pytest.skip("the C++ CUDA backend is not built")
    n = 3 * max(block, 64)
    x = laplace(n, seed=block + 1)
    x[: max(block, 64)] = torch.tensor(1e-45) * torch.randint(0, 4, (max(block, 64),)).float()
    s, z = torch.ops.tnq.scale_truncate(x.cuda(), 3, block, 0)
    s_r, z_r = R.scale_truncate(x, 3, block, 0)
    assert torch.equal(s.cpu(), s_r) and torch.equal(z.cpu(), z_r)
    assert torch.equal(torch.ops.tnq.compress(x.cuda(), 3, block, 0, SEED).cpu(), R.compress(x, 3, block, 0, SEED))
    assert torch.equal(torch.ops.tnq.compress(x.cuda(), 3, 2**30, 0, SEED).cpu(), R.compress(x, 3, 2**30, 0, SEED))


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_decompress_into_and_sum_into(dtype):
    from tnq_kernels import ops
    if "decompress_into" not in ops.NATIVE_CUDA_OPS:
        pytest.skip("the C++ CUDA backend is not built")
    ps = [R.compress(laplace(3001, seed=i), b, blk, 0, i) for i, (b, blk) in enumerate([(3, 2048), (3, 96), (5, 0)])]
    big = torch.empty(3002, dtype=dtype, device="cuda")
    for out in (big[:3001], big[1:]):  # aligned, and an odd offset (decoded via a temporary)
        torch.ops.tnq.decompress_into(ps[1].cuda(), out)
        assert torch.equal(out.cpu(), R.decompress(ps[1], [3001], dtype))
        torch.ops.tnq.decompress_sum_into([p.cuda() for p in ps], [0.5, -2.0, 0.25], out)
        assert torch.equal(out.cpu(), R.decompress_sum(ps, [0.5, -2.0, 0.25], [3001], dtype))
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.tnq.decompress_into(ps[0].cuda(), torch.empty(6002, device="cuda")[::2])


# ---- item 8: the roofline's SASS walker (benchmarks/roofline.py) on a hand-made listing ----

def test_roofline_walker_counts_loops_and_skips_the_tail_path():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import roofline
    sass = """
        Function : k
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IMAD R1, R0, 0x4, RZ ;
        /*0020*/               @P0 BRA 0x60 ;
        /*0030*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0040*/                   LDG.E R5, desc[UR4][R2.64+0x4] ;
        /*0050*/                   BRA 0x70 ;
        /*0060*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0070*/                   FMUL R6, R4, R5 ;
        /*0080*/                   LOP3.LUT R7, R6, 0xff, RZ, 0xc0, !PT ;
        /*0090*/               @P1 BRA 0x20 ;
        /*00a0*/                   STG.E desc[UR4][R8.64], R7 ;
        /*00b0*/                   EXIT ;
    """
    code = roofline.parse_functions(sass)["k"]
    # the loop 0x20..0x90 holds one 128-bit load: 4 elements per trip; 16 elements per thread -> 4 trips
    counts = roofline.walk(code, roofline.element_trips(16, 4))
    # per trip: BRA (taken: the fall-through holds the scalar tail loads), LDG.128, FMUL, LOP3, BRA = 5
    assert counts["mem"] == 4 + 1  # 4 wide loads + the store; the scalar tail loads never run
    assert counts["fp32"] == 4 and counts["int"] == 1 + 4 and counts["imad"] == 1  # S2R once, LOP3 per trip
    assert counts["control"] == 2 * 4 + 1  # two branches per trip, EXIT
    assert roofline.op_class("S2UR") == "uniform" and roofline.op_class("MUFU.EX2") == "sfu"


def test_cuda_ptx_divides_once_per_block_and_never_contracts():
    """the v1.1 encode (docs/format.md) in the built CUDA kernels (compute_90 PTX embedded in the extension): r = 1/scale is a correctly
    rounded div.rn.f32, z = g·r a mul.rn.f32, and no fp32 fma or flush-to-zero appears anywhere."""
    import shutil
    import subprocess
    from tnq_kernels import ops
    if ops._C is None or "compress" not in ops.NATIVE_CUDA_OPS:
        pytest.skip("the extension was built without the CUDA kernels (no nvcc here, or TNQ_CUDA=0)")
    import triton
    tool = shutil.which("cuobjdump") or os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                                     "cuobjdump")
    if not os.path.isfile(tool):
        pytest.skip("no cuobjdump (CUDA toolkit or the triton wheel)")
    ptx = subprocess.run([tool, "--dump-ptx", ops._C.__file__], capture_output=True, text=True, check=True).stdout
    assert "fused_blocks_kernel" in ptx and "checked_decode_kernel" in ptx
    assert "fma.rn.f32" not in ptx and ".ftz" not in ptx
    assert "div.rn.f32" in ptx and "mul.rn.f32" in ptx
    # one division per block: the encode kernels' PTX holds a handful of div.rn.f32, not one per vector slot
    for name in ("fused_blocks_kernel", "tiles_kernel"):
        bodies = [b for b in ptx.split(".entry")[1:] if name in b.split("(")[0]]
        assert bodies and all(b.count("div.rn.f32") <= 2 for b in bodies), name


def test_capture_before_warm_up_says_what_to_do(monkeypatch):
    monkeypatch.setattr(TC, "capturing", lambda device: True)
    monkeypatch.setattr(TC, "_TABLES", {})
    p = R.compress(laplace(100, seed=1), 3, 32, 0, 1)
    with pytest.raises(RuntimeError, match="once before capturing"):
        T.decompress(on(p), [100], torch.float32)
    with pytest.raises(RuntimeError, match="once before capturing"):
        T.compress(on(laplace(100, seed=1)), 3, 32, 0, 1)
