"""The `tnq` op registry: every schema and fake kernel is defined here, once (STYLE rule 2).

Backends attach to these schemas per dispatch key:
  CPU   C++ in csrc/cpu (TORCH_LIBRARY_IMPL(tnq, CPU)), loaded from tnq_kernels._C at import;
  CUDA  C++/CUDA in csrc/cuda when built in (TORCH_LIBRARY_IMPL(tnq, CUDA) in the same _C), otherwise a forwarder
        to the Triton kernels of tnq_kernels.triton (benchmarks/gpu_check.py measures which of the two is faster).
If a native backend is missing, import still succeeds; calling an op on that device raises BackendUnavailable
with the command that builds it. The pure-PyTorch oracle lives in reference.py and is reached through the public
API's ``backend="reference"`` (or TNQ_BACKEND=reference), never silently.
"""
from __future__ import annotations

import importlib

import torch

from . import format as fmt

NAMESPACE = "tnq"
BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` (or `make build`) from the repository root, "
              "or pass backend='reference' / set TNQ_BACKEND=reference to use the pure-PyTorch oracle")

SCHEMAS = {
    "compress": "compress(Tensor x, int bits, int block_size, int codebook, int seed) -> Tensor",
    "decompress": "decompress(Tensor payload, SymInt[] shape, ScalarType dtype) -> Tensor",
    "decompress_sum": ("decompress_sum(Tensor[] payloads, float[]? weights, SymInt[] shape, ScalarType dtype)"
                       " -> Tensor"),
    # decode into an existing contiguous tensor (e.g. a DDP bucket): out's numel must equal the payload's, its
    # dtype sets the output dtype; nothing is allocated, so the page faults of a fresh output are avoided
    "decompress_into": "decompress_into(Tensor payload, Tensor(a!) out) -> ()",
    "decompress_sum_into": "decompress_sum_into(Tensor[] payloads, float[]? weights, Tensor(a!) out) -> ()",
    "scale_truncate": "scale_truncate(Tensor x, int bits, int block_size, int codebook) -> (Tensor, Tensor)",
    "quantize": "quantize(Tensor z, int bits, int codebook, int seed) -> Tensor",
    "pack": "pack(Tensor codes, int bits) -> Tensor",
    "unpack": "unpack(Tensor words, int bits, SymInt n) -> Tensor",
}


class BackendUnavailable(RuntimeError):
    """A native backend needed for this device was not built or failed to load."""


_lib = torch.library.Library(NAMESPACE, "DEF")
for _schema in SCHEMAS.values():
    _lib.define(_schema)


# ---- fake (meta) kernels: shapes only, no data; payload size is a pure function of (n, b, B) ----

@torch.library.register_fake("tnq::compress")
def _compress_fake(x, bits, block_size, codebook, seed):
    return x.new_empty(fmt.payload_bytes(x.numel(), bits, block_size), dtype=torch.uint8)


@torch.library.register_fake("tnq::decompress")
def _decompress_fake(payload, shape, dtype):
    return payload.new_empty(shape, dtype=dtype)


@torch.library.register_fake("tnq::decompress_sum")
def _decompress_sum_fake(payloads, weights, shape, dtype):
    torch._check(len(payloads) > 0, lambda: "payloads must hold at least one payload")
    return payloads[0].new_empty(shape, dtype=dtype)


def _check_out_device(out, payload):
    # a meta `out` next to real payloads dispatches here, not to a backend that would reject it
    if out.device != payload.device:
        raise ValueError(f"out must be on the payload's device {payload.device}, got {out.device}")


@torch.library.register_fake("tnq::decompress_into")
def _decompress_into_fake(payload, out):
    _check_out_device(out, payload)
    return None


@torch.library.register_fake("tnq::decompress_sum_into")
def _decompress_sum_into_fake(payloads, weights, out):
    torch._check(len(payloads) > 0, lambda: "payloads must hold at least one payload")
    _check_out_device(out, payloads[0])
    return None


@torch.library.register_fake("tnq::scale_truncate")
def _scale_truncate_fake(x, bits, block_size, codebook):
    n = x.numel()
    return (x.new_empty(fmt.num_blocks(n, block_size), dtype=torch.float32),
            x.new_empty(n, dtype=torch.float32))


@torch.library.register_fake("tnq::quantize")
def _quantize_fake(z, bits, codebook, seed):
    return z.new_empty(z.numel(), dtype=torch.uint8)


@torch.library.register_fake("tnq::pack")
def _pack_fake(codes, bits):
    return codes.new_empty(fmt.num_words(codes.numel(), bits), dtype=torch.int32)


@torch.library.register_fake("tnq::unpack")
def _unpack_fake(words, bits, n):
    return words.new_empty(n, dtype=torch.uint8)


# ---- native backends ----

native_error: BaseException | None = None
try:  # registers the C++ CPU (and, when compiled in, CUDA) kernels
    _C = importlib.import_module("tnq_kernels._C")
except (ImportError, OSError) as e:  # never fail import for a missing backend (STYLE rule 5)
    _C = None
    native_error = e


def has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


#: ops whose CUDA kernel the C++ extension registered (csrc/cuda/bindings.cpp), checked before the Triton
#: forwarder below fills the gaps; the public API's backend="cuda" requires the op to be in this set.
NATIVE_CUDA_OPS = frozenset(op for op in SCHEMAS if has_kernel(op, "CUDA"))


def cuda_kernel_source(op: str) -> str:
    """Which kernel torch.ops.tnq.<op> runs on CUDA tensors: "cuda" (the C++ build) or "triton" (the forwarder)."""
    return "cuda" if op in NATIVE_CUDA_OPS else "triton"


def _raiser(op: str, device: str, why: str):
    def kernel(*args, **kwargs):
        raise BackendUnavailable(f"tnq::{op} has no {device} backend: {why}; {BUILD_HINT}")
    return kernel


for _op in SCHEMAS:
    if not has_kernel(_op, "CPU"):
        _lib.impl(_op, _raiser(_op, "CPU", f"the C++ extension tnq_kernels._C did not load ({native_error})"), "CPU")


def _triton_forwarder(op: str):
    # Importing Triton is not cheap, so it happens at the first CUDA call, not at import (STYLE rule 5).
    def kernel(*args):
        try:
            from . import triton as tnq_triton
        except ImportError as e:
            raise BackendUnavailable(f"tnq::{op} has no CUDA backend: the CUDA build is absent and the Triton "
                                     f"backend failed to import ({e}); {BUILD_HINT}") from e
        return tnq_triton.IMPLS[op](*args)
    return kernel


for _op in SCHEMAS:
    if not has_kernel(_op, "CUDA"):
        _lib.impl(_op, _triton_forwarder(_op), "CUDA")
