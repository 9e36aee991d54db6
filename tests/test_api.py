"""The public API and the op registry: argument errors, backend choice, fakes, opcheck and torch.compile."""
import os
import subprocess
import sys

import pytest
import torch

import tnq_kernels as tnq
from conftest import laplace
from tnq_kernels import format as fmt
from tnq_kernels import ops


@pytest.mark.parametrize("kwargs,field", [
    (dict(bits=0), "bits"), (dict(bits=9), "bits"), (dict(bits=2.0), "bits"),
    (dict(block_size=33), "block_size"), (dict(block_size=-32), "block_size"),
    (dict(codebook="uniform"), "codebook"), (dict(seed=2**64), "seed"), (dict(seed=1.5), "seed"),
    (dict(backend="cuda-fast"), "backend"),
])
def test_bad_arguments_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tnq.compress(torch.randn(10), **{"backend": "reference", **kwargs})


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.float64, torch.bool])
def test_wrong_dtype_is_named(dtype):
    with pytest.raises(ValueError, match="x must be float32, float16 or bfloat16"):
        tnq.compress(torch.zeros(4, dtype=dtype), backend="reference")


def test_payload_errors_name_the_field():
    p = tnq.compress(torch.randn(100), seed=1, backend="reference")
    with pytest.raises(ValueError, match="payload must be a 1-D uint8"):
        tnq.decompress(p.float(), backend="reference")
    with pytest.raises(ValueError, match="length"):
        tnq.decompress(p[:-1], backend="reference")
    bad = p.clone()
    bad[0] = ord("X")
    with pytest.raises(ValueError, match="magic"):
        tnq.decompress(bad, backend="reference")
    with pytest.raises(ValueError, match="shape"):
        tnq.decompress(p, (99,), torch.float32, backend="reference")
    with pytest.raises(ValueError, match="weights"):
        tnq.decompress_sum([p, p], weights=[1.0], backend="reference")
    with pytest.raises(ValueError, match="payloads"):
        tnq.decompress_sum([], backend="reference")


def test_defaults_from_header():
    x = laplace(300, dtype=torch.bfloat16).view(3, 100)
    p = tnq.compress(x, seed=4, backend="reference")
    h = tnq.read_header(p)
    assert (h.bits, h.block_size, h.numel, h.dtype) == (3, tnq.DEFAULT_BLOCK_SIZE, 300, fmt.DTYPE_IDS["bfloat16"])
    y = tnq.decompress(p, backend="reference")
    assert y.shape == (300,) and y.dtype == torch.bfloat16
    assert tnq.payload_bytes(300) == p.numel()


def test_seed_none_is_reproducible_under_manual_seed():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = tnq.compress(x, backend="reference")
    torch.manual_seed(3)
    assert torch.equal(a, tnq.compress(x, backend="reference"))


def test_env_var_forces_reference(monkeypatch):
    calls = []
    from tnq_kernels import reference
    monkeypatch.setattr(reference, "compress", lambda *a: calls.append(a) or torch.zeros(1, dtype=torch.uint8))
    monkeypatch.setenv("TNQ_BACKEND", "reference")
    tnq.compress(torch.randn(4), seed=0)
    assert len(calls) == 1


def test_import_is_cheap_and_never_imports_triton():
    code = "import sys, tnq_kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(tnq.__file__))})
    assert out.stdout.strip() == "False"


def test_fake_kernels_handle_huge_tensors_without_allocating():
    n = 2**33 + 7  # past 2^31 and 2^32: sizes are 64-bit
    x = torch.empty(n, device="meta")
    p = torch.ops.tnq.compress(x, 4, 2048, 0, 1)
    assert p.shape == (fmt.payload_bytes(n, 4, 2048),) and p.dtype == torch.uint8
    s, z = torch.ops.tnq.scale_truncate(x, 4, 2048, 0)
    assert s.shape == (-(-n // 2048),) and z.shape == (n,)
    assert torch.ops.tnq.pack(torch.empty(n, dtype=torch.uint8, device="meta"), 5).shape == (5 * -(-n // 32),)
    y = torch.ops.tnq.decompress(p, [2, n], torch.bfloat16)
    assert y.shape == (2, n) and y.dtype == torch.bfloat16


# ---- the registry; torch.compile on every backend ----

def test_every_op_has_a_cpu_kernel_and_opcheck_samples(native):
    # each op's file runs torch.library.opcheck on these samples (conftest.opcheck), once per backend
    from conftest import opcheck_samples
    assert set(opcheck_samples()) == set(ops.SCHEMAS)
    for name in ops.SCHEMAS:
        assert ops.has_kernel(name, "CPU")


def test_backend_cuda_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        tnq.compress(torch.randn(100), backend="cuda")


def test_compile_fullgraph_compress_decompress(backend):
    # CPU tensors: "aot_eager" runs dynamo + AOTAutograd, where a triton_op decomposes into its wrap_triton kernel
    # calls (the graph Inductor would get); Inductor itself would emit GPU launch code for them, so it needs CUDA.
    torch._dynamo.reset()

    def round_trip(x):
        p = tnq.compress(x, bits=3, block_size=96, seed=11, backend=backend.api)
        return tnq.decompress(p, x.shape, x.dtype, backend=backend.api)

    x = backend.to(laplace(5000, seed=3).view(50, 100))
    y = torch.compile(round_trip, fullgraph=True, backend="inductor" if x.is_cuda else "aot_eager")(x)
    assert torch.equal(y, round_trip(x))
    assert torch.equal(y.cpu(), tnq.decompress(tnq.compress(x.cpu(), 3, 96, seed=11, backend="reference"), x.shape,
                                               x.dtype, backend="reference"))


def test_decompress_under_compile_without_shape_and_dtype_says_what_to_pass(native):
    # the header read is a host read that dynamo cannot trace; the error must say how to avoid it
    torch._dynamo.reset()

    def round_trip(x):
        return tnq.decompress(tnq.compress(x, bits=3, seed=11))

    with pytest.raises(Exception, match="shape= and dtype="):
        torch.compile(round_trip, fullgraph=True, backend="aot_eager")(laplace(500, seed=1))
