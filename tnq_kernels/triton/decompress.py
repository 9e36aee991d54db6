"""Decode (SPEC §2): packed codes + scales → values ĝ = scale·c_code (one fp32 multiply), cast to the output dtype.

kernel helper → kernel → launcher → registered op (`tnq::triton_decompress`) → public function.

The op is a plain torch.library.custom_op, not a triton_op: it must read and validate the 32-byte header on the
host before it launches anything (a corrupted payload never reads out of bounds), and a triton_op's body is also
run on fake tensors while tracing, where no data can be read. Opaque to Inductor, it still never breaks a graph.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .. import format as fmt
from .. import checks
from . import _common as C
from .pack import unpack_planes

CHUNK = 2048
#: how a tile finds its scales: the tensor's one scale, one scale per tile, or a gather per element
SCALE_WHOLE, SCALE_PER_TILE, SCALE_PER_ELEMENT = 0, 1, 2


@triton.jit
def decode_tile(in_ptr, e0, n, block_size, codes_w0, table_ptr, BITS: tl.constexpr, CHUNK: tl.constexpr,
                SCALE_MODE: tl.constexpr, EXACT: tl.constexpr):
    """in: int32 view of a payload; e0: first element (int64, multiple of CHUNK) → fp32 values [CHUNK]."""
    code = unpack_planes(in_ptr + codes_w0, e0 // 32, tl.cdiv(n - e0, 32), CHUNK, BITS)
    c = tl.load(table_ptr + code)
    if SCALE_MODE == 0:
        s = tl.load(in_ptr + 8).to(tl.float32, bitcast=True)
    elif SCALE_MODE == 1:
        s = tl.load(in_ptr + 8 + e0 // block_size).to(tl.float32, bitcast=True)
    else:
        # int32 division per element (the block index of the tile's first element is done once in int64)
        local = (e0 % block_size).to(tl.int32) + tl.arange(0, CHUNK)
        s = tl.load(in_ptr + 8 + e0 // block_size + local // block_size, mask=e0 + tl.arange(0, CHUNK) < n,
                    other=0).to(tl.float32, bitcast=True)
    return s * c


@triton.jit
def decompress_kernel(in_ptr, out_ptr, table_ptr, n, block_size, codes_w0, BITS: tl.constexpr, CHUNK: tl.constexpr,
                      SCALE_MODE: tl.constexpr, EXACT: tl.constexpr):
    e0 = tl.program_id(0).to(tl.int64) * CHUNK
    v = decode_tile(in_ptr, e0, n, block_size, codes_w0, table_ptr, BITS, CHUNK, SCALE_MODE, EXACT)
    idx = e0 + tl.arange(0, CHUNK)
    tl.store(out_ptr + idx, C.to_output(v, out_ptr.dtype.element_ty, EXACT), mask=idx < n)


def scale_mode(block_size: int) -> int:
    if block_size == 0:
        return SCALE_WHOLE
    return SCALE_PER_TILE if block_size % CHUNK == 0 else SCALE_PER_ELEMENT


def words_of(payload: torch.Tensor) -> torch.Tensor:
    """The payload as int32 words (its length is a multiple of 4 bytes: 16-aligned scales + 4-byte words)."""
    return payload.contiguous().view(torch.int32)


def triton_decompress(payload: torch.Tensor, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """uint8 payload → tensor of `shape` and `dtype` (header validated on the host first)."""
    h = checks.read_header(payload)
    checks.check_shape(h, shape, "payload")
    checks.check_dtype(dtype)
    out = torch.empty(h.numel, dtype=dtype, device=payload.device)
    if h.numel > 0:
        decompress_kernel[(triton.cdiv(h.numel, CHUNK),)](
            words_of(payload), out, C.table(h.codebook, h.bits, payload.device), h.numel, h.block_size,
            h.codes_offset // 4, BITS=h.bits, CHUNK=CHUNK, SCALE_MODE=scale_mode(h.block_size), EXACT=C.EXACT,
            num_warps=C.warps_for(CHUNK), **C.NO_FMA)
    return out.reshape(shape)



def decompress(payload: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """uint8 payload → tensor of ``shape`` and ``dtype`` (reference signature)."""
    return torch.ops.tnq.triton_decompress(payload, list(shape), dtype)
