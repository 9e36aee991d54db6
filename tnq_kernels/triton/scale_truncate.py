"""Job 1 (SPEC §2): per-block scale γ̂ and truncation z = clamp(g·r, c_0, c_s), r = fp32(1/γ̂) once per block.

kernel helpers → stage kernels → launcher → registered op (`tnq::triton_scale_truncate`, a triton_op).

Scale rule (RULE, codebooks.SCALE_*): mean|g| accumulated in fp64 and divided by the block's element count in fp64
with one correctly rounded division (tnq, tqsgd); max|g| (nqsgd, qsgd); ‖g‖₂ = the IEEE sqrt of the fp64 Σg²
(qsgd_l2, nuqsgd_l2); Σg²/(2Σ|g|) with one fp64 division, 0 when Σ|g| = 0 (rtnq*); each rounded once to fp32.
Partials are (Σ|g| or max|g| or Σg², Σg²) pairs, interleaved, so the two-sum rule still reads x once. The fp64
sums run in a different order from the reference's, so SPEC §1 allows the last bit of γ̂ to differ on crafted inputs
(random data: equal). A block holding NaN/±Inf has a non-finite scale (some NaN, or ±Inf; its bits are not fixed)
and z = c_0 there.
B = 0 (one scale for the whole tensor) takes two kernels: per-program partials, then every program of the
second kernel re-reduces the (≤ 1024, L2-resident) partials in a fixed order, so all agree on the scale.
Blocks longer than one register tile (B > 4096) are split into TILE-element tiles, one program each, as the CUDA
path does: tile partials, then one program per block reduces them in a fixed order and stores the scale, then
the tiles encode with it (B = 2^20 at n = 2^24 runs 1024 programs instead of 16).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import checks
from .. import codebooks as cb
from .. import format as fmt
from . import _common as C


RULE_MEAN: tl.constexpr = tl.constexpr(cb.SCALE_MEAN_ABS)
RULE_MAX: tl.constexpr = tl.constexpr(cb.SCALE_MAX_ABS)
RULE_L2: tl.constexpr = tl.constexpr(cb.SCALE_L2)
RULE_M2M1: tl.constexpr = tl.constexpr(cb.SCALE_M2_M1)


@triton.jit
def scale_of(s1, s2, count, RULE: tl.constexpr):
    """fp64 totals (s1: Σ|g|, max|g| or Σg²; s2: Σg² for RULE_M2M1) → the fp32 scale, rounded once."""
    if RULE == RULE_MAX:
        return s1.to(tl.float32)
    elif RULE == RULE_L2:
        # tl.sqrt_rn takes fp32 only; for fp64 tl.sqrt lowers to llvm.sqrt.f64 = PTX sqrt.rn.f64 (IEEE, correctly
        # rounded; only the fp32 sqrt has an approximate lowering), as the reference's torch.sqrt on fp64
        return tl.sqrt(s1).to(tl.float32)
    elif RULE == RULE_M2M1:
        # one correctly rounded fp64 division; an all-zero block has scale 0, not 0/0
        return tl.where(s1 == 0.0, 0.0, s2 / (2.0 * s1)).to(tl.float32)
    else:
        # one correctly rounded fp64 division (Triton's f64 `/` is div.rn.f64), then one rounding to fp32
        return (s1 / count.to(tl.float64)).to(tl.float32)


@triton.jit
def finish_scale(acc, acc2, bad, count, RULE: tl.constexpr, AXIS: tl.constexpr):
    """Per-lane accumulators (acc: |g| sums, maxima or g² sums; acc2: g² sums for RULE_M2M1) and bad int32 (NaN
    seen, max rule), reduced over AXIS → the fp32 scale(s); count: elements per scale, shaped like the result."""
    if RULE == RULE_MAX:
        s = tl.max(acc, axis=AXIS).to(tl.float32)
        # GPU max drops NaN; the reference's amax propagates it.
        return tl.where(tl.max(bad, axis=AXIS) > 0, float("nan"), s)
    else:
        return scale_of(tl.sum(acc, axis=AXIS), tl.sum(acc2, axis=AXIS), count, RULE)


@triton.jit
def accumulate(acc, acc2, bad, g, RULE: tl.constexpr):
    """Fold one loaded chunk g (fp32, masked lanes 0) into the per-lane accumulators. A square of an fp32 value is
    exact in fp64, so a contracted a·a + acc gives the same bits as the separate multiply and add."""
    a = tl.abs(g).to(tl.float64)
    if RULE == RULE_MAX:
        acc = tl.maximum(acc, a)
        bad = bad | (g != g).to(tl.int32)
    elif RULE == RULE_L2:
        acc = acc + a * a
    else:
        acc = acc + a
        if RULE == RULE_M2M1:
            acc2 = acc2 + a * a
    return acc, acc2, bad


@triton.jit
def fold(acc, acc2, bad, RULE: tl.constexpr):
    """Per-lane accumulators → one fp64 partial pair (sum or max with NaN if any lane saw one; Σg² or 0)."""
    if RULE == RULE_MAX:
        return tl.where(tl.max(bad, axis=0) > 0, float("nan"), tl.max(acc, axis=0)), tl.sum(acc2, axis=0)
    else:
        return tl.sum(acc, axis=0), tl.sum(acc2, axis=0)


@triton.jit
def tile_range(t, tpb, block_size, n, TILE):
    """Tile t (int64) of the tiled path for blocks longer than one register tile: its block, first element and
    length (≤ TILE, never across a block end; 0 for the padding tiles of a short last block)."""
    tpb = tl.cast(tpb, tl.int64)
    B = tl.cast(block_size, tl.int64)
    blk = t // tpb
    bstart = blk * B
    start = bstart + (t - blk * tpb) * TILE
    end = tl.minimum(tl.minimum(start + TILE, bstart + B), tl.cast(n, tl.int64))
    return blk, start, tl.maximum(end - start, 0)


@triton.jit
def tile_partials_kernel(x_ptr, part_ptr, n, block_size, tpb, TILE: tl.constexpr, CHUNK: tl.constexpr,
                         RULE: tl.constexpr):
    """Blocks longer than one register tile, pass 1: one fp64 partial pair per TILE-element tile of a block."""
    t = tl.program_id(0).to(tl.int64)
    blk, start, seg_len = tile_range(t, tpb, block_size, n, TILE)
    lane = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK], tl.float64)
    acc2 = tl.zeros([CHUNK], tl.float64)
    bad = tl.zeros([CHUNK], tl.int32)
    for c in range(0, seg_len, CHUNK):
        offs = c + lane
        g = tl.load(x_ptr + start + offs, mask=offs < seg_len, other=0.0).to(tl.float32)
        acc, acc2, bad = accumulate(acc, acc2, bad, g, RULE)
    p1, p2 = fold(acc, acc2, bad, RULE)
    tl.store(part_ptr + 2 * t, p1)
    tl.store(part_ptr + 2 * t + 1, p2)


@triton.jit
def block_scale_kernel(part_ptr, scales_ptr, flags_ptr, n, block_size, tpb, NPART: tl.constexpr,
                       RULE: tl.constexpr, HAS_FLAGS: tl.constexpr):
    """Pass 2: program blk reduces its block's tpb partial pairs in a fixed order → scales[blk] (fp32); with
    HAS_FLAGS, a non-finite scale sets bit 0 of *flags_ptr (the payload's flags word)."""
    blk = tl.program_id(0).to(tl.int64)
    tpb = tl.cast(tpb, tl.int64)
    i = tl.arange(0, NPART)
    acc = tl.zeros([NPART], tl.float64)
    acc2 = tl.zeros([NPART], tl.float64)
    bad = tl.zeros([NPART], tl.int32)
    for j in range(0, tpb, NPART):
        m = j + i < tpb
        p = tl.load(part_ptr + 2 * (blk * tpb + j + i), mask=m, other=0.0)
        if RULE == RULE_MAX:
            acc = tl.maximum(acc, p)
            bad = bad | (p != p).to(tl.int32)
        else:
            acc = acc + p
            acc2 = acc2 + tl.load(part_ptr + 2 * (blk * tpb + j + i) + 1, mask=m, other=0.0)
    B = tl.cast(block_size, tl.int64)
    scale = finish_scale(acc, acc2, bad, tl.minimum(B, tl.cast(n, tl.int64) - blk * B), RULE, 0)
    tl.store(scales_ptr + blk, scale)
    if HAS_FLAGS:
        tl.atomic_or(flags_ptr, 1, mask=~(tl.abs(scale) < float("inf")))


@triton.jit
def partials_kernel(x_ptr, part_ptr, n, CHUNK: tl.constexpr, RULE: tl.constexpr):
    """B = 0, first pass: program q folds chunks q, q + P, … into one fp64 partial pair (sum or max, NaN if any;
    Σg² for RULE_M2M1) at part[2q], part[2q + 1]."""
    q = tl.program_id(0)
    nprog = tl.num_programs(0)
    lane = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK], tl.float64)
    acc2 = tl.zeros([CHUNK], tl.float64)
    bad = tl.zeros([CHUNK], tl.int32)
    # n < 2^31 arrives as i32, where cdiv's n + CHUNK − 1 would wrap for n > 2^31 − CHUNK: count in i64
    nchunks = tl.cdiv(tl.cast(n, tl.int64), CHUNK)
    for c in range(q, nchunks, nprog):
        offs = tl.cast(c, tl.int64) * CHUNK + lane
        g = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        acc, acc2, bad = accumulate(acc, acc2, bad, g, RULE)
    p1, p2 = fold(acc, acc2, bad, RULE)
    tl.store(part_ptr + 2 * q, p1)
    tl.store(part_ptr + 2 * q + 1, p2)


@triton.jit
def scale_from_partials(part_ptr, nparts, n, NPART: tl.constexpr, RULE: tl.constexpr):
    """B = 0, second pass: the tensor's scale from the fp64 partial pairs (same order in every program)."""
    i = tl.arange(0, NPART)
    m = i < nparts
    p = tl.load(part_ptr + 2 * i, mask=m, other=0.0)
    if RULE == RULE_MAX:
        s = tl.max(p, axis=0).to(tl.float32)
        return tl.where(tl.max((p != p).to(tl.int32), axis=0) > 0, float("nan"), s)
    else:
        p2 = tl.load(part_ptr + 2 * i + 1, mask=m, other=0.0)
        return scale_of(tl.sum(p, axis=0), tl.sum(p2, axis=0), tl.cast(n, tl.int64), RULE)


FLT_MAX = tl.constexpr(3.4028234663852886e38)  # fp32 max, exact


@triton.jit
def inverse_scale(scale):
    """r = fp32(1/scale) (one correctly rounded division, done once per block), capped at FLT_MAX as
    reference.inverse_scale; 0 for a scale that is 0 or non-finite (truncate then ignores r)."""
    usable = (tl.abs(scale) < float("inf")) & (scale > 0)
    r = tl.minimum(tl.div_rn(1.0, tl.where(usable, scale, 1.0)), FLT_MAX)
    return tl.where(usable, r, 0.0)


@triton.jit
def truncate(g, r, scale, c0, cs):
    """z = clamp(g·r, c_0, c_s) with r = inverse_scale(scale): one fp32 multiply (nothing follows it that could
    be contracted into an FMA); 0 for scale 0; c_0 for a non-finite scale."""
    finite = tl.abs(scale) < float("inf")  # False for ±Inf and NaN
    usable = finite & (scale > 0)
    z = tl.where(usable, g * r, 0.0)
    z = tl.minimum(tl.maximum(z, c0), cs)
    return tl.where(finite, z, c0)


@triton.jit
def block_start(pid, seg, n):
    start = pid.to(tl.int64) * seg
    return start, tl.minimum(n - start, seg)


@triton.jit
def scale_truncate_kernel(x_ptr, scales_ptr, z_ptr, part_ptr, table_ptr, n, seg, nparts, block_size, tpb,
                          BITS: tl.constexpr, RULE: tl.constexpr, CHUNK: tl.constexpr, MODE: tl.constexpr,
                          NPART: tl.constexpr):
    """z fp32 for one segment per program. MODE_BLOCK: the segment is a block of ≤ CHUNK elements, whose scale
    the program computes and stores (index pid). MODE_WHOLE (B = 0): a slice of `seg` elements; every program
    reduces the same partials to the tensor's scale, program 0 stores it. MODE_TILES (B > CHUNK): tile pid of
    its block (tile_range, seg = the tile length); block_scale_kernel already stored the block's scale."""
    pid = tl.program_id(0)
    lane = tl.arange(0, CHUNK)
    c0 = tl.load(table_ptr)
    cs = tl.load(table_ptr + (1 << BITS) - 1)
    if MODE == 0:
        start, seg_len = block_start(pid, seg, n)
        m = lane < seg_len
        g = tl.load(x_ptr + start + lane, mask=m, other=0.0).to(tl.float32)
        acc, acc2, bad = accumulate(tl.zeros([CHUNK], tl.float64), tl.zeros([CHUNK], tl.float64),
                                    tl.zeros([CHUNK], tl.int32), g, RULE)
        scale = finish_scale(acc, acc2, bad, seg_len, RULE, 0)
        tl.store(scales_ptr + pid, scale)
        tl.store(z_ptr + start + lane, truncate(g, inverse_scale(scale), scale, c0, cs), mask=m)
    else:
        if MODE == 1:
            start, seg_len = block_start(pid, seg, n)
            scale = scale_from_partials(part_ptr, nparts, n, NPART, RULE)
            tl.store(scales_ptr + pid, scale, mask=pid == 0)
        else:
            blk, start, seg_len = tile_range(pid.to(tl.int64), tpb, block_size, n, seg)
            scale = tl.load(scales_ptr + blk)
        r = inverse_scale(scale)
        for c in range(0, seg_len, CHUNK):
            offs = c + lane
            mc = offs < seg_len
            gc = tl.load(x_ptr + start + offs, mask=mc, other=0.0).to(tl.float32)
            tl.store(z_ptr + start + offs, truncate(gc, r, scale, c0, cs), mask=mc)


def launch_partials(x: torch.Tensor, n: int, rule: int) -> tuple[torch.Tensor, int]:
    """B = 0 first pass: fp64 partial pairs [2P] over the flat input x; returns (partials, P)."""
    nparts = min(triton.cdiv(n, C.MAX_CHUNK), C.MAX_PARTIALS)
    part = torch.empty(2 * nparts, dtype=torch.float64, device=x.device)
    wrap_triton(partials_kernel)[(nparts,)](x, part, n, CHUNK=C.MAX_CHUNK, RULE=rule,
                                            num_warps=C.warps_for(C.MAX_CHUNK))
    return part, nparts


MODE_BLOCK, MODE_WHOLE, MODE_TILES = 0, 1, 2


def segmentation(n: int, block_size: int) -> tuple[int, int, int, int, int]:
    """(mode, segment length, number of segments, chunk, tiles per block) of the per-segment kernels."""
    chunk = C.chunk_for(block_size)
    if block_size == 0:
        return MODE_WHOLE, C.SEGMENT_B0, triton.cdiv(n, C.SEGMENT_B0), chunk, 0
    if block_size <= chunk:
        return MODE_BLOCK, block_size, triton.cdiv(n, block_size), chunk, 0
    # longer blocks are split into tiles (one program each) so a few huge blocks still fill the GPU
    tpb = triton.cdiv(block_size, C.TILE)
    return MODE_TILES, C.TILE, fmt.num_blocks(n, block_size) * tpb, chunk, tpb


def launch_block_scales(x: torch.Tensor, n: int, block_size: int, tpb: int, rule: int, scales: torch.Tensor,
                        flags: torch.Tensor | None) -> None:
    """MODE_TILES passes 1 and 2: tile partials, then every block's scale into scales (fp32 [nblocks]); with
    flags (an int32 tensor whose element 0 is the payload's flags word), bit 0 for a non-finite block."""
    nb = fmt.num_blocks(n, block_size)
    part = torch.empty(2 * nb * tpb, dtype=torch.float64, device=x.device)
    wrap_triton(tile_partials_kernel)[(nb * tpb,)](x, part, n, block_size, tpb, TILE=C.TILE, CHUNK=C.MAX_CHUNK,
                                                   RULE=rule, num_warps=C.warps_for(C.MAX_CHUNK))
    npart = min(C.MAX_PARTIALS, C.next_pow2(tpb))
    wrap_triton(block_scale_kernel)[(nb,)](part, scales, scales if flags is None else flags, n, block_size, tpb,
                                           NPART=npart, RULE=rule, HAS_FLAGS=flags is not None,
                                           num_warps=C.warps_for(npart))


def triton_scale_truncate(x: torch.Tensor, table: torch.Tensor, bits: int, block_size: int,
                          codebook: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: any shape fp32/fp16/bf16, table: C.table(codebook, bits) → (scales fp32 [nblocks], z fp32 [n])."""
    g = C.flat(x)
    n = g.numel()
    scales = torch.zeros(fmt.num_blocks(n, block_size), dtype=torch.float32, device=x.device)
    z = torch.empty(n, dtype=torch.float32, device=x.device)
    if n == 0 or not C.launches(g):
        return scales, z
    rule = cb.scale_rule(codebook)
    mode, seg, nprog, chunk, tpb = segmentation(n, block_size)
    with C.device_guard(x.device):
        part, nparts = scales, 1  # unused unless B = 0
        if mode == MODE_WHOLE:
            part, nparts = launch_partials(g, n, rule)
        elif mode == MODE_TILES:
            launch_block_scales(g, n, block_size, tpb, rule, scales, None)
        wrap_triton(scale_truncate_kernel)[(nprog,)](
            g, scales, z, part, table, n, seg, nparts, block_size, tpb, BITS=bits, RULE=rule, CHUNK=chunk,
            MODE=mode, NPART=C.next_pow2(nparts), num_warps=C.warps_for(chunk))
    return scales, z


def scale_truncate(x: torch.Tensor, bits: int, block_size: int, codebook: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Job 1, the reference's signature: x any shape → (scales fp32 [nblocks], z fp32 [n])."""
    codebook = checks.check_compress(x, bits, block_size, codebook)
    return torch.ops.tnq.triton_scale_truncate(x, C.table(codebook, bits, x.device), bits, block_size, codebook)
