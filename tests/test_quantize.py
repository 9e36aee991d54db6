"""tnq::quantize (job 2: codebook lookup + unbiased stochastic rounding keyed by (seed, index)) on every backend against
the oracle: codes identical at equal seed, for every width and codebook, with NaN, ±inf, ±0 and subnormal z, and a
non-contiguous z; argument errors; opcheck."""
import pytest
import torch

from conftest import grid, laplace, matrix, opcheck
from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref
from tnq_kernels import rng

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

SEED = 0x5EED_1234_ABCD
CODEBOOKS = sorted(cb.CODEBOOK_IDS.values())
SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40]


def _z(n, bits, source, nan=True):
    """fp32 z of n elements, the first ones special (NaN among them if ``nan``): "randn" unclamped N(0, 3²) values
    (quantize clamps them itself), "truncated" the output of the reference's scale_truncate."""
    if source == "randn":
        z = torch.randn(n, generator=torch.Generator().manual_seed(bits)) * 3
    else:
        z = ref.scale_truncate(laplace(n, seed=bits), bits, 2048, 0)[1]
    special = SPECIAL if nan else SPECIAL[1:]
    z[:len(special)] = torch.tensor(special)
    return z


# z = NaN rounds to code s - 1 on every backend (Triton once gave 0). compress never hands quantize a NaN (a
# non-finite block truncates to c_0), so only the stage op can see one.


ROUNDINGS = sorted(rng.ROUNDING_IDS)


@matrix("bits,codebook,n,source,nan,rounding",
        cpu=grid(range(1, 9), CODEBOOKS, [4097], ["randn"], [True], ROUNDINGS)
        + grid([3], CODEBOOKS, [4097], ["truncated"], [True], ROUNDINGS),
        triton=grid([2, 3, 4, 5], [0, 2], [4097], ["truncated"], [False], ROUNDINGS)
        + [(3, 0, 4097, "truncated", True, r) for r in ROUNDINGS],
        cuda=grid(range(1, 9), CODEBOOKS, [4097], ["randn"], [True], ROUNDINGS)
        + grid(range(1, 9), CODEBOOKS, [100_003], ["truncated"], [True], ROUNDINGS))
def test_quantize_matches_reference(backend, bits, codebook, n, source, nan, rounding):
    z = _z(n, bits, source, nan)
    got = backend.quantize(z, bits, codebook, SEED, rounding)
    assert got.device.type == backend.device.type
    assert torch.equal(got.cpu(), ref.quantize(z, bits, codebook, SEED, rng.ROUNDING_IDS[rounding]))


@matrix("bits", cpu=[2, 3, 5], triton=[2], cuda=[2, 3, 5])
def test_quantize_nearest_ties_round_down_and_ignore_the_seed(backend, bits):
    """z at a cell's midpoint (p = 0.5 exactly in fp32) keeps the lower level; just above it rounds up; the seed
    changes nothing."""
    c = torch.tensor(cb.levels(0, bits), dtype=torch.float32)
    r = torch.tensor(cb.inv_gaps(0, bits), dtype=torch.float32)
    mid = c[:-1] + (c[1:] - c[:-1]) / 2
    # the 33 fp32 values around each midpoint: some have p = 0.5 exactly (ties), the others straddle them
    z = (mid.view(torch.int32)[:, None] + torch.arange(-16, 17, dtype=torch.int32)).view(torch.float32).reshape(-1)
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
    p = (z - c[k]) * r[k]
    want = (k + (p > 0.5).long()).to(torch.uint8)
    assert (p == 0.5).any() and (p < 0.5).any() and (p > 0.5).any()  # the test can tell ties down from up
    for seed in (SEED, 0, -1):
        got = backend.quantize(z, bits, 0, seed, "nearest").cpu()
        assert torch.equal(got, want)
        assert torch.equal(got, ref.quantize(z, bits, 0, seed, rng.NEAREST))


@matrix("bits,nan", cpu=grid(range(1, 9), [True]), triton=[(3, False)])
def test_quantize_non_contiguous(backend, bits, nan):
    z = backend.to(_z(4097, bits, "randn", nan)).view(17, 241).t()
    assert not z.is_contiguous()
    assert torch.equal(backend.quantize(z, bits, 0, 1).cpu(), ref.quantize(z.cpu(), bits, 0, 1))


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.uint8, torch.bfloat16])
def test_quantize_dtype_errors(backend, dtype):
    with pytest.raises(ValueError, match="z must be float32"):
        backend.kernel("quantize")(backend.to(torch.ones(10, dtype=dtype)), 3, 0, 0)


@pytest.mark.parametrize("rounding", [2, -1, 7])
def test_quantize_rounding_id_errors(backend, rounding):
    msg = f"rounding must be one of 'stochastic' \\(0\\), 'nearest' \\(1\\), got {rounding}"
    with pytest.raises(ValueError, match=msg):
        backend.kernel("quantize")(backend.to(torch.zeros(10)), 3, 0, 0, rounding)


def test_opcheck_quantize(backend):
    opcheck(backend, "quantize")
