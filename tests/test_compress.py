"""tnq::compress on every backend against the oracle (tnq_kernels.reference): payloads equal byte for byte at equal
seed (a NaN scale's bits excepted on CUDA, see conftest.assert_same_payload), decoded by the same backend to the
reference's values; edge cases (non-contiguous and misaligned inputs, empty, zero and non-finite blocks, extreme
seeds, element indices past 2^32), argument errors named, opcheck.

Each backend has its own matrix (conftest.matrix): the C++ CPU kernels the full one; the Triton interpreter a thinner
one; CUDA adds sizes and block sizes that take its other code paths (1e6 elements, blocks above kFusedMaxBlock).
"""
import os
import re

import pytest
import torch

from conftest import DTYPES, SIZES, assert_same_payload, assert_same_values, grid, laplace, matrix, only, opcheck
from tnq_kernels import api
from tnq_kernels import checks
from tnq_kernels import codebooks as cb
from tnq_kernels import format as fmt
from tnq_kernels import reference as ref
from tnq_kernels import rng

# The interpreter multiplies uint32 with numpy, which wraps (as the hash wants) but warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

SEED = 0x5EED_1234_ABCD
FAST_BITS = [2, 3, 4, 5]
ALL_BITS = list(range(cb.MIN_BITS, cb.MAX_BITS + 1))
BLOCKS = [0, 32, 96, 2048]
CODEBOOKS = sorted(cb.CODEBOOK_IDS.values())  # every codebook, so a new one is covered without editing this file
BAD = [float("nan"), float("inf"), -float("inf")]


def _x(n, dtype=torch.float32, seed=0, scale=0.01):
    return laplace(n, scale=scale, seed=seed, dtype=dtype)


def same_payload(backend, x, bits, block, codebook=0, seed=SEED, any_nan_scale=False, rounding="stochastic"):
    """compress on the backend equals the reference payload; returns the backend's payload (on its device)."""
    got = backend.compress(x, bits, block, codebook, seed, rounding)
    want = ref.compress(x.cpu(), bits, block, codebook, api._seed(seed), rng.ROUNDING_IDS[rounding])
    assert got.numel() == fmt.payload_bytes(x.numel(), bits, block)
    assert_same_payload(backend, got, want, any_nan_scale)
    return got


def decodes_like_reference(backend, p, shape, dtype):
    """Triton only: its decoder is checked on every payload of its compress matrix, as its own decompress matrix is
    thin; the C++ decoders have their full matrix in test_decompress.py (a reference decode here would double the
    time of this file on CPU)."""
    if backend.name != "triton":
        return None
    got = backend.decompress(p, list(shape), dtype)
    assert_same_values(backend, got, ref.decompress(p.cpu(), list(shape), dtype))
    return got


# ---- equal to the reference ----

# rounding="nearest" (U = 0.5 for every element) on a thinner grid of sizes: its only difference is where U comes from
@matrix("bits,dtype,n,block,scale,rounding",
        cpu=grid(FAST_BITS, DTYPES, SIZES, BLOCKS, [0.01], ["stochastic"])
        + grid(FAST_BITS, DTYPES, [1, 33, 4097], BLOCKS, [0.01], ["nearest"]),
        triton=grid(FAST_BITS, DTYPES, SIZES, BLOCKS, [1.0], ["stochastic"])
        + grid(FAST_BITS, DTYPES, [33, 4097], [0, 96, 2048], [1.0], ["nearest"]),
        cuda=grid(FAST_BITS, DTYPES, SIZES + [1_000_000], BLOCKS, [0.01], ["stochastic", "nearest"]))
def test_compress_matches_reference(backend, bits, dtype, n, block, scale, rounding):
    x = _x(n, dtype, seed=n + bits, scale=scale)
    p = same_payload(backend, x, bits, block, rounding=rounding)
    decodes_like_reference(backend, p, x.shape, dtype)


_TRITON_BITS_CODEBOOKS = ([(b, 0, n, blk, "stochastic") for b in (1, 6, 7, 8)
                           for n, blk in ((33, 0), (4097, 96), (4097, 2048))]
                          + [(3, c, 3000, blk, "stochastic") for c in CODEBOOKS for blk in (0, 96, 2048)]
                          + [(b, c, 3000, 96, "nearest") for b in (2, 3) for c in CODEBOOKS]
                          + [(b, 0, 4097, 2048, "nearest") for b in (1, 6, 8)])


@matrix("bits,codebook,n,block,rounding",
        cpu=[(b, c, n, blk, r) for b in ALL_BITS for c in CODEBOOKS for n, blk in ((4097, 96), (1000, 0))
             for r in ("stochastic", "nearest")]
        + [(b, 0, n, blk, r) for b in (1, 6, 7, 8) for n, blk in ((33, 0), (4097, 2048))
           for r in ("stochastic", "nearest")],
        triton=_TRITON_BITS_CODEBOOKS,
        cuda=[(b, c, 4097, blk, r) for b in ALL_BITS for c in CODEBOOKS for blk in (64, 4096)
              for r in ("stochastic", "nearest")])
def test_compress_every_width_and_codebook(backend, bits, codebook, n, block, rounding):
    p = same_payload(backend, _x(n, seed=bits), bits, block, codebook, rounding=rounding)
    decodes_like_reference(backend, p, [n], torch.float32)


_CPU_LARGE = [(10**6 + 17, torch.float32, 3, 2048, 0, SEED, 0.01, "stochastic"),
              (10**6 + 17, torch.bfloat16, 2, 0, 0, SEED, 0.01, "stochastic"),
              (10**6 + 17, torch.float16, 5, 96, 0, SEED, 0.01, "stochastic"),
              (10**6 + 17, torch.float32, 2, 2048, 6, SEED, 0.01, "nearest"),
              (10**6 + 17, torch.bfloat16, 3, 0, 2, SEED, 0.01, "nearest")]
# 8192: Triton's two-pass path for blocks above one register tile; a negative seed is read as its two's complement
_TRITON_LARGE = ([(100_003, dt, 4, blk, 0, -5, 1e-3, "stochastic") for dt in (torch.float32, torch.bfloat16)
                  for blk in (0, 2048, 8192)]
                 + [(100_003, torch.float32, 2, blk, 0, -5, 1e-3, "nearest") for blk in (0, 8192)])
# blocks longer than kFusedMaxBlock (16384) and B = 0 take CUDA's partials -> block scale -> tiles path
_CUDA_LARGE = [(1_000_003, dt, 3, blk, c, SEED, 0.01, r) for dt in DTYPES for blk in (16384, 16416, 32768, 0)
               for c in (0, 3) for r in ("stochastic", "nearest")]


@matrix("n,dtype,bits,block,codebook,seed,scale,rounding", cpu=_CPU_LARGE, triton=_TRITON_LARGE,
        cuda=_CPU_LARGE + _CUDA_LARGE)
def test_compress_large(backend, n, dtype, bits, block, codebook, seed, scale, rounding):
    x = _x(n, dtype, scale=scale)
    p = same_payload(backend, x, bits, block, codebook, seed, rounding=rounding)
    decodes_like_reference(backend, p, x.shape, dtype)


# ---- layouts, seeds, zero and non-finite blocks ----

def _strided_views(backend, dtype, which):
    """Non-contiguous views and misaligned (contiguous, data_ptr % 16 != 0) slices, made on the backend's device."""
    a = backend.to(_x(2 * 33 * 65, dtype)).view(66, 65)
    b = backend.to(laplace(64 * 70, seed=2, dtype=dtype)).view(64, 70)
    c = backend.to(_x(3 * 4100, dtype, seed=3))
    views = [a[::2], a.t(), a[:, 1:], b.t()[::2], c.view(3, 4100).t(), c[1:], c[3::3], c[5:4000]]
    return {"all": views, "first3": views[:3], "two": [views[3], views[5]]}[which]


@matrix("dtype,bits,block,views", cpu=grid(DTYPES, [3], [96], ["first3"]) + [(torch.bfloat16, 4, 2048, "all")],
        triton=[(torch.float32, 3, 32, "two")],
        cuda=grid(DTYPES, [3], [32, 96], ["all"]) + grid(DTYPES, [4], [2048], ["all"]))
def test_compress_non_contiguous_and_misaligned(backend, dtype, bits, block, views):
    for x in _strided_views(backend, dtype, views):
        assert not x.is_contiguous() or x.data_ptr() % 16 != 0
        p = same_payload(backend, x, bits, block)
        assert torch.equal(p, backend.compress(x.contiguous(), bits, block, 0, SEED))
        assert torch.equal(p.cpu(), ref.compress(x.contiguous().cpu(), bits, block, 0, SEED))
        assert backend.decompress(p, x.shape, x.dtype).shape == x.shape


@matrix("n", cpu=[999], triton=[999], cuda=[999, 4097])
def test_compress_extreme_seeds(backend, n):
    for seed in (0, -1, 2**63 - 1, -(2**63), 2**64 - 1):  # 2^64 - 1 is -1 as the op's int64
        same_payload(backend, _x(n), 3, 32, seed=seed)
        same_payload(backend, _x(n), 2, 2048, seed=seed)


@matrix("n", cpu=[100_000], triton=[4097], cuda=[100_000])
def test_compress_same_seed_same_bytes_and_seed_matters(backend, n):
    x = backend.to(_x(n))
    a = backend.compress(x, 3, 2048, 0, 1)
    assert torch.equal(a, backend.compress(x, 3, 2048, 0, 1))
    assert not torch.equal(a, backend.compress(x, 3, 2048, 0, 2))


@matrix("n,codebook", cpu=[(100_000, c) for c in (0, 3, 6)], triton=[(4097, 6)], cuda=[(100_000, c) for c in (0, 3, 6)])
def test_compress_nearest_ignores_the_seed(backend, n, codebook):
    """rounding="nearest" draws no random numbers: every seed (None too) gives the same bytes, which differ from
    stochastic rounding's; the seed is still validated."""
    x = backend.to(_x(n))
    a = backend.compress(x, 2, 2048, codebook, 1, "nearest")
    for seed in (2, -1, 2**64 - 1, None):
        assert torch.equal(a, backend.compress(x, 2, 2048, codebook, seed, "nearest"))
    assert not torch.equal(a, backend.compress(x, 2, 2048, codebook, 1))
    with pytest.raises(ValueError, match="seed"):
        backend.compress(x, 2, 2048, codebook, 2**64, "nearest")


@matrix("bits,codebook", cpu=grid(FAST_BITS, CODEBOOKS), triton=[(2, 0), (3, 6)],
        cuda=grid(FAST_BITS, CODEBOOKS))
def test_compress_nearest_decodes_to_the_nearest_level(backend, bits, codebook):
    """Every decoded value is the level nearest to z = clamp(g/scale) (the truncated value): |z − c_code| is at most
    half its cell and at most |z − c_j| for every level j (fp32 slack: one ulp of the level's magnitude)."""
    x = _x(5000, seed=bits)
    p = backend.compress(x, bits, 2048, codebook, SEED, "nearest")
    scales, z = ref.scale_truncate(x, bits, 2048, codebook)
    codes = ref.unpack(p.cpu()[fmt.codes_offset(5000, 2048):].view(torch.int32), bits, 5000).long()
    c = torch.tensor(cb.levels(codebook, bits), dtype=torch.float64)
    z = z.double()
    err = (z - c[codes]).abs()
    slack = 2.0 ** -23 * c.abs().max()
    assert (err <= (z[:, None] - c[None, :]).abs().min(dim=1).values + slack).all()
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
    assert ((codes == k) | (codes == k + 1)).all()
    assert (err <= (c[k + 1] - c[k]) / 2 + slack).all()
    y = backend.decompress(p, [5000], torch.float32).cpu().double()
    scale = scales.double()[torch.arange(5000) // 2048]
    assert torch.equal(y, (scale * c[codes]).float().double())

def test_compress_zero_blocks_decode_to_exact_zeros(backend):
    x = torch.zeros(4097)
    x[2048:2100] = 1.0  # one block nonzero: the others have scale 0
    y = backend.decompress(same_payload(backend, x, 3, 2048), [4097], torch.float32).cpu()
    assert torch.equal(y[:2048], torch.zeros(2048)) and torch.equal(y[4096:], torch.zeros(1))

    x = torch.zeros(5000)
    x[4096:] = laplace(904, seed=4)
    p = same_payload(backend, x, 3, 2048)
    assert checks.read_header(p).flags == 0
    assert torch.equal(backend.decompress(p, x.shape, torch.float32)[:4096].cpu(), torch.zeros(4096))
    same_payload(backend, torch.zeros(100), 3, 0)


@matrix("bad,codebook,block,n,i",
        cpu=[(v, c, blk, 500, 100) for v in BAD for c in CODEBOOKS for blk in (0, 96)]
        + [(v, c, 2048, 4096, 2100) for v in BAD for c in (0, max(CODEBOOKS))],
        triton=[(v, c, blk, 4096, 2100) for v in BAD for c in (0, 3) for blk in (0, 2048)])
def test_compress_non_finite_block(backend, bad, codebook, block, n, i):
    """A non-finite element makes its block's scale non-finite: the flag is set, the block decodes to non-finite
    values, every other block stays finite."""
    x = _x(n)
    x[i] = bad
    # a NaN scale's bits are not specified; CUDA's differ from the reference's
    p = same_payload(backend, x, 3, block, codebook, any_nan_scale=backend.name == "cuda")
    assert checks.read_header(p).flags & fmt.FLAG_NONFINITE
    y = backend.decompress(p, [n], torch.float32).cpu()
    lo, hi = (0, n) if block == 0 else (i // block * block, min(n, (i // block + 1) * block))
    assert not torch.isfinite(y[lo:hi]).any()
    assert torch.isfinite(y[:lo]).all() and torch.isfinite(y[hi:]).all()


@matrix("dtype", cpu=[torch.float16], triton=[torch.bfloat16], cuda=DTYPES)
def test_compress_non_finite_and_zero_blocks(backend, dtype):
    x = _x(5 * 2048 + 77, dtype, seed=11)
    x[10] = float("nan")
    x[2048 + 5] = float("inf")
    x[2 * 2048 + 9] = -float("inf")
    x[3 * 2048: 4 * 2048] = 0
    x[-3] = float("nan")  # the short last block
    for block in (2048, 0, 32768):
        for codebook in (0, 2):
            # a NaN converted from fp16/bf16 keeps its own payload bits: a NaN scale may be any NaN
            p = same_payload(backend, x, 3, block, codebook, any_nan_scale=True)
            assert checks.read_header(p).flags == fmt.FLAG_NONFINITE


def test_fused_equals_stages(backend):
    x = backend.to(_x(5000, torch.bfloat16))
    scales, z = backend.scale_truncate(x, 4, 96, 0)
    words = backend.pack(backend.quantize(z, 4, 0, SEED), 4)
    p = backend.compress(x, 4, 96, 0, SEED)
    assert torch.equal(p[32:32 + 4 * scales.numel()].view(torch.float32), scales)
    assert torch.equal(p[fmt.codes_offset(5000, 96):].view(torch.int32), words)


def test_compress_unbiased_wrt_truncated_value(backend):
    # 256 copies of one block in a single call: same scale, independent rounding noise (different indices)
    runs, x = 256, laplace(2048, scale=0.01, seed=5)
    x[:4] = torch.tensor([0.0, -0.2, 0.2, 0.0301])  # zero and clipped values
    p = backend.compress(x.repeat(runs), 3, 2048, 0, SEED)
    y = backend.decompress(p, (runs, 2048), torch.float32).double().cpu()
    scales, z = ref.scale_truncate(x, 3, 2048, 0)
    c = torch.tensor(cb.levels(0, 3))
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
    p_up = ((z - c[k]) / (c[k + 1] - c[k])).double()
    std = (p_up * (1 - p_up)).sqrt() * (c[k + 1] - c[k]).double() * scales[0].double() / runs**0.5
    zscore = (y.mean(0) - (z * scales[0]).double()) / std.clamp_min(1e-30)
    exact = std == 0
    assert torch.allclose(y.mean(0)[exact], (z * scales[0]).double()[exact], rtol=1e-6, atol=0)
    assert zscore[~exact].abs().max() < 6
    assert abs(zscore[~exact].mean().item()) < 6 / (~exact).sum().item() ** 0.5


# ---- element indices past 2^32 ----

# Only the C++ CPU build has a hook that encodes groups at a given index without allocating them
# (tnq_kernels._C.encode_at); CUDA checks the real thing on a 2^32-element tensor (TNQ_TEST_BIG=1).
# 2^28 - 32: the 64 groups straddle element 2^33, where the pair key changes (SPEC v1.2)
ENCODE_AT_GROUPS = [0, 2**27 - 1, 2**27, 2**28 - 32, 2**35 + 3]


@matrix("first_group", cpu=ENCODE_AT_GROUPS, triton=[], cuda=[])
def test_encode_at_indices_past_2_32(backend, first_group):
    check_encode_at(first_group)


def check_encode_at(first_group):
    # the fused kernel keys the hash with global int64 indices; check groups past 2^32 elements without
    # allocating them, against the rounding rule computed from rng.py and the division-free truncation
    from tnq_kernels import ops
    bits, codebook, scale = 3, 0, 0.01
    x = _x(64 * 32)
    got = ops._C.encode_at(x, first_group, scale, bits, codebook, SEED)
    c = torch.tensor(cb.levels(codebook, bits))
    r = torch.tensor(cb.inv_gaps(codebook, bits))
    z = torch.clamp(x * ref.inverse_scale(torch.tensor([scale], dtype=torch.float32)), c[0], c[-1])
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
    u = rng.uniform_tensor(SEED, torch.arange(x.numel()) + first_group * 32)
    codes = (k + (u < (z - c[k]) * r[k]).long()).to(torch.uint8)
    assert torch.equal(got, ref.pack(codes, bits))


@only("cuda")
@pytest.mark.skipif(os.environ.get("TNQ_TEST_BIG") != "1",
                    reason="set TNQ_TEST_BIG=1 for the 2^32-element check (~20 GB GPU, ~40 GB host memory)")
def test_compress_indices_past_2_32(backend):
    """The hash, block and group indices of elements past 2^32: the CUDA payload equals the C++ CPU backend's
    (itself checked against the reference past 2^32 by test_encode_at_indices_past_2_32)."""
    from conftest import same_bits
    n = (1 << 32) + (1 << 20) + 33
    x = torch.empty(n, dtype=torch.bfloat16, device=backend.device)
    x.normal_(generator=torch.Generator(backend.device).manual_seed(0))
    got = backend.compress(x, 3, 2048, 0, SEED)
    xc = x.cpu()
    want = torch.ops.tnq.compress(xc, 3, 2048, 0, SEED)
    assert torch.equal(got.cpu(), want)
    tail = 1 << 21
    out = backend.decompress(got, [n], torch.bfloat16)[-tail:].cpu()
    del x, got
    assert same_bits(out, torch.ops.tnq.decompress(want, [n], torch.bfloat16)[-tail:])


# ---- argument errors: a ValueError naming the argument ----

_BAD_CODEBOOK = max(CODEBOOKS) + 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=0), "bits"), (dict(bits=9), "bits"), (dict(block_size=33), "block_size"),
    (dict(block_size=48), "block_size"), (dict(block_size=-32), "block_size"), (dict(block_size=2**31), "block_size"),
    (dict(codebook=_BAD_CODEBOOK), "codebook"), (dict(codebook=-1), "codebook"),
    (dict(rounding=2), "rounding must be one of 'stochastic' \\(0\\), 'nearest' \\(1\\), got 2"),
    (dict(rounding=-1), "rounding.*got -1"),
])
def test_compress_argument_errors(backend, kwargs, match):
    # the backend's own checks: the public API would turn a bad codebook id into its own error first
    args = dict(bits=3, block_size=32, codebook=0, rounding=0)
    args.update(kwargs)
    x = backend.to(torch.randn(100))
    with pytest.raises(ValueError, match=match):
        backend.kernel("compress")(x, args["bits"], args["block_size"], args["codebook"], 0, args["rounding"])
    if "rounding" in kwargs:
        return
    with pytest.raises(ValueError, match=match):
        backend.kernel("scale_truncate")(x, args["bits"], args["block_size"], args["codebook"])


@pytest.mark.parametrize("rounding", ["round", "Nearest", "", 1, None])
def test_compress_rounding_name_errors(backend, rounding):
    # the public API takes the name; a bad one is named with what is accepted
    x = backend.to(torch.randn(100))
    msg = "rounding must be one of 'stochastic' \\(0\\), 'nearest' \\(1\\), got " + re.escape(repr(rounding))
    with pytest.raises(ValueError, match=msg):
        backend.compress(x, 3, 32, 0, 0, rounding)
    with pytest.raises(ValueError, match=msg):
        backend.quantize(backend.to(torch.zeros(10)), 3, 0, 0, rounding)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.uint8])
def test_compress_input_dtype_errors(backend, dtype):
    x = backend.to(torch.ones(10, dtype=dtype))
    with pytest.raises(ValueError, match="x must be float32, float16 or bfloat16"):
        backend.kernel("compress")(x, 3, 32, 0, 0)
    with pytest.raises(ValueError, match="x must be float32, float16 or bfloat16"):
        backend.compress(x, 3, 32, 0, 0)


def test_opcheck_compress(backend):
    opcheck(backend, "compress")
