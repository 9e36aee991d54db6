"""Argument checks of the Python backends (the reference and Triton): one copy of each check and its message.

The C++ backends check the same things in csrc/validate.h with the same wording (the per-op tests match each error on
every backend by the field it names). The public API (api.py) only normalises arguments (names to ids, seeds, defaults) and leaves
every check to the backend it calls, so each check runs once per call.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import codebooks as cb
from . import format as fmt
from . import rng

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

check_bits = cb.check_bits
check_block_size = fmt.check_block_size


def check_float(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")


def check_dtype(dtype: torch.dtype, name: str = "dtype") -> torch.dtype:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def check_compress(x: torch.Tensor, bits: int, block_size: int, codebook: int) -> int:
    """The arguments of compress / scale_truncate; returns the codebook id."""
    check_float(x)
    check_bits(bits)
    check_block_size(block_size)
    return cb.codebook_id(codebook)


def _rounding_error(rounding) -> ValueError:
    accepted = ", ".join(f"{name!r} ({i})" for name, i in rng.ROUNDING_IDS.items())
    return ValueError(f"rounding must be one of {accepted}, got {rounding!r}")


def rounding_id(rounding: str) -> int:
    """The public API's ``rounding=`` name → the ops' rounding id."""
    if not isinstance(rounding, str) or rounding not in rng.ROUNDING_IDS:
        raise _rounding_error(rounding)
    return rng.ROUNDING_IDS[rounding]


def check_rounding(rounding: int) -> int:
    """The ops' ``rounding`` argument: a rounding id (0 stochastic, 1 nearest)."""
    if isinstance(rounding, bool) or not isinstance(rounding, int) or rounding not in rng.ROUNDING_NAMES:
        raise _rounding_error(rounding)
    return rounding


def check_z(z: torch.Tensor) -> None:
    if z.dtype != torch.float32:
        raise ValueError(f"z must be float32 (the output of scale_truncate), got {z.dtype}")


def check_codes(codes: torch.Tensor) -> None:
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")


def check_words(words: torch.Tensor, bits: int, n: int) -> None:
    if words.dtype != torch.int32:
        raise ValueError(f"words must be int32, got {words.dtype}")
    check_bits(bits)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    need = fmt.num_words(n, bits)
    if words.numel() != need:
        raise ValueError(f"words must hold bits*ceil(n/32) = {need} int32 values, got {words.numel()}")


def _check_payload_tensor(payload, name: str) -> None:
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
        got = (f"{payload.dtype} with shape {tuple(payload.shape)}" if isinstance(payload, torch.Tensor)
               else type(payload).__name__)
        raise ValueError(f"{name} must be a 1-D uint8 tensor (a tnq payload), got {got}")
    if payload.numel() < fmt.HEADER_BYTES:
        raise ValueError(f"{name} length: {payload.numel()} bytes is shorter than the {fmt.HEADER_BYTES}-byte header")


def read_header(payload: torch.Tensor, name: str = "payload") -> fmt.Header:
    """Validate a payload tensor and its v1 header (copies 32 bytes to the host for a device payload)."""
    return read_headers([payload], names=[name])[0]


def check_shape(h: fmt.Header, shape: Sequence[int], name: str) -> None:
    numel = 1
    for d in shape:
        if int(d) < 0:
            raise ValueError(f"shape {tuple(shape)} has a negative dimension")
        numel *= int(d)
    if numel != h.numel:
        raise ValueError(f"shape {tuple(shape)} holds {numel} elements but {name} encodes {h.numel}")


def check_payloads(payloads: Sequence[torch.Tensor], weights: Sequence[float] | None) -> None:
    if len(payloads) == 0:
        raise ValueError("payloads must hold at least one payload, got an empty list")
    if weights is not None and len(weights) != len(payloads):
        raise ValueError(f"weights must have one entry per payload ({len(payloads)}), got {len(weights)}")


def read_headers(payloads: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> list[fmt.Header]:
    """Validate W payload tensors and their headers with one device-to-host copy of W·32 bytes."""
    names = names or [f"payloads[{w}]" for w in range(len(payloads))]
    for p, name in zip(payloads, names):
        _check_payload_tensor(p, name)
    heads = torch.stack([p[: fmt.HEADER_BYTES] for p in payloads]).cpu().numpy()
    return [fmt.parse_header(heads[w].tobytes(), p.numel(), name)
            for w, (p, name) in enumerate(zip(payloads, names))]


def check_sum(payloads: Sequence[torch.Tensor], weights: Sequence[float] | None, shape: Sequence[int],
              dtype: torch.dtype) -> list[fmt.Header]:
    """Every check of decompress_sum: the list, the weights, the dtype, each payload's header against shape."""
    check_payloads(payloads, weights)
    check_dtype(dtype)
    headers = read_headers(payloads)
    for w, h in enumerate(headers):
        check_shape(h, shape, f"payloads[{w}]")
    return headers


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def check_out(out: torch.Tensor, payloads: Sequence[torch.Tensor], numel: int | None = None) -> None:
    """`out` of decompress_into / decompress_sum_into: a contiguous fp32/fp16/bf16 tensor on the payloads' device,
    not overlapping any payload, holding ``numel`` elements (the headers' count) when given."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    check_dtype(out.dtype, "out")
    if not out.is_contiguous():
        raise ValueError(f"out must be contiguous, got strides {out.stride()} for shape {tuple(out.shape)}")
    if numel is not None and out.numel() != numel:
        raise ValueError(f"out holds {out.numel()} elements (shape {tuple(out.shape)}) but the payloads encode {numel}")
    for w, p in enumerate(payloads):
        if out.device != p.device:
            raise ValueError(f"out is on {out.device} but payload {w} is on {p.device}")
        if _overlaps(out, p):
            raise ValueError(f"out overlaps the memory of payload {w}: decode into a separate tensor")
