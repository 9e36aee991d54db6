import os

# Triton kernels run under the interpreter on CPU-only machines; @triton.jit reads this when a kernel is defined,
# so it must be set before any test imports tnq_kernels.triton.
if os.environ.get("TNQ_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [0, 1, 31, 32, 33, 4097]


def laplace(n, scale=1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(dtype)


@pytest.fixture
def native():
    """The C++ extension must be built for tests that exercise torch.ops.tnq on CPU tensors."""
    from tnq_kernels import ops
    if ops.native_error is not None:
        pytest.fail(f"C++ extension not built ({ops.native_error}); run `make build` first")
    return ops
