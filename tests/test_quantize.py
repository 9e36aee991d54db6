"""tnq::quantize (job 2: codebook lookup + unbiased stochastic rounding keyed by (seed, index)) on every backend against
the oracle: codes identical at equal seed, for every width and codebook, with NaN, ±inf, ±0 and subnormal z, and a
non-contiguous z; argument errors; opcheck."""
import pytest
import torch

from conftest import grid, laplace, matrix, opcheck
from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref

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


@matrix("bits,codebook,n,source,nan",
        cpu=grid(range(1, 9), CODEBOOKS, [4097], ["randn"], [True])
        + grid([3], CODEBOOKS, [4097], ["truncated"], [True]),
        triton=grid([2, 3, 4, 5], [0, 2], [4097], ["truncated"], [False])
        + [(3, 0, 4097, "truncated", True)],
        cuda=grid(range(1, 9), CODEBOOKS, [4097], ["randn"], [True])
        + grid(range(1, 9), CODEBOOKS, [100_003], ["truncated"], [True]))
def test_quantize_matches_reference(backend, bits, codebook, n, source, nan):
    z = _z(n, bits, source, nan)
    got = backend.quantize(z, bits, codebook, SEED)
    assert got.device.type == backend.device.type
    assert torch.equal(got.cpu(), ref.quantize(z, bits, codebook, SEED))


@matrix("bits,nan", cpu=grid(range(1, 9), [True]), triton=[(3, False)])
def test_quantize_non_contiguous(backend, bits, nan):
    z = backend.to(_z(4097, bits, "randn", nan)).view(17, 241).t()
    assert not z.is_contiguous()
    assert torch.equal(backend.quantize(z, bits, 0, 1).cpu(), ref.quantize(z.cpu(), bits, 0, 1))


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.uint8, torch.bfloat16])
def test_quantize_dtype_errors(backend, dtype):
    with pytest.raises(ValueError, match="z must be float32"):
        backend.kernel("quantize")(backend.to(torch.ones(10, dtype=dtype)), 3, 0, 0)


def test_opcheck_quantize(backend):
    opcheck(backend, "quantize")
