"""The Triton backend against the oracle (tnq_kernels.reference), code for code at equal seed.

On CPU-only machines the kernels run under TRITON_INTERPRET=1 on CPU tensors (set by conftest.py, and again here,
before tnq_kernels.triton is imported: @triton.jit reads it when a kernel is defined). With TNQ_TEST_CUDA=1 and a
GPU the same tests run the compiled kernels on CUDA tensors. Inputs are small so the interpreter stays fast.
"""
import os

if os.environ.get("TNQ_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from conftest import DTYPES, SIZES, laplace
from tnq_kernels import checks
from tnq_kernels import codebooks as cb
from tnq_kernels import format as fmt
from tnq_kernels import reference as R

T = pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")

CUDA = os.environ.get("TNQ_TEST_CUDA") == "1"
if CUDA and not torch.cuda.is_available():
    pytest.skip("TNQ_TEST_CUDA=1 but torch sees no CUDA device", allow_module_level=True)
DEVICE = "cuda" if CUDA else "cpu"
# The interpreter multiplies uint32 with numpy, which wraps (as the hash wants) but warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

BLOCKS = [0, 32, 96, 2048]
SEED = 0x1234_5678_9ABC


def on(x):
    return x.to(DEVICE)


def same_payload(x, bits, block, codebook=0, seed=SEED):
    want = R.compress(x, bits, block, codebook, seed)
    got = T.compress(on(x), bits, block, codebook, seed)
    assert got.dtype == torch.uint8 and got.numel() == want.numel() == fmt.payload_bytes(x.numel(), bits, block)
    diff = (got.cpu() != want).nonzero().flatten()
    assert diff.numel() == 0, f"payload bytes differ at {diff[:8].tolist()} (codes start at " \
                              f"{fmt.codes_offset(x.numel(), block)})"
    return got


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_compress_equals_reference(bits, dtype, n, block):
    x = laplace(n, seed=n + bits, dtype=dtype)
    p = same_payload(x, bits, block)
    y = T.decompress(p, x.shape, dtype)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y.cpu(), R.decompress(p.cpu(), x.shape, dtype))


@pytest.mark.parametrize("bits", [1, 6, 7, 8])
@pytest.mark.parametrize("n,block", [(33, 0), (4097, 96), (4097, 2048)])
def test_compress_equals_reference_all_bits(bits, n, block):
    x = laplace(n, seed=bits)
    p = same_payload(x, bits, block)
    assert torch.equal(T.decompress(p, [n], torch.float32).cpu(), R.decompress(p.cpu(), [n], torch.float32))


@pytest.mark.parametrize("codebook", sorted(cb.CODEBOOK_IDS))
@pytest.mark.parametrize("block", [0, 96, 2048])
def test_every_codebook(codebook, block):
    same_payload(laplace(3000, seed=7), 3, block, cb.codebook_id(codebook))


@pytest.mark.parametrize("block", [0, 2048, 8192])  # 8192: the two-pass path for blocks above one register tile
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_input(block, dtype):
    x = laplace(100_003, scale=1e-3, seed=11, dtype=dtype)
    p = same_payload(x, 4, block, seed=-5)  # a negative seed is read as its two's complement
    assert torch.equal(T.decompress(p, x.shape, dtype).cpu(), R.decompress(p.cpu(), x.shape, dtype))


def test_non_contiguous_input():
    x = laplace(64 * 70, seed=2).view(64, 70).t()[::2]
    assert not x.is_contiguous()
    p = same_payload(x, 3, 32)
    assert torch.equal(p.cpu(), R.compress(x.contiguous(), 3, 32, 0, SEED))
    assert T.decompress(p, x.shape, x.dtype).shape == x.shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("codebook", [0, 3])
@pytest.mark.parametrize("block", [0, 2048])
def test_nonfinite_block(bad, codebook, block):
    x = laplace(4096, seed=3)
    x[2100] = bad
    p = same_payload(x, 3, block, codebook)
    assert checks.read_header(p).flags & fmt.FLAG_NONFINITE
    y = T.decompress(p, x.shape, torch.float32).cpu()
    lo = 2048 if block else 0
    assert torch.isfinite(y[:lo]).all() and not torch.isfinite(y[lo:]).any()
    scales, z = T.scale_truncate(on(x), 3, block, codebook)
    assert torch.equal(z[lo:].cpu(), torch.full((4096 - lo,), cb.levels(codebook, 3)[0]))


def test_zero_blocks_decode_to_exact_zeros():
    x = torch.zeros(5000)
    x[4096:] = laplace(904, seed=4)
    p = same_payload(x, 3, 2048)
    assert checks.read_header(p).flags == 0
    assert torch.equal(T.decompress(p, x.shape, torch.float32)[:4096].cpu(), torch.zeros(4096))
    same_payload(torch.zeros(100), 3, 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("block", [0, 96, 2048])
@pytest.mark.parametrize("codebook", [0, 2])
def test_stage_ops_equal_reference(bits, block, codebook):
    x = laplace(4097, seed=bits, dtype=torch.bfloat16)
    s_want, z_want = R.scale_truncate(x, bits, block, codebook)
    s_got, z_got = T.scale_truncate(on(x), bits, block, codebook)
    assert torch.equal(s_got.cpu(), s_want) and torch.equal(z_got.cpu(), z_want)
    codes = T.quantize(on(z_want), bits, codebook, SEED)
    assert torch.equal(codes.cpu(), R.quantize(z_want, bits, codebook, SEED))
    words = T.pack(codes, bits)
    assert torch.equal(words.cpu(), R.pack(codes.cpu(), bits))
    assert torch.equal(T.unpack(words, bits, 4097).cpu(), codes.cpu())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 31, 33, 1000])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    words = T.pack(on(codes), bits)
    assert torch.equal(words.cpu(), R.pack(codes, bits))
    assert torch.equal(T.unpack(words, bits, n).cpu(), codes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", [None, [0.5, 0.25, 0.3]])
def test_decompress_sum_equals_reference(dtype, weights):
    # bit-exact: under the interpreter every op is separate; on GPUs mul_rn/add_rn forbid FMA contraction
    ps = [R.compress(laplace(3001, seed=i), b, blk, 0, i) for i, (b, blk) in enumerate([(3, 2048), (3, 2048), (5, 96)])]
    want = R.decompress_sum(ps, weights, (3001,), dtype)
    got = T.decompress_sum([on(p) for p in ps], weights, (3001,), dtype)
    assert got.dtype == dtype and torch.equal(got.cpu(), want)


def test_decompress_sum_many_payloads_chains_launches():
    ps = [R.compress(laplace(777, seed=i), 2, 32, 0, i) for i in range(11)]  # 8 fused + 3, through fp32
    w = [0.1 * (i + 1) for i in range(11)]
    stacked = on(torch.stack(ps))  # e.g. an all-gather output, passed row by row
    assert torch.equal(T.decompress_sum(list(stacked.unbind(0)), w, (7, 111), torch.bfloat16).cpu(),
                       R.decompress_sum(ps, w, (7, 111), torch.bfloat16))


def test_unbiased_wrt_truncated_value():
    # 256 copies of one block in a single call: same scale, independent rounding noise (different indices)
    runs, x = 256, laplace(2048, scale=0.01, seed=5)
    x[:4] = torch.tensor([0.0, -0.2, 0.2, 0.0301])  # zero and clipped values
    p = T.compress(on(x.repeat(runs)), 3, 2048, 0, SEED)
    y = T.decompress(p, (runs, 2048), torch.float32).double().cpu()
    scales, z = R.scale_truncate(x, 3, 2048, 0)
    c = torch.tensor(cb.levels(0, 3))
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
    p_up = ((z - c[k]) / (c[k + 1] - c[k])).double()
    std = (p_up * (1 - p_up)).sqrt() * (c[k + 1] - c[k]).double() * scales[0].double() / runs**0.5
    zscore = (y.mean(0) - (z * scales[0]).double()) / std.clamp_min(1e-30)
    exact = std == 0
    assert torch.allclose(y.mean(0)[exact], (z * scales[0]).double()[exact], rtol=1e-6, atol=0)
    assert zscore[~exact].abs().max() < 6
    assert abs(zscore[~exact].mean().item()) < 6 / (~exact).sum().item() ** 0.5


def test_corrupted_payload_is_rejected_before_launch():
    p = T.compress(on(laplace(100, seed=1)), 3, 32, 0, 1).cpu()
    bad = p.clone()
    bad[5] = 9
    with pytest.raises(ValueError, match="bits"):
        T.decompress(on(bad), [100], torch.float32)
    with pytest.raises(ValueError, match="length"):
        T.decompress(on(p[:-4]), [100], torch.float32)
    with pytest.raises(ValueError, match=r"shape \(99,\)"):
        T.decompress(on(p), [99], torch.float32)
    with pytest.raises(ValueError, match=r"payloads\[1\]"):
        T.decompress_sum([on(p), on(bad)], None, [100], torch.float32)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bits"):
        T.compress(on(torch.ones(4)), 9, 32, 0, 1)
    with pytest.raises(ValueError, match="block_size"):
        T.compress(on(torch.ones(4)), 3, 33, 0, 1)
    with pytest.raises(ValueError, match="float32"):
        T.compress(on(torch.ones(4, dtype=torch.float64)), 3, 32, 0, 1)


def test_every_public_op_has_a_triton_function_and_op():
    from tnq_kernels import ops
    allocating = {op for op in ops.SCHEMAS if not op.endswith("_into")}
    assert all(callable(getattr(T, op)) for op in allocating)
    assert {name[len("triton_"):] for name in ops.TRITON_OPS} == allocating
    assert all(hasattr(torch.ops.tnq, name) for name in ops.TRITON_OPS)


def test_public_api_backend_triton():
    import tnq_kernels
    x = on(laplace(5000, seed=8))
    p = tnq_kernels.compress(x, bits=3, seed=42, backend="triton")
    assert torch.equal(p.cpu(), tnq_kernels.compress(x.cpu(), bits=3, seed=42, backend="reference"))
    assert torch.equal(tnq_kernels.decompress(p, backend="triton").cpu(),
                       tnq_kernels.decompress(p.cpu(), backend="reference"))


def test_opcheck_triton_ops():
    x = on(laplace(200, seed=1))
    table = T._common.table(0, 3, x.device)
    torch.library.opcheck(torch.ops.tnq.triton_compress, (x, table, 3, 96, 0, 7))
    torch.library.opcheck(torch.ops.tnq.triton_scale_truncate, (x, table, 3, 96, 0))
    torch.library.opcheck(torch.ops.tnq.triton_pack, (on(torch.arange(200, dtype=torch.uint8) % 8), 3))
    p = T.compress(x, 3, 96, 0, 7)
    torch.library.opcheck(torch.ops.tnq.triton_decompress, (p, [10, 20], torch.bfloat16))
    torch.library.opcheck(torch.ops.tnq.triton_decompress_sum, ([p, p], [0.5, 2.0], [200], torch.float32))


def test_compile_fullgraph_compress_decompress():
    # CPU: "aot_eager" runs dynamo + AOTAutograd, where triton_op decomposes into wrap_triton kernel calls (the
    # graph Inductor would get); Inductor itself would emit GPU launch code for them, so it needs CUDA.
    import tnq_kernels
    torch._dynamo.reset()

    def f(x):
        p = tnq_kernels.compress(x, bits=3, block_size=96, seed=5, backend="triton")
        return tnq_kernels.decompress(p, x.shape, x.dtype, backend="triton")

    x = on(laplace(1000, seed=3).view(10, 100))
    got = torch.compile(f, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(x)
    assert torch.equal(got, f(x))
