"""Job 2 (docs/architecture.md): codebook lookup + unbiased stochastic rounding, z → code.

kernel helper → stage kernel → registered op (`tnq::triton_quantize`, a triton_op).

k = the number of interior levels c_1..c_{s-1} that are ≤ z, found by a branchless binary search over the fp32
level table (b gathers from a ≤ 1 KiB table that stays in L1); p = (z − c_k)·(1/(c_{k+1} − c_k)) as one fp32
subtraction and one fp32 multiplication (no add follows, so nothing can be contracted into an FMA);
code = k + [U < p] with U the 16-bit centred uniform of (seed, global index) from _common.uniform16, or U = 0.5
(NEAREST, a constexpr: the nearest level, no hash computed).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import checks
from .. import codebooks as cb
from .. import rng
from . import _common as C


@triton.jit
def round_codes(z, idx, i_first, table_ptr, key0, key1, BITS: tl.constexpr, NAN_Z: tl.constexpr,
                NEAREST: tl.constexpr):
    """z fp32 in [c_0, c_s], idx int64 global indices (i_first: the program's first, see _common.uniform16),
    keys uint32 → codes int32 in [0, 2^BITS − 1].

    NAN_Z: z may be NaN (the quantize stage takes any z). The reference's searchsorted sorts NaN after every
    level (k = s − 1) and p = NaN never rounds up, so NaN gives s − 1; the search runs on +inf instead (which also
    reaches k = s − 1) while p keeps the NaN. compress never makes a NaN z (non-finite blocks give c_0)."""
    zs = z
    if NAN_Z:
        zs = tl.where(z != z, float("inf"), z)
    k = tl.zeros(z.shape, tl.int32)
    ck = tl.zeros(z.shape, tl.float32) + tl.load(table_ptr)
    for i in tl.static_range(BITS):
        cand = k + (1 << (BITS - 1 - i))
        # the last level c_s is never a cell start: k ≤ s − 1 = 2^BITS − 2 (NaN ≤ z is false, even for z = +inf)
        cv = tl.load(table_ptr + cand, mask=cand <= (1 << BITS) - 2, other=float("nan"))
        take = cv <= zs
        k = tl.where(take, cand, k)
        ck = tl.where(take, cv, ck)
    p = (z - ck) * tl.load(table_ptr + (1 << BITS) + k)
    if NEAREST:
        u = C.NEAREST_U
    else:
        u = C.uniform16(idx, i_first, key0, key1)
    return k + (u < p).to(tl.int32)


@triton.jit(do_not_specialize=["key0", "key1"])
def quantize_kernel(z_ptr, codes_ptr, table_ptr, n, key0, key1, BITS: tl.constexpr, CHUNK: tl.constexpr,
                    NEAREST: tl.constexpr):
    i_first = tl.program_id(0).to(tl.int64) * CHUNK
    idx = i_first + tl.arange(0, CHUNK)
    m = idx < n
    z = tl.load(z_ptr + idx, mask=m, other=0.0)
    code = round_codes(z, idx, i_first, table_ptr, key0.to(tl.uint32, bitcast=True), key1.to(tl.uint32, bitcast=True), BITS,
                       True, NEAREST)
    tl.store(codes_ptr + idx, code.to(tl.uint8), mask=m)


def triton_quantize(z: torch.Tensor, table: torch.Tensor, bits: int, seed: int, rounding: int = 0) -> torch.Tensor:
    """z fp32 [n] (any shape, flattened) → uint8 codes [n]."""
    zf = C.flat(z)
    n = zf.numel()
    codes = torch.empty(n, dtype=torch.uint8, device=z.device)
    if n > 0 and C.launches(zf):
        key0, key1 = C.seed_args(seed)
        chunk = 2048
        with C.device_guard(z.device):
            wrap_triton(quantize_kernel)[(triton.cdiv(n, chunk),)](zf, codes, table, n, key0, key1, BITS=bits,
                                                                   CHUNK=chunk, NEAREST=rounding == rng.NEAREST,
                                                                   num_warps=C.warps_for(chunk))
    return codes


def quantize(z: torch.Tensor, bits: int, codebook: int, seed: int, rounding: int = rng.STOCHASTIC) -> torch.Tensor:
    """Job 2, the reference's signature: z fp32 [n] → uint8 codes [n]."""
    checks.check_z(z)
    checks.check_bits(bits)
    checks.check_rounding(rounding)
    codebook = cb.codebook_id(codebook)
    return torch.ops.tnq.triton_quantize(z, C.table(codebook, bits, z.device), bits, seed, rounding)
