"""Public Python API: normalises arguments (names to ids, seeds, defaults) and calls the `tnq` op of the chosen
backend. Every argument check lives in the backend (tnq_kernels/checks.py for the Python ones, csrc/validate.h for
the C++ ones); the backend is chosen in one place, tnq_kernels.ops.kernel, from ``backend=`` or TNQ_BACKEND:
"auto" (default: C++ on CPU tensors; on CUDA tensors the C++ CUDA kernels when built, else Triton), "reference"
(the pure-PyTorch oracle), "triton" or "cuda".
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import checks
from . import codebooks as cb
from . import format as fmt
from . import ops
from . import rng

DEFAULT_BITS = 3
#: one fp32 scale per 2048 elements: 0.016 bits/element of overhead; on Laplace data (2e6 samples, b = 2..5) its
#: MSE is within 0.3% of one scale per tensor (docs/format.md, "Choosing the block size").
DEFAULT_BLOCK_SIZE = 2048
#: the bias-aware robust TNQ (docs/codebooks.md): chosen by the training studies of docs/experiments.md, where it is
#: the best or level with the best codebook on MNIST (CNN and MLP, momentum SGD and AdamW, IID and Dirichlet
#: clients) at 3 bits. Its member follows ``clients=`` (the DDP hook and the Horovod wrapper pass the world size).
#: The paper's quantizer stays available as "tnq".
DEFAULT_CODEBOOK = "rtnq"
BACKENDS = ops.BACKENDS
#: unbiased stochastic rounding; "nearest" (rng.ROUNDING_IDS) is the option for error feedback (docs/codebooks.md §5)
DEFAULT_ROUNDING = "stochastic"
ROUNDINGS = tuple(rng.ROUNDING_IDS)


def _device_type(t) -> str:
    if isinstance(t, (list, tuple)):
        t = t[0] if t else None
    return t.device.type if isinstance(t, torch.Tensor) else "cpu"


def _run(op: str, backend: str | None, *args):
    return ops.kernel(op, backend, _device_type(args[0]))(*args)


def _int(name: str, v) -> int:
    """Python ints only (a float or bool would be silently truncated by the op's int argument)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an int, got {v!r}")
    return v


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
             codebook: str | int = DEFAULT_CODEBOOK, seed: int | None = None, backend: str | None = None,
             clients: int | None = None, rounding: str = DEFAULT_ROUNDING) -> torch.Tensor:
    """Compress ``x`` (any shape, fp32/fp16/bf16, contiguous or not) to one uint8 payload.

    Returns a 1-D uint8 tensor of ``payload_bytes(x.numel(), bits, block_size)`` bytes on x's device: the v1 header,
    one fp32 scale per ``block_size`` elements (0: one per tensor), then ``bits`` bits per element. ``seed`` keys the
    stochastic rounding (same seed, same codes on every backend); None draws one from torch's default generator.
    ``clients``: how many payloads the receiver averages; it picks the member of ``codebook="rtnq"`` (default 1)
    and is ignored by the other codebooks. ``rounding``: "stochastic" (unbiased, keyed by ``seed``) or "nearest"
    (each value to its nearest level, ties down: no random numbers, the seed does not change the codes; biased, for
    use with error feedback, docs/codebooks.md §5). Decoding is the same for both.
    """
    return _run("compress", backend, x, _int("bits", bits), _int("block_size", block_size),
                cb.codebook_id(codebook, clients), _seed(seed), checks.rounding_id(rounding))


def read_header(payload: torch.Tensor) -> fmt.Header:
    """Parse and validate a payload's header (a 32-byte device-to-host copy for GPU payloads)."""
    return checks.read_header(payload)


def _shape_dtype(payload, shape, dtype, out):
    """shape and dtype of the result: from ``out``, from the arguments, else from the header (a host read)."""
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if (shape is not None and tuple(shape) != tuple(out.shape)) or (dtype is not None and dtype != out.dtype):
            raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, which contradicts shape="
                             f"{None if shape is None else tuple(shape)}, dtype={dtype}; pass out alone")
        return list(out.shape), out.dtype
    if shape is None or dtype is None:
        if torch.compiler.is_compiling():
            raise ValueError("decompress under torch.compile needs shape= and dtype= (or out=): reading them from "
                             "the payload's header is a host read that cannot be traced")
        h = read_header(payload)
        shape = (h.numel,) if shape is None else shape
        dtype = getattr(torch, fmt.DTYPE_NAMES[h.dtype]) if dtype is None else dtype
    return list(shape), dtype


def decompress(payload: torch.Tensor, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
               backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a payload to a tensor of ``shape`` (default: 1-D of its numel) and ``dtype`` (default: the dtype it
    was compressed from). Passing both avoids a host read of the header (needed under torch.compile and CUDA
    graphs). ``out``: a contiguous tensor to decode into (its shape and dtype are the result's); returned."""
    shape, dtype = _shape_dtype(payload, shape, dtype, out)
    if out is not None:
        _run("decompress_into", backend, payload, out)
        return out
    return _run("decompress", backend, payload, shape, dtype)


def decompress_sum(payloads: Sequence[torch.Tensor] | torch.Tensor, weights: Sequence[float] | None = None,
                   shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
                   backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_w weights[w]·decompress(payloads[w]) in one pass, accumulated in fp32: the server-side aggregation.

    ``payloads``: a list of payloads of equal numel, or a 2-D uint8 tensor [W, bytes] (e.g. an all-gather output).
    ``out``: as for decompress.
    """
    if isinstance(payloads, torch.Tensor):
        if payloads.dim() != 2:
            raise ValueError(f"payloads must be a list of payloads or a 2-D uint8 tensor, got shape "
                             f"{tuple(payloads.shape)}")
        payloads = list(payloads.unbind(0))
    payloads = list(payloads)
    weights = None if weights is None else [float(w) for w in weights]
    checks.check_payloads(payloads, weights)
    shape, dtype = _shape_dtype(payloads[0], shape, dtype, out)
    if out is not None:
        _run("decompress_sum_into", backend, payloads, weights, out)
        return out
    return _run("decompress_sum", backend, payloads, weights, shape, dtype)


def scale_truncate(x: torch.Tensor, bits: int = DEFAULT_BITS, block_size: int = DEFAULT_BLOCK_SIZE,
                   codebook: str | int = DEFAULT_CODEBOOK, backend: str | None = None,
                   clients: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: (scales fp32 [nblocks], z fp32 [n] = clamp(x·r) in units of the scale, r = fp32(1/scale))."""
    return _run("scale_truncate", backend, x, _int("bits", bits), _int("block_size", block_size),
                cb.codebook_id(codebook, clients))


def quantize(z: torch.Tensor, bits: int = DEFAULT_BITS, codebook: str | int = DEFAULT_CODEBOOK, seed: int | None = None,
             backend: str | None = None, clients: int | None = None,
             rounding: str = DEFAULT_ROUNDING) -> torch.Tensor:
    """Stage 2: z fp32 [n] → uint8 codes [n] (codebook lookup + rounding: "stochastic" or "nearest", as compress)."""
    return _run("quantize", backend, z, _int("bits", bits), cb.codebook_id(codebook, clients), _seed(seed),
                checks.rounding_id(rounding))


def pack(codes: torch.Tensor, bits: int = DEFAULT_BITS, backend: str | None = None) -> torch.Tensor:
    """Stage 3: uint8 codes [n] → int32 bit-plane words [bits·ceil(n/32)]."""
    return _run("pack", backend, codes, _int("bits", bits))


def unpack(words: torch.Tensor, bits: int, n: int, backend: str | None = None) -> torch.Tensor:
    """Inverse of pack: int32 words [bits·ceil(n/32)] → uint8 codes [n]."""
    return _run("unpack", backend, words, _int("bits", bits), _int("n", n))


def payload_bytes(n: int, bits: int = DEFAULT_BITS, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Size in bytes of the payload for n elements: 32 + align16(4·nblocks) + 4·bits·ceil(n/32)."""
    return fmt.payload_bytes(n, cb.check_bits(bits), fmt.check_block_size(block_size))
