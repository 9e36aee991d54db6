"""Job 1 (SPEC §2): per-block scale γ̂ and truncation z = clamp(g/γ̂, c_0, c_s).

kernel helpers → stage kernels → launcher → registered op (`tnq::triton_scale_truncate`, a triton_op).

Scale rule (bit-exact with the reference): mean|g| accumulated in fp64 and divided by the block's element count
in fp64 with one correctly rounded division, rounded once to fp32 (tnq, tqsgd); or max|g| (nqsgd, qsgd), NaN
winning over everything. A block holding NaN/±Inf has a non-finite scale, z = c_0 there.
B = 0 (one scale for the whole tensor) takes two kernels: per-program partials, then every program of the
second kernel re-reduces the (≤ 1024, L2-resident) partials in a fixed order, so all agree on the scale.
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


@triton.jit
def finish_scale(acc, bad, count, MAX_RULE: tl.constexpr, AXIS: tl.constexpr):
    """acc fp64 (|g| sums, or maxima) and bad int32 (NaN seen), reduced over AXIS → the fp32 scale(s);
    count: elements per scale, shaped like the result."""
    if MAX_RULE:
        s = tl.max(acc, axis=AXIS).to(tl.float32)
        # GPU max drops NaN; the reference's amax propagates it.
        return tl.where(tl.max(bad, axis=AXIS) > 0, float("nan"), s)
    else:
        # one correctly rounded fp64 division (Triton's f64 `/` is div.rn.f64), then one rounding to fp32
        return (tl.sum(acc, axis=AXIS) / count.to(tl.float64)).to(tl.float32)


@triton.jit
def accumulate(acc, bad, g, MAX_RULE: tl.constexpr):
    """Fold one loaded chunk g (fp32, masked lanes 0) into the per-lane accumulators."""
    a = tl.abs(g).to(tl.float64)
    if MAX_RULE:
        acc = tl.maximum(acc, a)
        bad = bad | (g != g).to(tl.int32)
    else:
        acc = acc + a
    return acc, bad


@triton.jit
def segment_scale(x_ptr, start, seg_len, CHUNK: tl.constexpr, MAX_RULE: tl.constexpr):
    """Scale of elements [start, start + seg_len) read in chunks (blocks larger than one register tile)."""
    lane = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK], tl.float64)
    bad = tl.zeros([CHUNK], tl.int32)
    for c in range(0, seg_len, CHUNK):
        offs = c + lane
        g = tl.load(x_ptr + start + offs, mask=offs < seg_len, other=0.0).to(tl.float32)
        acc, bad = accumulate(acc, bad, g, MAX_RULE)
    return finish_scale(acc, bad, seg_len, MAX_RULE, 0)


@triton.jit
def partials_kernel(x_ptr, part_ptr, n, CHUNK: tl.constexpr, MAX_RULE: tl.constexpr):
    """B = 0, first pass: program q folds chunks q, q + P, … into one fp64 partial (sum or max; NaN if any)."""
    q = tl.program_id(0)
    nprog = tl.num_programs(0)
    lane = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK], tl.float64)
    bad = tl.zeros([CHUNK], tl.int32)
    nchunks = tl.cdiv(n, CHUNK)
    for c in range(q, nchunks, nprog):
        offs = tl.cast(c, tl.int64) * CHUNK + lane
        g = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        acc, bad = accumulate(acc, bad, g, MAX_RULE)
    if MAX_RULE:
        part = tl.max(acc, axis=0)
        part = tl.where(tl.max(bad, axis=0) > 0, float("nan"), part)
    else:
        part = tl.sum(acc, axis=0)
    tl.store(part_ptr + q, part)


@triton.jit
def scale_from_partials(part_ptr, nparts, n, NPART: tl.constexpr, MAX_RULE: tl.constexpr):
    """B = 0, second pass: the tensor's scale from the fp64 partials (same order in every program)."""
    i = tl.arange(0, NPART)
    m = i < nparts
    p = tl.load(part_ptr + i, mask=m, other=0.0)
    if MAX_RULE:
        s = tl.max(p, axis=0).to(tl.float32)
        return tl.where(tl.max((p != p).to(tl.int32), axis=0) > 0, float("nan"), s)
    else:
        return (tl.sum(p, axis=0) / tl.cast(n, tl.float64)).to(tl.float32)


@triton.jit
def truncate(g, scale, c0, cs):
    """z = clamp(g/scale, c_0, c_s) with one IEEE division; 0 for scale 0; c_0 for a non-finite scale."""
    finite = tl.abs(scale) < float("inf")  # False for ±Inf and NaN
    usable = finite & (scale > 0)
    z = tl.div_rn(g, tl.where(usable, scale, 1.0))
    z = tl.where(usable, z, 0.0)
    z = tl.minimum(tl.maximum(z, c0), cs)
    return tl.where(finite, z, c0)


@triton.jit
def block_start(pid, seg, n):
    start = pid.to(tl.int64) * seg
    return start, tl.minimum(n - start, seg)


@triton.jit
def scale_truncate_kernel(x_ptr, scales_ptr, z_ptr, part_ptr, table_ptr, n, seg, nparts,
                          BITS: tl.constexpr, MAX_RULE: tl.constexpr, CHUNK: tl.constexpr,
                          SINGLE: tl.constexpr, FROM_PARTIALS: tl.constexpr, NPART: tl.constexpr):
    """One program per segment of `seg` elements (a scale block, or a slice of the tensor when B = 0):
    writes its scale (fp32, index pid; B = 0: program 0 only) and z fp32 for its elements."""
    pid = tl.program_id(0)
    start, seg_len = block_start(pid, seg, n)
    lane = tl.arange(0, CHUNK)
    c0 = tl.load(table_ptr)
    cs = tl.load(table_ptr + (1 << BITS) - 1)
    if FROM_PARTIALS:
        scale = scale_from_partials(part_ptr, nparts, n, NPART, MAX_RULE)
        tl.store(scales_ptr + pid, scale, mask=pid == 0)
    else:
        if SINGLE:
            m = lane < seg_len
            g = tl.load(x_ptr + start + lane, mask=m, other=0.0).to(tl.float32)
            acc, bad = accumulate(tl.zeros([CHUNK], tl.float64), tl.zeros([CHUNK], tl.int32), g, MAX_RULE)
            scale = finish_scale(acc, bad, seg_len, MAX_RULE, 0)
        else:
            scale = segment_scale(x_ptr, start, seg_len, CHUNK, MAX_RULE)
        tl.store(scales_ptr + pid, scale)
    if SINGLE:
        tl.store(z_ptr + start + lane, truncate(g, scale, c0, cs), mask=m)
    else:
        for c in range(0, seg_len, CHUNK):
            offs = c + lane
            mc = offs < seg_len
            gc = tl.load(x_ptr + start + offs, mask=mc, other=0.0).to(tl.float32)
            tl.store(z_ptr + start + offs, truncate(gc, scale, c0, cs), mask=mc)


def launch_partials(x: torch.Tensor, n: int, max_rule: bool) -> tuple[torch.Tensor, int]:
    """B = 0 first pass: fp64 partials [P] over the flat input x; returns (partials, P)."""
    nparts = min(triton.cdiv(n, C.MAX_CHUNK), C.MAX_PARTIALS)
    part = torch.empty(nparts, dtype=torch.float64, device=x.device)
    wrap_triton(partials_kernel)[(nparts,)](x, part, n, CHUNK=C.MAX_CHUNK, MAX_RULE=max_rule,
                                            num_warps=C.warps_for(C.MAX_CHUNK))
    return part, nparts


def segmentation(n: int, block_size: int) -> tuple[int, int, int, bool]:
    """(segment length, number of segments, chunk, single) of the per-segment kernels."""
    if block_size == 0:
        seg = C.SEGMENT_B0
    else:
        seg = block_size
    chunk = C.chunk_for(block_size)
    return seg, triton.cdiv(n, seg), chunk, seg <= chunk


def triton_scale_truncate(x: torch.Tensor, table: torch.Tensor, bits: int, block_size: int,
                          codebook: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: any shape fp32/fp16/bf16, table: C.table(codebook, bits) → (scales fp32 [nblocks], z fp32 [n])."""
    g = C.flat(x)
    n = g.numel()
    scales = torch.zeros(fmt.num_blocks(n, block_size), dtype=torch.float32, device=x.device)
    z = torch.empty(n, dtype=torch.float32, device=x.device)
    if n == 0 or not C.launches(g):
        return scales, z
    max_rule = cb.scale_rule(codebook) == cb.SCALE_MAX_ABS
    seg, nprog, chunk, single = segmentation(n, block_size)
    if block_size == 0:
        part, nparts = launch_partials(g, n, max_rule)
    else:
        part, nparts = scales, 1  # unused
    wrap_triton(scale_truncate_kernel)[(nprog,)](
        g, scales, z, part, table, n, seg, nparts, BITS=bits, MAX_RULE=max_rule, CHUNK=chunk, SINGLE=single,
        FROM_PARTIALS=block_size == 0, NPART=C.next_pow2(nparts), num_warps=C.warps_for(chunk))
    return scales, z


def scale_truncate(x: torch.Tensor, bits: int, block_size: int, codebook: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Job 1, the reference's signature: x any shape → (scales fp32 [nblocks], z fp32 [n])."""
    codebook = checks.check_compress(x, bits, block_size, codebook)
    return torch.ops.tnq.triton_scale_truncate(x, C.table(codebook, bits, x.device), bits, block_size, codebook)
