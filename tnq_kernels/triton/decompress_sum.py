"""Fused decompress_sum (SPEC §2): Σ_w weights[w]·decode(payloads[w]) in one pass, the server-side aggregation.

kernel → launchers (sum_into, decompress_sum_into) → registered op (`tnq::triton_decompress_sum`, an opaque
custom_op like decompress) → public function.

Each program decodes the same CHUNK elements of up to MAX_FUSED payloads (separate pointer arguments; unused
slots repeat the first) and accumulates in fp32 in payload order, acc = acc + (w·v), the first term initialising
acc, exactly as the reference. Up to MAX_FUSED payloads of one layout (bits, block size, codebook) are one
launch: one read of each payload, one write of the result. Longer lists or mixed layouts chain launches through
an fp32 accumulator. Launched with enable_fp_fusion=False, so no FMA contraction changes the result: bit-exact
with the reference (tests/test_triton_aot.py checks the PTX). While a CUDA graph is captured, each payload is one
launch of decompress.checked_kernel (header read on the device, see decompress.py), chained the same way.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .. import format as fmt
from .. import checks
from . import _common as C
from .decompress import (CHUNK, check_dtype, check_out, check_shape, checked_term, decode_tile, scale_mode,
                         words_of)

MAX_FUSED = 8


@triton.jit
def add_term(acc, p_ptr, w, e0, n, block_size, codes_w0, table_ptr, FIRST: tl.constexpr, WEIGHTED: tl.constexpr,
             BITS: tl.constexpr, CHUNK: tl.constexpr, SCALE_MODE: tl.constexpr, EXACT: tl.constexpr):
    v = decode_tile(p_ptr, e0, n, block_size, codes_w0, table_ptr, BITS, CHUNK, SCALE_MODE, EXACT)
    if WEIGHTED:
        v = v * w
    if FIRST:
        return v
    else:
        return acc + v


@triton.jit
def decompress_sum_kernel(p0, p1, p2, p3, p4, p5, p6, p7, w0, w1, w2, w3, w4, w5, w6, w7,
                          acc_ptr, out_ptr, table_ptr, n, block_size, codes_w0,
                          W: tl.constexpr, ACC_IN: tl.constexpr, WEIGHTED: tl.constexpr, BITS: tl.constexpr,
                          CHUNK: tl.constexpr, SCALE_MODE: tl.constexpr, EXACT: tl.constexpr):
    """W ≤ 8 payloads (int32 views) of one layout; ACC_IN: continue from acc_ptr (fp32); result → out_ptr."""
    e0 = tl.program_id(0).to(tl.int64) * CHUNK
    idx = e0 + tl.arange(0, CHUNK)
    m = idx < n
    acc = tl.zeros([CHUNK], tl.float32)
    if ACC_IN:
        acc = tl.load(acc_ptr + idx, mask=m, other=0.0)
    acc = add_term(acc, p0, w0, e0, n, block_size, codes_w0, table_ptr, not ACC_IN, WEIGHTED, BITS, CHUNK,
                   SCALE_MODE, EXACT)
    if W > 1:
        acc = add_term(acc, p1, w1, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    if W > 2:
        acc = add_term(acc, p2, w2, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    if W > 3:
        acc = add_term(acc, p3, w3, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    if W > 4:
        acc = add_term(acc, p4, w4, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    if W > 5:
        acc = add_term(acc, p5, w5, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    if W > 6:
        acc = add_term(acc, p6, w6, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    if W > 7:
        acc = add_term(acc, p7, w7, e0, n, block_size, codes_w0, table_ptr, False, WEIGHTED, BITS, CHUNK,
                       SCALE_MODE, EXACT)
    tl.store(out_ptr + idx, C.to_output(acc, out_ptr.dtype.element_ty, EXACT), mask=m)


def groups(headers: Sequence[fmt.Header]) -> list[tuple[int, int]]:
    """[start, stop) runs of ≤ MAX_FUSED consecutive payloads sharing (bits, block_size, codebook)."""
    out, start = [], 0
    key = lambda h: (h.bits, h.block_size, h.codebook)  # noqa: E731
    for w in range(1, len(headers) + 1):
        if w == len(headers) or w - start == MAX_FUSED or key(headers[w]) != key(headers[start]):
            out.append((start, w))
            start = w
    return out


def check_sum_args(payloads: Sequence[torch.Tensor], weights: Optional[Sequence[float]]) -> None:
    if len(payloads) == 0:
        raise ValueError("payloads must hold at least one payload, got an empty list")
    if weights is not None and len(weights) != len(payloads):
        raise ValueError(f"weights must have one entry per payload ({len(payloads)}), got {len(weights)}")


def sum_into(payloads: Sequence[torch.Tensor], weights: Optional[Sequence[float]], out: torch.Tensor,
             shape: Sequence[int]) -> None:
    """Launcher: out (contiguous, prod(shape) elements, an output dtype) = Σ_w weights[w]·decode(payloads[w])."""
    check_sum_args(payloads, weights)
    device = payloads[0].device
    n = out.numel()
    if C.capturing(device):
        # no host read: one checked launch per payload, chained through an fp32 accumulator in order
        acc = out if out.dtype == torch.float32 or len(payloads) == 1 else torch.empty(
            n, dtype=torch.float32, device=device)
        for w, p in enumerate(payloads):
            dst = out if w == len(payloads) - 1 else acc
            checked_term(p, dst.view(-1), None if w == 0 else acc.view(-1),
                         None if weights is None else weights[w])
        return
    headers = checks.read_headers(payloads)
    for w, h in enumerate(headers):
        check_shape(h, shape, out.dtype, f"payloads[{w}]")
    if n == 0:
        return
    out = out.view(-1)
    runs = groups(headers)
    acc = out if out.dtype == torch.float32 or len(runs) == 1 else torch.empty(n, dtype=torch.float32,
                                                                                device=device)
    C.all_levels(device)  # an eager call prepares the capture path's table
    with C.device_guard(device):
        for r, (a, b) in enumerate(runs):
            h = headers[a]
            ptrs = [words_of(p) for p in payloads[a:b]]
            ws = [1.0] * (b - a) if weights is None else [float(v) for v in weights[a:b]]
            ptrs += [ptrs[0]] * (MAX_FUSED - len(ptrs))
            ws += [1.0] * (MAX_FUSED - len(ws))
            dst = out if r == len(runs) - 1 else acc
            decompress_sum_kernel[(triton.cdiv(n, CHUNK),)](
                *ptrs, *ws, acc, dst, C.table(h.codebook, h.bits, device), n, h.block_size, h.codes_offset // 4,
                W=b - a, ACC_IN=r > 0, WEIGHTED=weights is not None, BITS=h.bits, CHUNK=CHUNK,
                SCALE_MODE=scale_mode(h.block_size), EXACT=C.EXACT, num_warps=C.warps_for(CHUNK),
                **C.NO_FMA)


def decompress_sum_into(payloads: Sequence[torch.Tensor], weights: Optional[Sequence[float]],
                        out: torch.Tensor) -> None:
    """Σ_w weights[w]·decode(payloads[w]) written into the existing contiguous tensor `out` (its dtype is the
    output dtype, its numel the payloads')."""
    check_sum_args(payloads, weights)
    check_out(out, payloads[0].device)
    sum_into(list(payloads), None if weights is None else list(weights), out, [out.numel()])


def triton_decompress_sum(payloads: list[torch.Tensor], weights: Optional[list[float]], shape: list[int],
                          dtype: torch.dtype) -> torch.Tensor:
    """W uint8 payloads of equal numel → Σ_w weights[w]·decode(payloads[w]) of `shape`, `dtype` (fp32 accumulation)."""
    check_sum_args(payloads, weights)
    check_dtype(dtype, "dtype")
    out = torch.empty(shape, dtype=dtype, device=payloads[0].device)
    sum_into(payloads, weights, out, shape)
    return out



def decompress_sum(payloads: Sequence[torch.Tensor], weights: Sequence[float] | None, shape: Sequence[int],
                   dtype: torch.dtype) -> torch.Tensor:
    """Σ_w weights[w]·decompress(payloads[w]) accumulated in fp32 in order w = 0, 1, … (reference signature)."""
    return torch.ops.tnq.triton_decompress_sum(list(payloads), None if weights is None else list(weights),
                                               list(shape), dtype)
