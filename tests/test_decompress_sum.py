"""tnq::decompress_sum on every backend against the oracle: Σ_w weights[w]·decode(payloads[w]) accumulated in fp32 in
the order w = 0, 1, ..., bit for bit; payloads of different bits, codebooks and block sizes; more payloads than one
launch takes; a 2-D all-gather output; argument errors; opcheck."""
import functools

import pytest
import torch

from conftest import DTYPES, assert_same_values, grid, laplace, matrix, opcheck
from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

SEED = 0x5EED_1234_ABCD
CODEBOOKS = sorted(cb.CODEBOOK_IDS.values())


@functools.lru_cache(maxsize=None)  # the same payloads serve every dtype and weighting
def _payloads_cached(world, n, mix):
    return tuple(_make_payloads(world, n, mix))


def _payloads(world, n, mix):
    return [p.clone() for p in _payloads_cached(world, n, mix)]


def _make_payloads(world, n, mix):
    """``world`` reference payloads of ``n`` elements. mix "bits-blocks-codebooks": (bits, block, codebook) cycle
    through their values, so a backend must handle payloads of different tables in one sum; "blocks": bits 3, tnq,
    the block size cycles; "same": bits 2, block 32, tnq (one table: the longest fused runs)."""
    out = []
    for w in range(world):
        if mix == "bits-blocks-codebooks":
            bits, block, codebook = (3, 2, 5, 4)[w % 4], (2048, 32, 0, 64)[w % 4], CODEBOOKS[w % len(CODEBOOKS)]
        elif mix == "blocks":
            bits, block, codebook = 3, (0, 2048, 64)[w % 3], 0
        else:
            bits, block, codebook = 2, 32, 0
        out.append(ref.compress(laplace(n, scale=0.01, seed=100 + w), bits, block, codebook, SEED + w))
    return out


def _weights(kind, world):
    if kind is None:
        return None
    if kind == "signed":
        return [(0.5, -1.25, 3.0)[w % 3] * (1 + w // 3) for w in range(world)]
    return [0.5 + w / 7 for w in range(world)]


@matrix("world,mix,weights,dtype,n",
        cpu=grid([3], ["bits-blocks-codebooks"], [None, "signed"], DTYPES, [1, 33, 4097])
        + grid([1], ["blocks", "bits-blocks-codebooks"], ["positive"], [torch.bfloat16], [3001]),
        triton=grid([3], ["blocks"], [None, "positive"], DTYPES, [3001]),
        cuda=grid([3], ["bits-blocks-codebooks"], [None, "signed"], DTYPES, [1, 33, 4097])
        + grid([1, 3, 17, 40], ["blocks", "bits-blocks-codebooks"], [None, "positive"], DTYPES, [33_333]))
def test_decompress_sum_matches_reference(backend, world, mix, weights, dtype, n):
    """world = 17 (> kMaxSum = 16 payloads of one table on CUDA) splits the sum into launches that continue from an
    fp32 accumulator; mixed bits and codebooks split it at every change of table. Bit-exact: under the interpreter
    every op is separate; on GPUs mul_rn/add_rn forbid FMA contraction."""
    ps = _payloads(world, n, mix)
    w = _weights(weights, world)
    got = backend.decompress_sum(ps, w, [n], dtype)
    assert_same_values(backend, got, ref.decompress_sum(ps, w, [n], dtype))


@matrix("world", cpu=[11], triton=[11], cuda=[11, 17])
def test_decompress_sum_many_payloads_chains_launches(backend, world):
    ps = _payloads(world, 777, "same")  # Triton: 8 fused + 3, through fp32
    w = [0.1 * (i + 1) for i in range(world)]
    stacked = backend.to(torch.stack(ps))  # e.g. an all-gather output, passed row by row
    got = backend.decompress_sum(list(stacked.unbind(0)), w, (7, 111), torch.bfloat16)
    assert_same_values(backend, got, ref.decompress_sum(ps, w, (7, 111), torch.bfloat16))


def test_decompress_sum_of_a_2d_gather(backend):
    ps = torch.stack(_payloads(4, 5000, "same"))
    got = backend.decompress_sum(ps)  # [W, bytes] uint8; shape and dtype from the header
    assert_same_values(backend, got, ref.decompress_sum(list(ps), None, [5000], torch.float32))


def test_decompress_sum_single_is_decompress(backend):
    p = backend.compress(laplace(777, scale=0.01, dtype=torch.float16), 3, 96, 0, SEED)
    assert torch.equal(backend.decompress_sum([p], None, [777], torch.float32),
                       backend.decompress(p, [777], torch.float32))


# ---- argument errors (header errors: test_decompress.py) ----

def test_decompress_sum_argument_errors(backend):
    p = backend.to(_payloads(1, 100, "same")[0])
    with pytest.raises(ValueError, match="weights must have one entry per payload"):
        backend.kernel("decompress_sum")([p, p], [1.0], [100], torch.float32)
    with pytest.raises(ValueError, match=r"shape [\(\[]99,?[\)\]] holds 99 elements but payloads\[0\]"):
        backend.kernel("decompress_sum")([p, p], None, [99], torch.float32)
    with pytest.raises(ValueError, match="dtype must be float32"):
        backend.kernel("decompress_sum")([p], None, [100], torch.int32)


@matrix("", cpu=[()], devices=("cuda",))
def test_decompress_sum_payloads_on_two_devices(backend):
    p = backend.to(_payloads(1, 100, "same")[0])
    with pytest.raises(ValueError, match=r"payloads\[1\]"):
        backend.kernel("decompress_sum")([p, p.cpu()], None, [100], torch.float32)


def test_opcheck_decompress_sum(backend):
    opcheck(backend, "decompress_sum")
