"""The C++ CUDA backend (csrc/cuda) against the pure-PyTorch reference, code for code at equal seed.

Needs a CUDA device and an extension built with nvcc (benchmarks/gpu_check.py runs this file with TNQ_TEST_CUDA=1).
Every op goes through the public API with backend="cuda", which refuses to fall back to Triton or the CPU. The
reference runs on CPU copies: its fp64 index_add on CUDA uses atomics, whose order could move a scale by one ulp.
Payloads and codes must be identical bytes; decoded values identical bits (NaN compared as NaN).
Set TNQ_TEST_BIG=1 to also check element indices past 2^32 (about 20 GB of GPU memory and 40 GB of host memory).
"""
from __future__ import annotations

import os

import pytest
import torch

import tnq_kernels
from tnq_kernels import checks
from tnq_kernels import format as fmt
from tnq_kernels import ops, reference

from conftest import DTYPES, laplace

if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch: the CUDA backend needs a GPU (run benchmarks/gpu_check.py on one)",
                allow_module_level=True)

DEV = torch.device("cuda")
CUDA_SIZES = [0, 1, 31, 32, 33, 4097, 1_000_000]
FAST_BITS = [2, 3, 4, 5]
OTHER_BITS = [1, 6, 7, 8]
CODEBOOKS = [0, 1, 2, 3]  # tnq, tqsgd, nqsgd, qsgd
SEED = 0x5EED_1234_ABCD


@pytest.fixture(autouse=True, scope="module")
def _built_with_cuda():
    missing = sorted(set(ops.SCHEMAS) - ops.NATIVE_CUDA_OPS)
    if missing:
        pytest.fail(f"the extension has no C++ CUDA kernel for {missing}: it was built without nvcc or with "
                    f"TNQ_CUDA=0 ({ops.native_error or 'loaded'}); rebuild with `pip install --no-build-isolation -e .`")


def cu(fn, *args, **kw):
    return fn(*args, backend="cuda", **kw)


def ref_payload(x, bits, block_size, codebook, seed=SEED):
    return reference.compress(x.cpu(), bits, block_size, codebook, seed)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two float tensors (so -0.0 != 0.0), except that any NaN equals any NaN: NaN payloads
    differ between torch's CPU and CUDA float conversions and carry no information here."""
    a, b = a.cpu().reshape(-1), b.cpu().reshape(-1)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    as_int = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a[~nan].view(as_int), b[~nan].view(as_int))


def same_payload(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Identical header and code bytes; scales identical bits except NaN = NaN (a NaN scale's payload bits are not
    specified: the reference, the CPU backend and CUDA produce different quiet NaNs from the same block)."""
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape:
        return False
    h = checks.read_header(b)
    lo, hi = fmt.HEADER_BYTES, fmt.HEADER_BYTES + 4 * h.nblocks
    return (torch.equal(a[:lo], b[:lo]) and torch.equal(a[hi:], b[hi:])
            and same_bits(a[lo:hi].view(torch.float32), b[lo:hi].view(torch.float32)))


def data(n, dtype, seed=0):
    return laplace(n, scale=0.01, seed=seed, dtype=dtype).to(DEV)


# ---- compress: payload bytes ----

@pytest.mark.parametrize("n", CUDA_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", FAST_BITS)
def test_compress_matches_reference(n, dtype, bits):
    x = data(n, dtype, seed=n + bits)
    for block_size in (0, 32, 2048):
        got = cu(tnq_kernels.compress, x, bits, block_size, seed=SEED)
        assert got.device.type == "cuda"
        assert torch.equal(got.cpu(), ref_payload(x, bits, block_size, 0)), (n, dtype, bits, block_size)


@pytest.mark.parametrize("codebook", CODEBOOKS)
@pytest.mark.parametrize("bits", FAST_BITS + OTHER_BITS)
def test_compress_codebooks_and_widths(codebook, bits):
    x = data(4097, torch.float32, seed=bits)
    for block_size in (64, 4096):
        got = cu(tnq_kernels.compress, x, bits, block_size, codebook, seed=SEED)
        assert torch.equal(got.cpu(), ref_payload(x, bits, block_size, codebook)), (codebook, bits, block_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16384, 16416, 32768, 0])
def test_compress_tiled_blocks(dtype, block_size):
    """Blocks longer than kFusedMaxBlock (16384) and B = 0 take the partials -> block scale -> tiles path."""
    x = data(1_000_003, dtype, seed=7)
    for codebook in (0, 3):
        got = cu(tnq_kernels.compress, x, 3, block_size, codebook, seed=SEED)
        assert torch.equal(got.cpu(), ref_payload(x, 3, block_size, codebook)), (block_size, codebook)


def test_compress_non_contiguous_and_misaligned():
    base = data(3 * 4100, torch.float32, seed=3)
    for x in (base.view(3, 4100).t(), base[1:], base[3::3], base.to(torch.bfloat16)[5:4000]):
        assert not x.is_contiguous() or x.data_ptr() % 16 != 0
        got = cu(tnq_kernels.compress, x, 4, 2048, seed=SEED)
        assert torch.equal(got.cpu(), ref_payload(x, 4, 2048, 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_compress_nonfinite_and_zero_blocks(dtype):
    x = data(5 * 2048 + 77, dtype, seed=11)
    x[10] = float("nan")
    x[2048 + 5] = float("inf")
    x[2 * 2048 + 9] = -float("inf")
    x[3 * 2048: 4 * 2048] = 0
    x[-3] = float("nan")  # the short last block
    for block_size in (2048, 0, 32768):
        for codebook in (0, 2):
            got = cu(tnq_kernels.compress, x, 3, block_size, codebook, seed=SEED).cpu()
            ref = ref_payload(x, 3, block_size, codebook)
            assert same_payload(got, ref), (block_size, codebook)
            assert tnq_kernels.read_header(got).flags == fmt.FLAG_NONFINITE


def test_compress_same_seed_same_bytes_and_seed_matters():
    x = data(100_000, torch.float32)
    a = cu(tnq_kernels.compress, x, 3, 2048, seed=1)
    assert torch.equal(a, cu(tnq_kernels.compress, x, 3, 2048, seed=1))
    assert not torch.equal(a, cu(tnq_kernels.compress, x, 3, 2048, seed=2))
    for seed in (0, -1, 2**63 - 1, -2**63, 2**64 - 1):
        assert torch.equal(cu(tnq_kernels.compress, x[:4097], 2, 2048, seed=seed).cpu(),
                           ref_payload(x[:4097], 2, 2048, 0, seed=tnq_kernels.api._seed(seed)))


def test_compress_on_a_side_stream():
    x = data(1_000_000, torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = cu(tnq_kernels.compress, x, 3, 2048, seed=SEED)
        out = cu(tnq_kernels.decompress, got, list(x.shape), x.dtype)
    s.synchronize()
    assert torch.equal(got.cpu(), ref_payload(x, 3, 2048, 0))
    assert same_bits(out, reference.decompress(got.cpu(), list(x.shape), x.dtype))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs to check the device guard")
def test_second_device():
    x = data(50_000, torch.float32).to("cuda:1")
    got = cu(tnq_kernels.compress, x, 3, 2048, seed=SEED)
    assert got.device == x.device
    assert torch.equal(got.cpu(), ref_payload(x, 3, 2048, 0))
    out = cu(tnq_kernels.decompress_sum, [got, got], [0.5, 0.5])
    assert out.device == x.device


# ---- decompress / decompress_sum ----

@pytest.mark.parametrize("n", CUDA_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", FAST_BITS)
def test_decompress_matches_reference(n, dtype, bits):
    x = data(n, torch.float32, seed=n)
    for block_size in (0, 2048):
        p = ref_payload(x, bits, block_size, 0)
        got = cu(tnq_kernels.decompress, p.to(DEV), [n], dtype)
        assert got.device.type == "cuda" and got.dtype == dtype
        assert same_bits(got, reference.decompress(p, [n], dtype))


@pytest.mark.parametrize("bits", OTHER_BITS)
def test_decompress_other_widths(bits):
    x = data(4099, torch.float32)
    p = ref_payload(x, bits, 96, 1)
    assert same_bits(cu(tnq_kernels.decompress, p.to(DEV), [4099], torch.float32),
                     reference.decompress(p, [4099], torch.float32))


def test_decompress_nonfinite_shape_and_misaligned_payload():
    x = data(3000, torch.float32)
    x[100] = float("inf")
    p = ref_payload(x, 3, 2048, 0)
    got = cu(tnq_kernels.decompress, p.to(DEV), [30, 100], torch.bfloat16)
    assert got.shape == (30, 100)
    assert same_bits(got, reference.decompress(p, [30, 100], torch.bfloat16))
    buf = torch.zeros(p.numel() + 1, dtype=torch.uint8, device=DEV)
    buf[1:] = p.to(DEV)
    assert same_bits(cu(tnq_kernels.decompress, buf[1:], [3000], torch.float32),
                     reference.decompress(p, [3000], torch.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("world", [1, 3, 17, 40])
def test_decompress_sum_matches_reference(dtype, weighted, world):
    """world = 17 (> kMaxSum = 16 payloads of one table) splits the sum into launches that continue from an fp32
    accumulator; world = 40 mixes bits and codebooks, which splits it at every payload. Block sizes may differ
    within a launch. The sum order w = 0, 1, ... must be kept exactly."""
    n = 33_333
    payloads = []
    for w in range(world):
        x = data(n, torch.float32, seed=100 + w)
        bits, codebook = (FAST_BITS[w % 4], w % 4) if world == 40 else (3, 0)
        payloads.append(ref_payload(x, bits, (0, 2048, 64)[w % 3], codebook, seed=SEED + w))
    weights = [0.5 + w / 7 for w in range(world)] if weighted else None
    got = cu(tnq_kernels.decompress_sum, [p.to(DEV) for p in payloads], weights, [n], dtype)
    assert same_bits(got, reference.decompress_sum(payloads, weights, [n], dtype))


def test_decompress_sum_of_a_2d_gather():
    n = 5000
    ps = torch.stack([ref_payload(data(n, torch.float32, seed=w), 2, 2048, 0) for w in range(4)])
    got = cu(tnq_kernels.decompress_sum, ps.to(DEV))
    assert same_bits(got, reference.decompress_sum(list(ps), None, [n], torch.float32))


# ---- the three jobs as separate ops ----

@pytest.mark.parametrize("n", CUDA_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_truncate_matches_reference(n, dtype):
    x = data(n, dtype, seed=5)
    if n > 40:
        x[37] = float("nan")
    for block_size in (0, 32, 2048, 32768):
        for codebook in (0, 3):
            s, z = cu(tnq_kernels.scale_truncate, x, 3, block_size, codebook)
            rs, rz = reference.scale_truncate(x.cpu(), 3, block_size, codebook)
            assert same_bits(s, rs) and same_bits(z, rz), (block_size, codebook)


@pytest.mark.parametrize("bits", FAST_BITS + OTHER_BITS)
def test_quantize_matches_reference(bits):
    _, z = reference.scale_truncate(laplace(100_003, seed=bits), bits, 2048, 0)
    z[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40])
    for codebook in CODEBOOKS:
        got = cu(tnq_kernels.quantize, z.to(DEV), bits, codebook, seed=SEED)
        assert torch.equal(got.cpu(), reference.quantize(z, bits, codebook, SEED)), (bits, codebook)


@pytest.mark.parametrize("n", CUDA_SIZES)
@pytest.mark.parametrize("bits", FAST_BITS + OTHER_BITS)
def test_pack_unpack_match_reference(n, bits):
    gen = torch.Generator().manual_seed(n + bits)
    codes = torch.randint(0, 1 << bits, (n,), generator=gen, dtype=torch.int64).to(torch.uint8)
    words = cu(tnq_kernels.pack, codes.to(DEV), bits)
    assert torch.equal(words.cpu(), reference.pack(codes, bits))
    assert torch.equal(cu(tnq_kernels.unpack, words, bits, n).cpu(), codes)


def test_opcheck_cuda():
    x = data(4097, torch.float32)
    p = tnq_kernels.compress(x, 3, 2048, seed=1)
    z = reference.scale_truncate(x.cpu(), 3, 2048, 0)[1].to(DEV)
    codes = torch.randint(0, 8, (4097,), dtype=torch.uint8, device=DEV)
    cases = {
        "compress": (x, 3, 2048, 0, 1),
        "decompress": (p, [4097], torch.float32),
        "decompress_sum": ([p, p], [0.5, 2.0], [4097], torch.bfloat16),
        "scale_truncate": (x, 3, 2048, 0),
        "quantize": (z, 3, 0, 1),
        "pack": (codes, 3),
        "unpack": (reference.pack(codes.cpu(), 3).to(DEV), 3, 4097),
    }
    for op, args in cases.items():
        torch.library.opcheck(getattr(torch.ops.tnq, op).default, args)


# ---- errors: named, before any kernel touches the data ----

def _corrupt(p, offset, value):
    q = p.clone()
    q[offset] = value
    return q


@pytest.mark.parametrize("field,make", [
    ("magic", lambda p: _corrupt(p, 0, ord("X"))),
    ("version", lambda p: _corrupt(p, 4, 2)),
    ("bits", lambda p: _corrupt(p, 5, 9)),
    ("codebook", lambda p: _corrupt(p, 6, 7)),
    ("dtype", lambda p: _corrupt(p, 7, 3)),
    ("block_size", lambda p: _corrupt(p, 8, 33)),
    ("flags", lambda p: _corrupt(p, 12, 2)),
    ("reserved", lambda p: _corrupt(p, 24, 1)),
    ("length", lambda p: p[:-4]),
    ("length", lambda p: p[:16]),
    ("length", lambda p: _corrupt(p, 17, 16)),  # numel 1000 -> 4328: more groups than the bytes hold
])
def test_corrupt_payload_raises_value_error_naming_the_field(field, make):
    p = ref_payload(data(1000, torch.float32), 3, 64, 0).to(DEV)
    bad = make(p)
    with pytest.raises(ValueError, match=field):
        torch.ops.tnq.decompress(bad, [1000], torch.float32)
    with pytest.raises(ValueError, match=field):
        torch.ops.tnq.decompress_sum([p, bad], None, [1000], torch.float32)


def test_argument_errors():
    x = data(100, torch.float32)
    with pytest.raises(ValueError, match="bits"):
        torch.ops.tnq.compress(x, 9, 2048, 0, 1)
    with pytest.raises(ValueError, match="block_size"):
        torch.ops.tnq.compress(x, 3, 48, 0, 1)
    with pytest.raises(ValueError, match="codebook"):
        torch.ops.tnq.compress(x, 3, 2048, 4, 1)
    with pytest.raises(ValueError, match="x must be float32"):
        torch.ops.tnq.compress(x.double(), 3, 2048, 0, 1)
    p = tnq_kernels.compress(x, 3, 64, seed=1)
    with pytest.raises(ValueError, match="shape"):
        torch.ops.tnq.decompress(p, [99], torch.float32)
    with pytest.raises(ValueError, match=r"payloads\[1\]"):
        torch.ops.tnq.decompress_sum([p, p.cpu()], None, [100], torch.float32)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        tnq_kernels.compress(x.cpu(), backend="cuda")


# ---- 64-bit indexing ----

@pytest.mark.skipif(os.environ.get("TNQ_TEST_BIG") != "1",
                    reason="set TNQ_TEST_BIG=1 for the 2^32-element check (~20 GB GPU, ~40 GB host memory)")
def test_indices_past_2_pow_32():
    """The hash, block and group indices of elements past 2^32: the CUDA payload equals the C++ CPU backend's
    (itself checked against the reference past 2^32 by test_cpu_backend's encode_at test)."""
    n = (1 << 32) + (1 << 20) + 33
    x = torch.empty(n, dtype=torch.bfloat16, device=DEV)
    x.normal_(generator=torch.Generator(DEV).manual_seed(0))
    got = cu(tnq_kernels.compress, x, 3, 2048, seed=SEED)
    xc = x.cpu()
    ref = torch.ops.tnq.compress(xc, 3, 2048, 0, SEED)
    assert torch.equal(got.cpu(), ref)
    tail = 1 << 21
    out = cu(tnq_kernels.decompress, got, [n], torch.bfloat16)[-tail:].cpu()
    del x, got
    assert same_bits(out, torch.ops.tnq.decompress(ref, [n], torch.bfloat16)[-tail:])
