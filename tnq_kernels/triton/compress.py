"""Fused compress (docs/architecture.md hot path): read each block once, write its scale and its packed codes once.

kernels → launcher → registered op (`tnq::triton_compress`, a triton_op) → public function.

B ≤ 4096: each program holds ROWS whole blocks as a [ROWS, next_pow2(B)] register tile (≈ 2048 elements) between
the scale reduction and the rounding, so the input is read exactly once and small blocks still fill a program.
Larger blocks are split into 16384-element tiles, one program each: tile partials, then one program per block
stores its scale, then the tiles encode (the input is read twice; the second read hits L2 for moderate tiles).
B = 0 runs scale_truncate.partials_kernel first, then every program of the fused kernel reduces the same partials
in the same order, so all agree on the tensor's scale.
The 32-byte header (and the zero padding after the scales) is written by a one-program kernel launched first:
it is built from host-side ints only, so nothing is copied from the host and the op stays traceable; the flags
word starts at 0 and a program whose block is non-finite sets bit 0 with an atomic OR.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import checks
from .. import codebooks as cb
from .. import format as fmt
from .. import rng
from . import _common as C
from .pack import pack_planes, store_groups, store_words
from .quantize import round_codes
from .scale_truncate import (MODE_BLOCK, MODE_TILES, MODE_WHOLE, accumulate, block_start, finish_scale, inverse_scale,
                             launch_block_scales, launch_partials, scale_from_partials, segmentation, tile_range,
                             truncate)



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
def emit_chunk(g, m, e0, ngroups_valid, r, scale, c0, cs, table_ptr, codes_ptr, key0, key1,
               BITS: tl.constexpr, BITS_P2: tl.constexpr, CHUNK: tl.constexpr, NEAREST: tl.constexpr):
    """Jobs 1 (truncate) → 2 (round) → 3 (pack + store) for one register tile starting at element e0 (int64)."""
    z = truncate(g, r, scale, c0, cs)
    code = round_codes(z, e0 + tl.arange(0, CHUNK), e0, table_ptr, key0, key1, BITS, False, NEAREST)
    code = tl.where(m, code, 0)  # tail codes are zero (docs/format.md)
    store_words(codes_ptr, pack_planes(code, CHUNK, BITS, BITS_P2), e0 // 32, ngroups_valid, CHUNK, BITS, BITS_P2)


@triton.jit(do_not_specialize=["key0", "key1"])
def compress_blocks_kernel(x_ptr, out_ptr, table_ptr, n, block_size, nblocks, codes_w0, key0, key1,
                           BITS: tl.constexpr, BITS_P2: tl.constexpr, RULE: tl.constexpr, ROWS: tl.constexpr,
                           CHUNK: tl.constexpr, NEAREST: tl.constexpr):
    """B ≤ 4096: ROWS blocks per program as a [ROWS, CHUNK] register tile (CHUNK = next_pow2(B)), read once.
    x: flat input [n]; out: int32 view of the payload."""
    blk = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    start = blk * block_size
    seg_len = tl.minimum(n - start, block_size)  # ≤ 0 for rows past the last block
    col = tl.arange(0, CHUNK)[None, :]
    m = col < seg_len[:, None]
    g = tl.load(x_ptr + start[:, None] + col, mask=m, other=0.0).to(tl.float32)
    # ---- job 1: one scale per row ----
    acc, acc2, bad = accumulate(tl.zeros([ROWS, CHUNK], tl.float64), tl.zeros([ROWS, CHUNK], tl.float64),
                                tl.zeros([ROWS, CHUNK], tl.int32), g, RULE)
    scale = finish_scale(acc, acc2, bad, tl.maximum(seg_len, 1), RULE, 1)
    live = blk < nblocks
    tl.store(out_ptr + C.SCALE_WORD0 + blk, scale.to(tl.int32, bitcast=True), mask=live)
    tl.atomic_or(out_ptr + C.FLAGS_WORD + 0 * blk, 1, mask=live & ~(tl.abs(scale) < float("inf")))
    # ---- job 1 (truncate) → job 2 (round) ----
    c0 = tl.load(table_ptr)
    cs = tl.load(table_ptr + (1 << BITS) - 1)
    z = truncate(g, inverse_scale(scale)[:, None], scale[:, None], c0, cs)
    code = round_codes(z, start[:, None] + col, tl.program_id(0).to(tl.int64) * ROWS * block_size, table_ptr,
                       key0.to(tl.uint32, bitcast=True), key1.to(tl.uint32, bitcast=True), BITS, False, NEAREST)
    code = tl.where(m, code, 0)  # tail codes are zero (docs/format.md)
    # ---- job 3: pack each row's CHUNK // 32 groups, store the groups that hold elements ----
    G: tl.constexpr = CHUNK // 32
    words = pack_planes(tl.reshape(code, [ROWS * CHUNK]), ROWS * CHUNK, BITS, BITS_P2)
    gi = tl.arange(0, ROWS * G)
    row_blk = tl.program_id(0).to(tl.int64) * ROWS + gi // G
    j = gi % G
    valid = (row_blk < nblocks) & (j * 32 < tl.minimum(n - row_blk * block_size, block_size))
    store_groups(out_ptr + codes_w0, words, row_blk * (block_size // 32) + j, valid, BITS, BITS_P2)


@triton.jit(do_not_specialize=["key0", "key1"])
def compress_kernel(x_ptr, out_ptr, part_ptr, table_ptr, n, seg, nparts, block_size, tpb, codes_w0, key0, key1,
                    BITS: tl.constexpr, BITS_P2: tl.constexpr, RULE: tl.constexpr, CHUNK: tl.constexpr,
                    TILES: tl.constexpr, NPART: tl.constexpr, NEAREST: tl.constexpr):
    """B = 0 (not TILES): every program takes the tensor's scale from the partials and handles a SEGMENT_B0
    slice. B > 4096 (TILES): program pid encodes tile pid of its block (scale_truncate.tile_range, seg = the tile
    length) with the scale block_scale_kernel stored in the payload. One pass over CHUNK-element register tiles."""
    pid = tl.program_id(0)
    lane = tl.arange(0, CHUNK)
    c0 = tl.load(table_ptr)
    cs = tl.load(table_ptr + (1 << BITS) - 1)
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    # ---- job 1: the segment's scale ----
    if TILES:
        blk, start, seg_len = tile_range(pid.to(tl.int64), tpb, block_size, n, seg)
        scale = tl.load(out_ptr + C.SCALE_WORD0 + blk).to(tl.float32, bitcast=True)
    else:
        start, seg_len = block_start(pid, seg, n)
        scale = scale_from_partials(part_ptr, nparts, n, NPART, RULE)
        tl.store(out_ptr + C.SCALE_WORD0 + pid, scale.to(tl.int32, bitcast=True), mask=pid == 0)
        tl.atomic_or(out_ptr + C.FLAGS_WORD, 1, mask=(pid == 0) & ~(tl.abs(scale) < float("inf")))
    # ---- jobs 1-3 on the data: truncate, round, pack ----
    codes_ptr = out_ptr + codes_w0
    r = inverse_scale(scale)
    for c in range(0, seg_len, CHUNK):
        offs = c + lane
        mc = offs < seg_len
        gc = tl.load(x_ptr + start + offs, mask=mc, other=0.0).to(tl.float32)
        emit_chunk(gc, mc, start + c, tl.cdiv(seg_len - c, 32), r, scale, c0, cs, table_ptr, codes_ptr, k0, k1,
                   BITS, BITS_P2, CHUNK, NEAREST)


def header_words(n: int, bits: int, block_size: int, codebook: int, dtype: torch.dtype) -> list[int]:
    """Header words 0, 1, 2, 4, 5 (flags and reserved are 0) as signed int32 kernel arguments, taken from
    format.pack_header (the one Python definition of the header)."""
    h = fmt.Header(bits, codebook, fmt.DTYPE_IDS[str(dtype).split(".")[1]], block_size, 0, n)
    w = struct.unpack("<8i", fmt.pack_header(h))
    return [w[0], w[1], w[2], w[4], w[5]]


def launch_encode(g: torch.Tensor, out: torch.Tensor, table: torch.Tensor, n: int, bits: int, block_size: int,
                  codebook: int, seed: int, nb: int, codes_w0: int, rounding: int = 0) -> None:
    """Scales, flags and codes of the payload `out` (int32 words; header already launched) for flat input g."""
    rule = cb.scale_rule(codebook)
    mode, seg, nseg, chunk, tpb = segmentation(n, block_size)
    key0, key1 = C.seed_args(seed)
    nearest = rounding == rng.NEAREST
    if mode == MODE_BLOCK:
        rows = max(1, C.ROWS_TARGET // chunk)
        wrap_triton(compress_blocks_kernel)[(triton.cdiv(nseg, rows),)](
            g, out, table, n, block_size, nb, codes_w0, key0, key1, BITS=bits, BITS_P2=C.next_pow2(bits),
            RULE=rule, ROWS=rows, CHUNK=chunk, NEAREST=nearest, num_warps=C.warps_for(rows * chunk))
        return
    part, nparts = table, 1  # unused unless B = 0
    if mode == MODE_WHOLE:
        part, nparts = launch_partials(g, n, rule)
    else:  # the header kernel zeroed the flags word before block_scale_kernel may set it
        launch_block_scales(g, n, block_size, tpb, rule, out.view(torch.float32)[C.SCALE_WORD0:],
                            out[C.FLAGS_WORD:])
    wrap_triton(compress_kernel)[(nseg,)](
        g, out, part, table, n, seg, nparts, block_size, tpb, codes_w0, key0, key1, BITS=bits,
        BITS_P2=C.next_pow2(bits), RULE=rule, CHUNK=chunk, TILES=mode == MODE_TILES,
        NPART=C.next_pow2(nparts), NEAREST=nearest, num_warps=C.warps_for(chunk))


def triton_compress(x: torch.Tensor, table: torch.Tensor, bits: int, block_size: int, codebook: int,
                    seed: int, rounding: int = 0) -> torch.Tensor:
    """x: any shape fp32/fp16/bf16, table: _common.table(codebook, bits) → uint8 payload [payload_bytes]."""
    g = C.flat(x)
    n = g.numel()
    nb = fmt.num_blocks(n, block_size)
    out = torch.empty(fmt.payload_bytes(n, bits, block_size) // 4, dtype=torch.int32, device=x.device)
    codes_w0 = fmt.codes_offset(n, block_size) // 4
    # with n = 0 no program writes the one scale of B = 0: zero it together with the padding
    zero_lo = int(C.SCALE_WORD0) + (nb if n > 0 else 0)
    if not C.launches(g):
        return out.view(torch.uint8)
    with C.device_guard(x.device):
        wrap_triton(header_kernel)[(1,)](out, *header_words(n, bits, block_size, codebook, x.dtype), zero_lo,
                                         codes_w0, num_warps=1)
        if n > 0:
            launch_encode(g, out, table, n, bits, block_size, codebook, seed, nb, codes_w0, rounding)
    return out.view(torch.uint8)


def compress(x: torch.Tensor, bits: int, block_size: int, codebook: int, seed: int,
             rounding: int = rng.STOCHASTIC) -> torch.Tensor:
    """x: any shape, fp32/fp16/bf16 → uint8 payload [payload_bytes(n, bits, block_size)] (reference signature)."""
    codebook = checks.check_compress(x, bits, block_size, codebook)
    checks.check_rounding(rounding)
    return torch.ops.tnq.triton_compress(x, C.table(codebook, bits, x.device), bits, block_size, codebook, seed,
                                         rounding)
