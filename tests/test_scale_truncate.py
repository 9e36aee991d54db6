"""tnq::scale_truncate (job 1: per-block scale, then z = clamp(x·r), r = fp32(1/scale)) on every backend against the
oracle: scales and z identical bits, NaN blocks included; non-finite blocks truncate to c_0; opcheck. (Argument
errors: test_compress.py, which checks compress and scale_truncate together.)"""
import pytest
import torch

from conftest import DTYPES, SIZES, assert_same_values, grid, laplace, matrix, opcheck
from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

CODEBOOKS = sorted(cb.CODEBOOK_IDS.values())
BLOCKS = [0, 32, 96, 2048]


ALL = tuple(CODEBOOKS)


@matrix("dtype,n,block,bits,codebooks",
        cpu=grid(DTYPES, SIZES, BLOCKS, [3], [ALL]) + grid([torch.bfloat16], [4097], [96], [2, 5], [ALL]),
        triton=grid([torch.bfloat16], [4097], [0, 96, 2048], [2, 3, 4, 5], [(0,), (2,)]),
        cuda=grid(DTYPES, SIZES + [1_000_000], BLOCKS + [32768], [3], [ALL])
        + grid([torch.bfloat16], [4097], [0, 96, 2048], [2, 4, 5], [ALL]))
def test_scale_truncate_matches_reference(backend, dtype, n, block, bits, codebooks):
    x = laplace(n, scale=0.01, seed=bits, dtype=dtype)
    if n > 40:
        x[37] = float("nan")  # a NaN block: scale NaN, z = c_0
    for codebook in codebooks:
        _same_stage_one(backend, x, bits, block, codebook)


def _same_stage_one(backend, x, bits, block, codebook):
    s, z = backend.scale_truncate(x, bits, block, codebook)
    rs, rz = ref.scale_truncate(x, bits, block, codebook)
    assert_same_values(backend, s, rs)
    assert_same_values(backend, z, rz)
    if backend.name != "cuda":  # a NaN scale's bits too (CUDA's NaN differs: conftest.assert_same_payload)
        assert torch.equal(s.cpu().view(torch.int32), rs.view(torch.int32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_scale_truncate_non_finite_block(backend, bad):
    x = laplace(4096, seed=3)
    x[2100] = bad
    for block, codebook in ((0, 0), (2048, 0), (2048, max(CODEBOOKS))):
        lo = 2048 if block else 0
        scales, z = backend.scale_truncate(x, 3, block, codebook)
        assert not torch.isfinite(scales[-1]).item()
        assert torch.equal(z[lo:].cpu(), torch.full((4096 - lo,), cb.levels(codebook, 3)[0]))
        assert torch.isfinite(z[:lo]).all().item()


def test_opcheck_scale_truncate(backend):
    opcheck(backend, "scale_truncate")
