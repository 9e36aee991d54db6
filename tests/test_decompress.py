"""tnq::decompress on every backend against the oracle: reference payloads decode to the reference's values, bit for
bit (NaN = NaN); shapes, dtypes, strided and misaligned payloads, the header's defaults; every corrupted header field
and truncated payload rejected with a ValueError naming the field before any data is read; opcheck."""
import struct

import pytest
import torch

from conftest import DTYPES, SIZES, assert_same_values, grid, laplace, matrix, opcheck
from tnq_kernels import codebooks as cb
from tnq_kernels import format as fmt
from tnq_kernels import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

SEED = 0x5EED_1234_ABCD
CODEBOOKS = sorted(cb.CODEBOOK_IDS.values())


def _x(n, seed=0):
    return laplace(n, scale=0.01, seed=seed)


def decodes_like_reference(backend, p, shape, dtype):
    got = backend.decompress(p, list(shape), dtype)
    assert_same_values(backend, got, ref.decompress(p, list(shape), dtype))
    return got


# ---- equal to the reference ----

@matrix("bits,dtype,n,block",
        cpu=grid([1, 2, 3, 5, 8], DTYPES, SIZES, [96]),
        # Triton also decodes every payload of test_compress's matrix
        triton=grid([1, 8], DTYPES, [33], [96]),
        cuda=grid([1, 2, 3, 5, 8], DTYPES, SIZES, [96]) + grid([2, 3, 4, 5], DTYPES, SIZES + [1_000_000], [0, 2048]))
def test_decompress_matches_reference(backend, bits, dtype, n, block):
    p = ref.compress(_x(n, seed=n + bits), bits, block, 0, SEED)
    decodes_like_reference(backend, p, [n], dtype)


@matrix("bits,codebook", cpu=grid([1, 6, 7, 8], [1]) + grid([3], CODEBOOKS), triton=grid([1, 6, 7, 8], [1]))
def test_decompress_every_width_and_codebook(backend, bits, codebook):
    p = ref.compress(_x(4099), bits, 96, codebook, SEED)
    decodes_like_reference(backend, p, [4099], torch.float32)


def test_decompress_shape_and_strided_payload(backend):
    x = _x(6 * 35)
    p = ref.compress(x, 4, 32, 1, SEED)
    padded = backend.to(torch.zeros(2 * p.numel(), dtype=torch.uint8))
    padded[::2] = backend.to(p)
    got = backend.decompress(padded[::2], [6, 35], torch.bfloat16)
    assert got.shape == (6, 35)
    assert_same_values(backend, got, ref.decompress(p, [6, 35], torch.bfloat16))


def test_decompress_non_finite_and_shape(backend):
    x = _x(3000)
    x[100] = float("inf")
    p = ref.compress(x, 3, 2048, 0, SEED)
    got = decodes_like_reference(backend, p, [30, 100], torch.bfloat16)
    assert got.shape == (30, 100)


# Found by this file: Triton viewed the payload as int32 words, which needs a 4-byte aligned start; a payload
# sliced out of a larger byte buffer may start anywhere.
def test_decompress_misaligned_payload(backend):
    x = _x(3000)
    x[100] = float("inf")
    p = ref.compress(x, 3, 2048, 0, SEED)
    buf = backend.to(torch.zeros(p.numel() + 1, dtype=torch.uint8))
    buf[1:] = backend.to(p)
    assert_same_values(backend, backend.decompress(buf[1:], [3000], torch.float32),
                       ref.decompress(p, [3000], torch.float32))


def test_decompress_shape_and_dtype_from_the_header(backend):
    x = laplace(5000, seed=8, dtype=torch.bfloat16)
    p = backend.compress(x, 3, 2048, 0, 42)
    got = backend.decompress(p)  # no shape, no dtype: read from the header
    assert got.shape == (5000,) and got.dtype == torch.bfloat16
    assert_same_values(backend, got, ref.decompress(ref.compress(x, 3, 2048, 0, 42), [5000], torch.bfloat16))


def test_decompress_zero_blocks_are_exact_zeros(backend):
    x = torch.zeros(4097)
    x[2048:2100] = 1.0
    y = backend.decompress(ref.compress(x, 3, 2048, 0, SEED), [4097], torch.float32).cpu()
    assert torch.equal(y[:2048], torch.zeros(2048)) and torch.equal(y[4096:], torch.zeros(1))


# ---- payload errors: a ValueError naming the header field, before any data is read ----

def _payload():
    return ref.compress(torch.randn(100, generator=torch.Generator().manual_seed(7)), 3, 32, 0, 7)


_BAD_CODEBOOK = max(CODEBOOKS) + 1
# (byte offset, struct format, value written there, field named)
CORRUPT = [
    (0, "4s", b"TNQX", "magic"), (0, "B", ord("X"), "magic"), (4, "B", 2, "version"), (5, "B", 0, "bits"),
    (5, "B", 9, "bits"), (6, "B", _BAD_CODEBOOK, "codebook"), (6, "B", 255, "codebook"), (7, "B", 3, "dtype"),
    (8, "I", 33, "block_size"), (8, "I", 2**31, "block_size"), (12, "I", 2, "flags"), (24, "Q", 1, "reserved"),
    (16, "Q", 2**63, "numel"), (16, "Q", 200, "length"), (5, "B", 4, "length"),
    (17, "B", 16, "length"),  # numel 100 -> 4196: more groups than the bytes hold
]


def _corrupt(offset, fc, value):
    raw = bytearray(_payload().numpy().tobytes())
    struct.pack_into("<" + fc, raw, offset, value)
    return raw


@pytest.mark.parametrize("offset,fc,value,field", CORRUPT)
def test_parse_header_names_the_field(offset, fc, value, field):
    # the Python parser (the reference's and Triton's) agrees with the native checks on the field
    raw = _corrupt(offset, fc, value)
    with pytest.raises(ValueError, match=field):
        fmt.parse_header(bytes(raw[:32]), len(raw))


@pytest.mark.parametrize("offset,fc,value,field", CORRUPT)
def test_decompress_corrupt_header_field_named(backend, offset, fc, value, field):
    bad = backend.to(torch.frombuffer(_corrupt(offset, fc, value), dtype=torch.uint8))
    p = backend.to(_payload())
    shape = [200] if field == "length" and offset == 16 else [100]
    with pytest.raises(ValueError, match=f"payload {field}"):
        backend.kernel("decompress")(bad, shape, torch.float32)
    with pytest.raises(ValueError, match=rf"payloads\[0\] {field}"):
        backend.kernel("decompress_sum")([bad, p], None, shape, torch.float32)
    if shape == [100]:  # else payloads[0] (p) fails the shape check first
        with pytest.raises(ValueError, match=rf"payloads\[1\] {field}"):
            backend.kernel("decompress_sum")([p, bad], None, shape, torch.float32)


@pytest.mark.parametrize("cut", [0, 5, 16, 31, 32, 33, -4])
def test_decompress_truncated_payload(backend, cut):
    p = backend.to(_payload())
    with pytest.raises(ValueError, match="length"):
        backend.kernel("decompress")(p[:cut], [100], torch.float32)
    with pytest.raises(ValueError, match="length"):
        backend.kernel("decompress")(torch.cat([p, p[:1]]), [100], torch.float32)


def test_decompress_payload_tensor_errors(backend):
    p = backend.to(_payload())
    decompress = backend.kernel("decompress")
    with pytest.raises(ValueError, match="1-D uint8"):
        decompress(p.to(torch.int32), [100], torch.float32)
    with pytest.raises(ValueError, match="1-D uint8"):
        decompress(p.view(1, -1), [100], torch.float32)
    with pytest.raises(ValueError, match="holds 99 elements"):
        decompress(p, [9, 11], torch.float32)
    with pytest.raises(ValueError, match=r"shape [\(\[]99,?[\)\]] holds 99 elements"):
        decompress(p, [99], torch.float32)
    with pytest.raises(ValueError, match="dtype must be float32"):
        decompress(p, [100], torch.int32)


def test_opcheck_decompress(backend):
    opcheck(backend, "decompress")
