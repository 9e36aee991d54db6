"""tnq::pack and tnq::unpack (job 3: bit planes, codes uint8 [n] <-> int32 words [bits·ceil(n/32)]) on every backend
against the oracle: words identical, unpack inverts pack, code bits above ``bits`` ignored; argument errors;
opcheck."""
import pytest
import torch

from conftest import SIZES, grid, matrix, opcheck
from tnq_kernels import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


@matrix("bits,n,high_bits",
        cpu=grid(range(1, 9), SIZES + [1000], [True]),
        triton=grid(range(1, 9), [0, 1, 31, 33, 1000], [False]) + grid([3], [33], [True]),
        cuda=grid(range(1, 9), SIZES + [1000, 1_000_000], [True, False]))
def test_pack_unpack_match_reference(backend, bits, n, high_bits):
    """high_bits: codes drawn from 0..255, whose bits above ``bits`` pack must ignore (as the reference does)."""
    gen = torch.Generator().manual_seed(n + bits)
    codes = torch.randint(0, 256 if high_bits else 1 << bits, (n,), generator=gen, dtype=torch.int64).to(torch.uint8)
    words = backend.pack(codes, bits)
    assert words.device.type == backend.device.type
    assert words.dtype == torch.int32 and torch.equal(words.cpu(), ref.pack(codes, bits))
    back = backend.unpack(words, bits, n)
    assert torch.equal(back.cpu(), ref.unpack(words.cpu(), bits, n))
    assert torch.equal(back.cpu(), codes & ((1 << bits) - 1))


def test_pack_unpack_errors(backend):
    pack, unpack = backend.kernel("pack"), backend.kernel("unpack")
    with pytest.raises(ValueError, match="codes must be uint8"):
        pack(backend.to(torch.zeros(5, dtype=torch.int32)), 3)
    with pytest.raises(ValueError, match="bits"):
        pack(backend.to(torch.zeros(5, dtype=torch.uint8)), 0)
    with pytest.raises(ValueError, match="bits"):
        pack(backend.to(torch.zeros(5, dtype=torch.uint8)), 9)
    with pytest.raises(ValueError, match="words must be int32"):
        unpack(backend.to(torch.zeros(3, dtype=torch.uint8)), 3, 5)
    with pytest.raises(ValueError, match="bits\\*ceil"):
        unpack(backend.to(torch.zeros(4, dtype=torch.int32)), 3, 5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        unpack(backend.to(torch.zeros(0, dtype=torch.int32)), 3, -1)


def test_opcheck_pack(backend):
    opcheck(backend, "pack")


def test_opcheck_unpack(backend):
    opcheck(backend, "unpack")
