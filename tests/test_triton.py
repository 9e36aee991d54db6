"""What only the Triton backend has: its registry of tnq::triton_* ops. The ops' contracts on this backend (under
TRITON_INTERPRET=1 on CPU tensors, or compiled on CUDA tensors with TNQ_TEST_CUDA=1) are in the per-op files
(test_compress.py, ... with backend "triton"); torch.compile in test_api.py."""
import pytest
import torch

T = pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")


def test_every_public_op_has_a_triton_function_and_op():
    from tnq_kernels import ops
    assert all(callable(getattr(T, op)) for op in ops.SCHEMAS)
    assert {name[len("triton_"):] for name in ops.TRITON_OPS} == set(ops.SCHEMAS)
    assert all(hasattr(torch.ops.tnq, name) for name in ops.TRITON_OPS)
