"""decompress_into / decompress_sum_into (and the public API's out=): bit-equal to decompress / decompress_sum, on the
C++ CPU kernels and the reference, and every bad `out` rejected with an error naming `out`."""
import pytest
import torch

import tnq_kernels as tnq
from tnq_kernels import reference as ref

from conftest import DTYPES, laplace

OPS = torch.ops.tnq
SIZES = [0, 1, 31, 33, 4097]
SEED = 77


@pytest.fixture(autouse=True)
def _native(native):
    return native


def _payloads(n, dtype, count, bits=3, block=96):
    return [OPS.compress(laplace(n, scale=0.1 * (w + 1), seed=w, dtype=dtype), bits, block, 0, SEED + w)
            for w in range(count)]


def _garbage(shape, dtype):
    # a NaN-filled out: an element the kernel forgets to write cannot pass as equal
    return torch.full(shape, float("nan"), dtype=dtype)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
def test_decompress_into_equals_decompress(src_dtype, out_dtype, n):
    (p,) = _payloads(n, src_dtype, 1)
    want = OPS.decompress(p, [n], out_dtype)
    for into in (OPS.decompress_into, ref.decompress_into):
        out = _garbage([n], out_dtype)
        assert into(p, out) is None
        assert torch.equal(out.view(torch.uint8) if n else out, want.view(torch.uint8) if n else want)
    assert torch.equal(ref.decompress(p, [n], out_dtype), want)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_decompress_sum_into_equals_decompress_sum(out_dtype, n, world, weighted):
    ps = _payloads(n, torch.float32, world, bits=2 + world)
    weights = [0.5, -1.25, 3.0][:world] if weighted else None
    want = OPS.decompress_sum(ps, weights, [n], out_dtype)
    for into in (OPS.decompress_sum_into, ref.decompress_sum_into):
        out = _garbage([n], out_dtype)
        into(ps, weights, out)
        assert torch.equal(out.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(ref.decompress_sum(ps, weights, [n], out_dtype), want)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_api_out_returns_out_with_its_shape_and_dtype(backend):
    x = laplace(4097 * 2, seed=5).view(2, 4097)
    p = tnq.compress(x, 4, 2048, seed=SEED)
    q = tnq.compress(2 * x, 4, 2048, seed=SEED + 1)
    out = _garbage([4097, 2], torch.bfloat16)
    assert tnq.decompress(p, backend=backend, out=out) is out
    assert torch.equal(out, tnq.decompress(p, [4097, 2], torch.bfloat16))
    assert tnq.decompress_sum([p, q], [0.5, 0.5], backend=backend, out=out) is out
    assert torch.equal(out, tnq.decompress_sum([p, q], [0.5, 0.5], [4097, 2], torch.bfloat16))
    assert tnq.decompress_sum(torch.stack([p, q]), backend=backend, out=out) is out
    with pytest.raises(ValueError, match="out"):
        tnq.decompress(p, [4097, 2], torch.float32, backend=backend, out=out)  # dtype disagrees with out
    with pytest.raises(ValueError, match="out"):
        tnq.decompress(p, [2, 4097], backend=backend, out=out)  # shape disagrees with out


def _bad_outs(p):
    """(words the error must hold, out) pairs that must each be rejected; p is a payload of 4097 elements."""
    n = 4097
    big = torch.empty(2 * n)
    yield "elements", torch.empty(n + 1)
    yield "elements", torch.empty(0)
    yield "float32, float16 or bfloat16", torch.empty(n, dtype=torch.float64)
    yield "float32, float16 or bfloat16", torch.empty(n, dtype=torch.int32)
    yield "contiguous", big[::2]
    yield "contiguous", torch.empty(n, 2)[:, 0]
    yield "device", torch.empty(n, device="meta")
    # out sharing bytes with the payload: its tail aliases the payload's first bytes
    buf = torch.zeros(p.numel() + 4 * n, dtype=torch.uint8)
    buf[4 * n - 8: 4 * n - 8 + p.numel()].copy_(p)
    yield ("overlaps", buf[4 * n - 8: 4 * n - 8 + p.numel()]), buf[: 4 * n].view(torch.float32)


@pytest.mark.parametrize("into", ["native", "reference"])
def test_bad_out_raises_naming_out(into):
    (p,) = _payloads(4097, torch.float32, 1)
    dec = OPS.decompress_into if into == "native" else ref.decompress_into
    dec_sum = OPS.decompress_sum_into if into == "native" else ref.decompress_sum_into
    for what, out in _bad_outs(p):
        payload = p
        if isinstance(what, tuple):
            what, payload = what
        with pytest.raises((ValueError, RuntimeError), match="out") as e:
            dec(payload, out)
        assert what in str(e.value), str(e.value)
        with pytest.raises((ValueError, RuntimeError), match="out"):
            dec_sum([p, payload], None, out)
    # the payloads' own numel must agree, whatever out is
    (short,) = _payloads(33, torch.float32, 1)
    with pytest.raises(ValueError, match="payloads\\[1\\]"):
        dec_sum([p, short], None, torch.empty(4097))


def test_bad_payload_still_names_the_payload():
    (p,) = _payloads(100, torch.float32, 1)
    bad = p.clone()
    bad[0] = 0
    with pytest.raises(ValueError, match="payload magic"):
        OPS.decompress_into(bad, torch.empty(100))
    with pytest.raises(ValueError, match="payloads\\[1\\] magic"):
        OPS.decompress_sum_into([p, bad], None, torch.empty(100))


def test_opcheck_into_ops():
    p, q = _payloads(200, torch.bfloat16, 2)
    torch.library.opcheck(OPS.decompress_into.default, (p, torch.empty(10, 20, dtype=torch.float16)))
    torch.library.opcheck(OPS.decompress_sum_into.default, ([p, q], [0.5, 2.0], torch.empty(200)))
    torch.library.opcheck(OPS.decompress_sum_into.default, ([p, q], None, torch.empty(200, dtype=torch.bfloat16)))
