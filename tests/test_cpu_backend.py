"""The C++ CPU backend (csrc/cpu) against the pure-PyTorch oracle (tnq_kernels/reference.py): payloads equal byte
for byte at equal seed, decoded values bit-equal, stage ops equal, every validation error a ValueError naming the
field, and torch.library.opcheck on all seven ops. Both the AVX2 and the portable code paths are covered."""
import os
import struct
import subprocess
import sys

import pytest
import torch

from tnq_kernels import codebooks as cb
from tnq_kernels import format as fmt
from tnq_kernels import reference as ref
from tnq_kernels import rng

from conftest import DTYPES, SIZES, laplace

OPS = torch.ops.tnq
SEED = 0x5EED_1234_ABCD
BLOCKS = [0, 32, 96, 2048]


@pytest.fixture(autouse=True)
def _native(native):
    return native


def _x(n, dtype, seed=0):
    return laplace(n, scale=0.01, seed=seed, dtype=dtype)


def _same_payload(x, bits, block, codebook, seed=SEED):
    got = OPS.compress(x, bits, block, codebook, seed)
    want = ref.compress(x, bits, block, codebook, seed)
    assert got.dtype == torch.uint8 and got.shape == want.shape
    if not torch.equal(got, want):
        diff = (got != want).nonzero().flatten()[:8].tolist()
        pytest.fail(f"payload differs from the reference at bytes {diff} (codes start at "
                    f"{fmt.codes_offset(x.numel(), block)})")
    return got


# ---- compress: byte-for-byte equal to the reference ----

@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_compress_matches_reference(bits, dtype, n, block):
    _same_payload(_x(n, dtype, seed=n), bits, block, cb.CODEBOOK_IDS["tnq"])


@pytest.mark.parametrize("codebook", sorted(cb.CODEBOOK_IDS))
@pytest.mark.parametrize("bits", range(1, 9))
def test_compress_all_bits_and_codebooks(bits, codebook):
    for n, block in [(4097, 96), (1000, 0)]:
        _same_payload(_x(n, torch.float32, seed=bits), bits, block, cb.CODEBOOK_IDS[codebook])


@pytest.mark.parametrize("bits,dtype,block", [(3, torch.float32, 2048), (2, torch.bfloat16, 0),
                                              (5, torch.float16, 96)])
def test_compress_one_million(bits, dtype, block):
    _same_payload(_x(10**6 + 17, dtype), bits, block, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_input(dtype):
    base = _x(2 * 33 * 65, dtype).view(66, 65)
    for x in (base[::2], base.t(), base[:, 1:]):
        assert not x.is_contiguous()
        got = _same_payload(x, 3, 96, 0)
        assert torch.equal(got, OPS.compress(x.contiguous(), 3, 96, 0, SEED))


@pytest.mark.parametrize("seed", [0, -1, 2**63 - 1, -(2**63)])
def test_extreme_seeds(seed):
    _same_payload(_x(999, torch.float32), 3, 32, 0, seed)


def test_zeros_decode_to_exact_zeros():
    x = torch.zeros(4097)
    x[2048:2100] = 1.0  # one block nonzero: the others have scale 0
    p = _same_payload(x, 3, 2048, 0)
    y = OPS.decompress(p, [4097], torch.float32)
    assert torch.equal(y[:2048], torch.zeros(2048)) and torch.equal(y[4096:], torch.zeros(1))


@pytest.mark.parametrize("codebook", [0, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("block", [0, 96])
def test_non_finite_blocks(codebook, bad, block):
    x = _x(500, torch.float32)
    x[100] = bad
    p = _same_payload(x, 3, block, codebook)
    assert fmt.parse_header(p[:32].numpy().tobytes()).flags & fmt.FLAG_NONFINITE
    y = OPS.decompress(p, [500], torch.float32)
    lo, hi = (0, 500) if block == 0 else (96, 192)
    assert not torch.isfinite(y[lo:hi]).any()
    assert torch.isfinite(y[:lo]).all() and torch.isfinite(y[hi:]).all()


# ---- decompress / decompress_sum ----

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_decompress_bit_equal(bits, dtype, n):
    p = ref.compress(_x(n, torch.float32, seed=bits), bits, 96, 0, SEED)
    got = OPS.decompress(p, [n], dtype)
    want = ref.decompress(p, [n], dtype)
    assert got.dtype == dtype and torch.equal(got, want)


def test_decompress_shape_and_non_contiguous_payload():
    x = _x(6 * 35, torch.float32)
    p = OPS.compress(x, 4, 32, 1, SEED)
    padded = torch.zeros(2 * p.numel(), dtype=torch.uint8)
    padded[::2] = p
    got = OPS.decompress(padded[::2], [6, 35], torch.bfloat16)
    assert got.shape == (6, 35) and torch.equal(got, ref.decompress(p, [6, 35], torch.bfloat16))


@pytest.mark.parametrize("weights", [None, [0.5, -1.25, 3.0]])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 33, 4097])
def test_decompress_sum_equals_reference(weights, dtype, n):
    # payloads of different bits, codebooks and block sizes may be summed, as long as numel agrees
    ps = [OPS.compress(_x(n, torch.float32, seed=w), bits, block, cbk, SEED + w)
          for w, (bits, block, cbk) in enumerate([(3, 2048, 0), (2, 32, 1), (5, 0, 3)])]
    got = OPS.decompress_sum(ps, weights, [n], dtype)
    assert torch.equal(got, ref.decompress_sum(ps, weights, [n], dtype))


def test_decompress_sum_single_is_decompress():
    p = OPS.compress(_x(777, torch.float16), 3, 96, 0, SEED)
    assert torch.equal(OPS.decompress_sum([p], None, [777], torch.float32),
                       OPS.decompress(p, [777], torch.float32))


# ---- stage ops ----

@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_truncate_equal(dtype, n, block):
    x = _x(n, dtype, seed=3)
    if n > 40:
        x[40] = float("nan")
    for codebook in range(cb.NUM_CODEBOOKS):
        s1, z1 = OPS.scale_truncate(x, 3, block, codebook)
        s2, z2 = ref.scale_truncate(x, 3, block, codebook)
        assert torch.equal(s1.view(torch.int32), s2.view(torch.int32)) and torch.equal(z1, z2)


@pytest.mark.parametrize("bits", range(1, 9))
def test_quantize_equal(bits):
    z = torch.randn(4097, generator=torch.Generator().manual_seed(bits)) * 3
    z[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    for codebook in range(cb.NUM_CODEBOOKS):
        assert torch.equal(OPS.quantize(z, bits, codebook, SEED), ref.quantize(z, bits, codebook, SEED))
    assert torch.equal(OPS.quantize(z.view(17, 241).t(), bits, 0, 1), ref.quantize(z.view(17, 241).t(), bits, 0, 1))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_equal(bits, n):
    codes = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    words = OPS.pack(codes, bits)
    assert words.dtype == torch.int32 and torch.equal(words, ref.pack(codes, bits))
    assert torch.equal(OPS.unpack(words, bits, n), ref.unpack(words, bits, n))
    assert torch.equal(OPS.unpack(words, bits, n), codes & ((1 << bits) - 1))


def test_fused_equals_stages():
    x = _x(5000, torch.bfloat16)
    scales, z = OPS.scale_truncate(x, 4, 96, 0)
    words = OPS.pack(OPS.quantize(z, 4, 0, SEED), 4)
    p = OPS.compress(x, 4, 96, 0, SEED)
    assert torch.equal(p[32:32 + 4 * scales.numel()].view(torch.float32), scales)
    assert torch.equal(p[fmt.codes_offset(5000, 96):].view(torch.int32), words)


@pytest.mark.parametrize("first_group", [0, 2**27 - 1, 2**27, 2**35 + 3])
def test_fused_codes_at_indices_beyond_2_32(native, first_group):
    # the fused kernel keys the hash with global int64 indices; check groups past 2^32 elements without
    # allocating them, against the rounding rule computed from rng.py
    bits, codebook, scale = 3, 0, 0.01
    x = _x(64 * 32, torch.float32)
    got = native._C.encode_at(x, first_group, scale, bits, codebook, SEED)
    c = torch.tensor(cb.levels(codebook, bits))
    r = torch.tensor(cb.inv_gaps(codebook, bits))
    z = torch.clamp(x / torch.tensor(scale, dtype=torch.float32), c[0], c[-1])
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
    u = rng.uniform_tensor(SEED, torch.arange(x.numel()) + first_group * 32)
    codes = (k + (u < (z - c[k]) * r[k]).long()).to(torch.uint8)
    assert torch.equal(got, ref.pack(codes, bits))


def test_portable_path_matches_reference():
    # TNQ_NO_AVX2=1 forces the baseline-ISA loops that non-AVX2 machines run
    code = (
        "import torch, tnq_kernels\n"
        "from tnq_kernels import reference as ref\n"
        "for dt in (torch.float32, torch.float16, torch.bfloat16):\n"
        "  for bits in (1, 2, 3, 4, 5, 8):\n"
        "    x = torch.randn(4097).to(dt)\n"
        "    for block in (0, 96):\n"
        "      assert torch.equal(torch.ops.tnq.compress(x, bits, block, 0, 9), ref.compress(x, bits, block, 0, 9))\n"
        "print('ok')\n")
    env = dict(os.environ, TNQ_NO_AVX2="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---- validation: ValueError naming the argument or header field ----

@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=0), "bits"), (dict(bits=9), "bits"), (dict(block_size=33), "block_size"),
    (dict(block_size=-32), "block_size"), (dict(block_size=2**31), "block_size"), (dict(codebook=15), "codebook"),
    (dict(codebook=-1), "codebook"),
])
def test_compress_argument_errors(kwargs, match):
    args = dict(bits=3, block_size=32, codebook=0)
    args.update(kwargs)
    x = torch.randn(100)
    with pytest.raises(ValueError, match=match):
        OPS.compress(x, args["bits"], args["block_size"], args["codebook"], 0)
    with pytest.raises(ValueError, match=match):
        OPS.scale_truncate(x, args["bits"], args["block_size"], args["codebook"])


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.uint8])
def test_input_dtype_errors(dtype):
    x = torch.ones(10, dtype=dtype)
    with pytest.raises(ValueError, match="x must be float32, float16 or bfloat16"):
        OPS.compress(x, 3, 32, 0, 0)
    with pytest.raises(ValueError, match="z must be float32"):
        OPS.quantize(x, 3, 0, 0)


def _payload():
    return OPS.compress(torch.randn(100), 3, 32, 0, 7)


@pytest.mark.parametrize("offset,fc,value,field", [
    (0, "4s", b"TNQX", "magic"), (4, "B", 2, "version"), (5, "B", 0, "bits"), (5, "B", 9, "bits"),
    (6, "B", 15, "codebook"), (7, "B", 3, "dtype"), (8, "I", 33, "block_size"), (8, "I", 2**31, "block_size"),
    (12, "I", 2, "flags"), (24, "Q", 1, "reserved"), (16, "Q", 2**63, "numel"), (16, "Q", 200, "length"),
    (5, "B", 4, "length"),
])
def test_corrupt_header_field_named(offset, fc, value, field):
    p = _payload()
    raw = bytearray(p.numpy().tobytes())
    struct.pack_into("<" + fc, raw, offset, value)
    bad = torch.frombuffer(raw, dtype=torch.uint8)
    with pytest.raises(ValueError, match=field):
        fmt.parse_header(bytes(raw[:32]), len(raw))  # the Python parser agrees on the field
    shape = [200] if field == "length" and offset == 16 else [100]
    with pytest.raises(ValueError, match=f"payload {field}"):
        OPS.decompress(bad, shape, torch.float32)
    with pytest.raises(ValueError, match=rf"payloads\[0\] {field}"):
        OPS.decompress_sum([bad, p], None, shape, torch.float32)


@pytest.mark.parametrize("cut", [0, 5, 31, 32, 33])
def test_truncated_payload(cut):
    p = _payload()
    with pytest.raises(ValueError, match="length"):
        OPS.decompress(p[:cut], [100], torch.float32)
    with pytest.raises(ValueError, match="length"):
        OPS.decompress(torch.cat([p, p[:1]]), [100], torch.float32)


def test_payload_tensor_errors():
    p = _payload()
    with pytest.raises(ValueError, match="1-D uint8"):
        OPS.decompress(p.to(torch.int32), [100], torch.float32)
    with pytest.raises(ValueError, match="1-D uint8"):
        OPS.decompress(p.view(1, -1), [100], torch.float32)
    with pytest.raises(ValueError, match="holds 99 elements"):
        OPS.decompress(p, [9, 11], torch.float32)
    with pytest.raises(ValueError, match="dtype must be float32"):
        OPS.decompress(p, [100], torch.int32)
    with pytest.raises(ValueError, match="weights must have one entry per payload"):
        OPS.decompress_sum([p, p], [1.0], [100], torch.float32)


def test_pack_unpack_errors():
    with pytest.raises(ValueError, match="codes must be uint8"):
        OPS.pack(torch.zeros(5, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="bits"):
        OPS.pack(torch.zeros(5, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="words must be int32"):
        OPS.unpack(torch.zeros(3, dtype=torch.uint8), 3, 5)
    with pytest.raises(ValueError, match="bits\\*ceil"):
        OPS.unpack(torch.zeros(4, dtype=torch.int32), 3, 5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        OPS.unpack(torch.zeros(0, dtype=torch.int32), 3, -1)


# ---- opcheck: schema, fake kernels and dispatch agree with the CPU kernels ----

def test_opcheck_all_ops():
    x = _x(200, torch.bfloat16).view(10, 20)
    p = OPS.compress(x, 3, 96, 0, SEED)
    q = OPS.compress(x, 5, 0, 2, SEED + 1)
    z = OPS.scale_truncate(x, 3, 96, 0)[1]
    codes = OPS.quantize(z, 3, 0, SEED)
    cases = {
        "compress": (x, 3, 96, 0, SEED),
        "decompress": (p, [10, 20], torch.float16),
        "decompress_sum": ([p, q], [0.5, 2.0], [200], torch.float32),
        "decompress_into": (p, torch.empty(10, 20, dtype=torch.float16)),
        "decompress_sum_into": ([p, q], [0.5, 2.0], torch.empty(200)),
        "scale_truncate": (x, 3, 96, 0),
        "quantize": (z, 3, 0, SEED),
        "pack": (codes, 3),
        "unpack": (OPS.pack(codes, 3), 3, 200),
    }
    assert set(cases) == set(__import__("tnq_kernels.ops", fromlist=["SCHEMAS"]).SCHEMAS)
    for name, args in cases.items():
        torch.library.opcheck(getattr(OPS, name).default, args)
