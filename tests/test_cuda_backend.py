"""What only the C++ CUDA backend has: streams and device guards. The ops' contracts on this backend are in the
per-op files (test_compress.py, ... with backend "cuda"), which need a CUDA device and an extension built with nvcc
(benchmarks/gpu_check.py runs them with TNQ_TEST_CUDA=1); TNQ_TEST_BIG=1 adds the 2^32-element check there.
"""
from __future__ import annotations

import pytest
import torch

from conftest import assert_same_payload, assert_same_values, laplace, only
from tnq_kernels import reference

SEED = 0x5EED_1234_ABCD


def data(backend, n, dtype, seed=0):
    return backend.to(laplace(n, scale=0.01, seed=seed, dtype=dtype))


@only("cuda")
def test_compress_on_a_side_stream(backend):
    x = data(backend, 1_000_000, torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = backend.compress(x, 3, 2048, 0, SEED)
        out = backend.decompress(got, list(x.shape), x.dtype)
    s.synchronize()
    assert_same_payload(backend, got, reference.compress(x.cpu(), 3, 2048, 0, SEED))
    assert_same_values(backend, out, reference.decompress(got.cpu(), list(x.shape), x.dtype))


@only("cuda")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs to check the device guard")
def test_second_device(backend):
    import tnq_kernels  # not through `backend`, whose helpers move tensors to the current device
    x = data(backend, 50_000, torch.float32).to("cuda:1")
    got = tnq_kernels.compress(x, 3, 2048, 0, SEED, backend=backend.api)
    assert got.device == x.device
    assert torch.equal(got.cpu(), reference.compress(x.cpu(), 3, 2048, 0, SEED))
    out = tnq_kernels.decompress_sum([got, got], [0.5, 0.5], backend=backend.api)
    assert out.device == x.device
