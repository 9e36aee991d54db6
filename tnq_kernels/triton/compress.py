"""Fused compress (SPEC §2 hot path): read each block once, write its scale and its packed codes once.

kernels → launcher → registered op (`tnq::triton_compress`, a triton_op) → public function.

One program per scale block (B ≤ 4096: the whole block stays in registers between the scale reduction and the
rounding, so the input is read exactly once). Larger blocks loop over 4096-element chunks twice (the second read
hits L2 for moderate B). B = 0 runs scale_truncate.partials_kernel first, then every program of the fused kernel
reduces the same partials in the same order, so all agree on the tensor's scale bit for bit.
The 32-byte header (and the zero padding after the scales) is written by a one-program kernel launched first:
it is built from host-side ints only, so nothing is copied from the host and the op stays traceable; the flags
word starts at 0 and a program whose block is non-finite sets bit 0 with an atomic OR.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .. import codebooks as cb
from .. import format as fmt
from . import _common as C
from .pack import pack_planes, store_words
from .quantize import round_codes
from .scale_truncate import (accumulate, block_start, finish_scale, launch_partials, scale_from_partials,
                             segment_scale, segmentation, truncate)

_SCALE_WORD0 = fmt.HEADER_BYTES // 4
_FLAGS_WORD = 3


@triton.jit
def header_kernel(out_ptr, w0, w1, w2, w4, w5, zero_lo, zero_hi):
    """Words 0-7 of the header (flags = 0) and zero words [zero_lo, zero_hi) (scale padding, ≤ 4 words)."""
    i = tl.arange(0, 16)
    v = tl.where(i == 0, w0, 0)
    v = tl.where(i == 1, w1, v)
    v = tl.where(i == 2, w2, v)
    v = tl.where(i == 4, w4, v)
    v = tl.where(i == 5, w5, v)
    idx = tl.where(i < 8, i, zero_lo + i - 8)
    tl.store(out_ptr + idx, v, mask=(i < 8) | (idx < zero_hi))


@triton.jit
def emit_chunk(g, m, e0, ngroups_valid, scale, c0, cs, table_ptr, codes_ptr, key0, key1,
               BITS: tl.constexpr, BITS_P2: tl.constexpr, CHUNK: tl.constexpr):
    """Jobs 1 (truncate) → 2 (round) → 3 (pack + store) for one register tile starting at element e0 (int64)."""
    z = truncate(g, scale, c0, cs)
    code = round_codes(z, e0 + tl.arange(0, CHUNK), table_ptr, key0, key1, BITS)
    code = tl.where(m, code, 0)  # tail codes are zero (SPEC §3)
    store_words(codes_ptr, pack_planes(code, CHUNK, BITS, BITS_P2), e0 // 32, ngroups_valid, CHUNK, BITS, BITS_P2)


@triton.jit(do_not_specialize=["key0", "key1"])
def compress_kernel(x_ptr, out_ptr, part_ptr, table_ptr, n, seg, nparts, codes_w0, key0, key1,
                    BITS: tl.constexpr, BITS_P2: tl.constexpr, MAX_RULE: tl.constexpr, CHUNK: tl.constexpr,
                    SINGLE: tl.constexpr, FROM_PARTIALS: tl.constexpr, NPART: tl.constexpr):
    """x: flat input [n]; out: int32 view of the payload. One program per segment (a block, or for B = 0 a
    SEGMENT_B0 slice sharing the tensor's scale)."""
    pid = tl.program_id(0)
    start, seg_len = block_start(pid, seg, n)
    lane = tl.arange(0, CHUNK)
    c0 = tl.load(table_ptr)
    cs = tl.load(table_ptr + (1 << BITS) - 1)
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    # ---- job 1: the segment's scale ----
    if FROM_PARTIALS:
        scale = scale_from_partials(part_ptr, nparts, n, NPART, MAX_RULE)
        owner = pid == 0
    else:
        if SINGLE:
            m = lane < seg_len
            g = tl.load(x_ptr + start + lane, mask=m, other=0.0).to(tl.float32)
            acc, bad = accumulate(tl.zeros([CHUNK], tl.float64), tl.zeros([CHUNK], tl.int32), g, MAX_RULE)
            scale = finish_scale(acc, bad, seg_len, MAX_RULE)
        else:
            scale = segment_scale(x_ptr, start, seg_len, CHUNK, MAX_RULE)
        owner = pid >= 0
    tl.store(out_ptr + 8 + pid, scale.to(tl.int32, bitcast=True), mask=owner)
    tl.atomic_or(out_ptr + 3, 1, mask=owner & ~(tl.abs(scale) < float("inf")))
    # ---- jobs 1-3 on the data: truncate, round, pack ----
    codes_ptr = out_ptr + codes_w0
    if SINGLE:
        emit_chunk(g, m, start, tl.cdiv(seg_len, 32), scale, c0, cs, table_ptr, codes_ptr, k0, k1,
                   BITS, BITS_P2, CHUNK)
    else:
        for c in range(0, seg_len, CHUNK):
            offs = c + lane
            mc = offs < seg_len
            gc = tl.load(x_ptr + start + offs, mask=mc, other=0.0).to(tl.float32)
            emit_chunk(gc, mc, start + c, tl.cdiv(seg_len - c, 32), scale, c0, cs, table_ptr, codes_ptr, k0, k1,
                       BITS, BITS_P2, CHUNK)


def header_words(n: int, bits: int, block_size: int, codebook: int, dtype: torch.dtype) -> list[int]:
    """Header words 0, 1, 2, 4, 5 (flags and reserved are 0) as signed int32 kernel arguments."""
    dt = fmt.DTYPE_IDS[str(dtype).split(".")[1]]
    w1 = fmt.VERSION | bits << 8 | codebook << 16 | dt << 24
    return [C.i32(C.MAGIC_WORD), C.i32(w1), C.i32(block_size), C.i32(n % (1 << 32)), C.i32(n // (1 << 32))]


@triton_op("tnq::triton_compress", mutates_args=())
def triton_compress(x: torch.Tensor, table: torch.Tensor, bits: int, block_size: int, codebook: int,
                    seed: int) -> torch.Tensor:
    """x: any shape fp32/fp16/bf16, table: _common.table(codebook, bits) → uint8 payload [payload_bytes]."""
    g = C.flat(x)
    n = g.numel()
    nb = fmt.num_blocks(n, block_size)
    out = torch.empty(fmt.payload_bytes(n, bits, block_size) // 4, dtype=torch.int32, device=x.device)
    codes_w0 = fmt.codes_offset(n, block_size) // 4
    # with n = 0 no program writes the one scale of B = 0: zero it together with the padding
    zero_lo = _SCALE_WORD0 + (nb if n > 0 else 0)
    wrap_triton(header_kernel)[(1,)](out, *header_words(n, bits, block_size, codebook, x.dtype), zero_lo, codes_w0,
                                     num_warps=1)
    if n > 0:
        max_rule = cb.scale_rule(codebook) == cb.SCALE_MAX_ABS
        seg, nprog, chunk, single = segmentation(n, block_size)
        if block_size == 0:
            part, nparts = launch_partials(g, n, max_rule)
        else:
            part, nparts = table, 1  # unused by the kernel
        key0, key1 = C.seed_args(seed)
        wrap_triton(compress_kernel)[(nprog,)](
            g, out, part, table, n, seg, nparts, codes_w0, key0, key1, BITS=bits, BITS_P2=C.next_pow2(bits),
            MAX_RULE=max_rule, CHUNK=chunk, SINGLE=single, FROM_PARTIALS=block_size == 0,
            NPART=C.next_pow2(nparts), num_warps=C.warps_for(chunk))
    return out.view(torch.uint8)


def compress(x: torch.Tensor, bits: int, block_size: int, codebook: int, seed: int) -> torch.Tensor:
    """x: any shape, fp32/fp16/bf16 → uint8 payload [payload_bytes(n, bits, block_size)] (reference signature)."""
    from ..reference import _check_float
    _check_float(x)
    cb.check_bits(bits)
    fmt.check_block_size(block_size)
    codebook = cb.codebook_id(codebook)
    return torch.ops.tnq.triton_compress(x, C.table(codebook, bits, x.device), bits, block_size, codebook, seed)
