"""What only the Triton backend has: its registry of tnq::triton_* ops. The ops' contracts on this backend (under
TRITON_INTERPRET=1 on CPU tensors, or compiled on CUDA tensors with TNQ_TEST_CUDA=1) are in the per-op files
(test_compress.py, ... with backend "triton"); torch.compile in test_api.py."""
import os

import pytest
import torch

from tnq_kernels import rng

T = pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")
import triton  # noqa: E402  (only where the backend imports)
import triton.language as tl  # noqa: E402
from tnq_kernels.triton import _common as C  # noqa: E402


def test_every_public_op_has_a_triton_function_and_op():
    from tnq_kernels import ops
    assert all(callable(getattr(T, op)) for op in ops.SCHEMAS)
    assert {name[len("triton_"):] for name in ops.TRITON_OPS} == set(ops.SCHEMAS)
    assert all(hasattr(torch.ops.tnq, name) for name in ops.TRITON_OPS)



@triton.jit
def draw_kernel(idx_ptr, out_ptr, i_first, key0, key1, N: tl.constexpr, ONE_PROGRAM: tl.constexpr):
    """U of _common.uniform16 (what round_codes draws) for N indices per program."""
    pid = tl.program_id(0)
    lane = tl.arange(0, N)
    if ONE_PROGRAM:
        idx = tl.load(idx_ptr + lane)
        first = i_first
    else:
        idx = tl.load(idx_ptr + pid + 0 * lane)
        first = tl.load(idx_ptr + pid)
    u = C.uniform16(idx, first, key0.to(tl.uint32, bitcast=True), key1.to(tl.uint32, bitcast=True))
    tl.store(out_ptr + pid * N + lane, u)


def test_generator_vectors_of_the_docs():
    # SPEC v1.2 in Triton's own code: m of the docs/RNG.md vectors, one program per index (i_first = the index),
    # plus one program whose elements straddle 2^33 (two pair keys)
    from test_rng import ELEMENTS, VECTORS
    device = "cuda" if os.environ.get("TNQ_TEST_CUDA") == "1" else "cpu"
    for seed, (_, m) in VECTORS.items():
        k0, k1 = C.seed_args(seed)
        idx = torch.tensor(ELEMENTS, dtype=torch.int64, device=device)
        out = torch.empty(len(ELEMENTS) * 2, dtype=torch.float32, device=device)
        draw_kernel[(len(ELEMENTS),)](idx, out, 0, k0, k1, N=2, ONE_PROGRAM=False)
        assert (out.view(-1, 2)[:, 0].double() * 65536 - 0.5).long().tolist() == m
        straddle = torch.arange(2**33 - 8, 2**33 + 8, dtype=torch.int64, device=device)
        out = torch.empty(16, dtype=torch.float32, device=device)
        draw_kernel[(1,)](straddle, out, 2**33 - 8, k0, k1, N=16, ONE_PROGRAM=True)
        assert torch.equal(out.cpu(), rng.uniform_tensor(seed, straddle.cpu()))
