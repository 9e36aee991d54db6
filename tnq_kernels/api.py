"""Public Python API: argument checking, defaults and the backend override, on top of the `tnq` ops.

The dispatcher picks the backend from the tensor's device; ``backend=`` (or the TNQ_BACKEND environment variable)
overrides it: "auto" (default: C++ on CPU tensors; on CUDA tensors the C++ CUDA kernels when the extension was
built with them, else Triton), "reference" (the pure-PyTorch oracle), "triton" (the Triton kernels directly) or
"cuda" (the C++ CUDA kernels, CUDA tensors only; raises BackendUnavailable when they were not built).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from . import codebooks as cb
from . import format as fmt
from . import ops as _ops  # noqa: F401  (defines the tnq ops)
from . import reference

DEFAULT_BITS = 3
#: one fp32 scale per 2048 elements: 0.016 bits/element of overhead; on Laplace data (2e6 samples, b = 2..5) its
#: MSE is within 0.3% of one scale per tensor (see README, "Choosing the block size").
DEFAULT_BLOCK_SIZE = 2048
BACKENDS = ("auto", "reference", "triton", "cuda")


class _CudaBackend:
    """backend="cuda": torch.ops.tnq, after checking the C++ CUDA kernel exists and the tensors are on CUDA (on a
    CPU tensor the dispatcher would silently pick the CPU kernel instead)."""

    def __getattr__(self, op: str):
        if op not in _ops.NATIVE_CUDA_OPS:
            raise _ops.BackendUnavailable(
                f"backend='cuda': tnq::{op} has no C++ CUDA kernel in this build (the extension was built without "
                f"nvcc or with TNQ_CUDA=0); rebuild with nvcc on PATH, or use backend='triton' / 'auto'")
        fn = getattr(torch.ops.tnq, op)

        def call(first, *args):
            t = first[0] if isinstance(first, (list, tuple)) and first else first
            if isinstance(t, torch.Tensor) and t.device.type != "cuda":
                raise ValueError(f"backend='cuda' needs CUDA tensors, got a tensor on {t.device}; use "
                                 f"backend='auto' (or None) for {t.device.type} tensors")
            return fn(first, *args)
        return call


_CUDA = _CudaBackend()


def _backend(backend: str | None):
    name = backend if backend is not None else os.environ.get("TNQ_BACKEND", "auto")
    if name == "auto":
        return torch.ops.tnq
    if name == "reference":
        return reference
    if name == "triton":
        from . import triton as tnq_triton
        return tnq_triton
    if name == "cuda":
        return _CUDA
    raise ValueError(f"backend must be one of {BACKENDS} (argument or TNQ_BACKEND), got {name!r}")


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in reference.SUPPORTED_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")


def new_seed() -> int:
    """A fresh 63-bit seed from torch's default CPU generator (reproducible under torch.manual_seed)."""
    return int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())


def _seed(seed: int | None) -> int:
    if seed is None:
        return new_seed()
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [-2^63, 2^64) or None, got {seed!r}")
    return seed - 2**64 if seed >= 2**63 else seed  # the op takes an int64; the hash reads it as uint64


def compress(x: torch.Tensor, bits: int = DEFAULT_BITS, block_size: int = DEFAULT_BLOCK_SIZE,
             codebook: str | int = "tnq", seed: int | None = None, backend: str | None = None,
             clients: int | None = None) -> torch.Tensor:
    """Compress ``x`` (any shape, fp32/fp16/bf16, contiguous or not) to one uint8 payload.

    Returns a 1-D uint8 tensor of ``payload_bytes(x.numel(), bits, block_size)`` bytes on x's device: the v1 header,
    one fp32 scale per ``block_size`` elements (0: one per tensor), then ``bits`` bits per element. ``seed`` keys the
    stochastic rounding (same seed, same codes on every backend); None draws one from torch's default generator.
    ``clients``: how many payloads the receiver averages; it picks the member of ``codebook="rtnq"`` (default 1)
    and is ignored by the other codebooks.
    """
    _check_input(x)
    cb.check_bits(bits)
    fmt.check_block_size(block_size)
    return _backend(backend).compress(x, bits, block_size, cb.codebook_id(codebook, clients), _seed(seed))


def read_header(payload: torch.Tensor) -> fmt.Header:
    """Parse and validate a payload's header (a 32-byte device-to-host copy for GPU payloads)."""
    return reference.read_header(payload)


def _shape_dtype(payload, shape, dtype):
    if shape is None or dtype is None:
        h = read_header(payload)
        shape = (h.numel,) if shape is None else shape
        dtype = getattr(torch, fmt.DTYPE_NAMES[h.dtype]) if dtype is None else dtype
    if dtype not in reference.SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return list(shape), dtype


def decompress(payload: torch.Tensor, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
               backend: str | None = None) -> torch.Tensor:
    """Decode a payload to a tensor of ``shape`` (default: 1-D of its numel) and ``dtype`` (default: the dtype it
    was compressed from). Passing both avoids a host read of the header (needed under torch.compile)."""
    shape, dtype = _shape_dtype(payload, shape, dtype)
    return _backend(backend).decompress(payload, shape, dtype)


def decompress_sum(payloads: Sequence[torch.Tensor] | torch.Tensor, weights: Sequence[float] | None = None,
                   shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
                   backend: str | None = None) -> torch.Tensor:
    """Σ_w weights[w]·decompress(payloads[w]) in one pass, accumulated in fp32: the server-side aggregation.

    ``payloads``: a list of payloads of equal numel, or a 2-D uint8 tensor [W, bytes] (e.g. an all-gather output).
    """
    if isinstance(payloads, torch.Tensor):
        if payloads.dim() != 2:
            raise ValueError(f"payloads must be a list of payloads or a 2-D uint8 tensor, got shape "
                             f"{tuple(payloads.shape)}")
        payloads = list(payloads.unbind(0))
    payloads = list(payloads)
    if not payloads:
        raise ValueError("payloads must hold at least one payload, got none")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(payloads):
            raise ValueError(f"weights must have one entry per payload ({len(payloads)}), got {len(weights)}")
    shape, dtype = _shape_dtype(payloads[0], shape, dtype)
    return _backend(backend).decompress_sum(payloads, weights, shape, dtype)


def scale_truncate(x: torch.Tensor, bits: int = DEFAULT_BITS, block_size: int = DEFAULT_BLOCK_SIZE,
                   codebook: str | int = "tnq", backend: str | None = None,
                   clients: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: (scales fp32 [nblocks], z fp32 [n] = clamp(x/scale) in units of the scale)."""
    _check_input(x)
    cb.check_bits(bits)
    fmt.check_block_size(block_size)
    return _backend(backend).scale_truncate(x, bits, block_size, cb.codebook_id(codebook, clients))


def quantize(z: torch.Tensor, bits: int = DEFAULT_BITS, codebook: str | int = "tnq", seed: int | None = None,
             backend: str | None = None, clients: int | None = None) -> torch.Tensor:
    """Stage 2: z fp32 [n] → uint8 codes [n] (codebook lookup + unbiased stochastic rounding)."""
    if z.dtype != torch.float32:
        raise ValueError(f"z must be float32 (the output of scale_truncate), got {z.dtype}")
    cb.check_bits(bits)
    return _backend(backend).quantize(z, bits, cb.codebook_id(codebook, clients), _seed(seed))


def pack(codes: torch.Tensor, bits: int = DEFAULT_BITS, backend: str | None = None) -> torch.Tensor:
    """Stage 3: uint8 codes [n] → int32 bit-plane words [bits·ceil(n/32)]."""
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    cb.check_bits(bits)
    return _backend(backend).pack(codes, bits)


def unpack(words: torch.Tensor, bits: int, n: int, backend: str | None = None) -> torch.Tensor:
    """Inverse of pack: int32 words [bits·ceil(n/32)] → uint8 codes [n]."""
    if words.dtype != torch.int32:
        raise ValueError(f"words must be int32, got {words.dtype}")
    cb.check_bits(bits)
    if words.numel() != fmt.num_words(n, bits):
        raise ValueError(f"words must hold bits*ceil(n/32) = {fmt.num_words(n, bits)} values, got {words.numel()}")
    return _backend(backend).unpack(words, bits, n)


def payload_bytes(n: int, bits: int = DEFAULT_BITS, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Size in bytes of the payload for n elements: 32 + align16(4·nblocks) + 4·bits·ceil(n/32)."""
    return fmt.payload_bytes(n, cb.check_bits(bits), fmt.check_block_size(block_size))
