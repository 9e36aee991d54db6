"""Job 3 (SPEC §2/§3): bit-plane packing of b-bit codes into uint32 words, and its inverse.

kernel helpers → stage kernels → registered ops (`tnq::triton_pack`, `tnq::triton_unpack`, triton_ops).

Group g of 32 codes becomes `bits` words; word p holds bit p of code 32g + j at bit j. A [groups, 32] tile is
packed with one tl.sum per plane of (bit << lane) over the lane axis: the bits are disjoint, so the sum is the OR.
Words are assembled into a [groups, BITS_P2] tile so the store is one contiguous run per group.
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
def pack_planes(code, CHUNK: tl.constexpr, BITS: tl.constexpr, BITS_P2: tl.constexpr):
    """code int32 [CHUNK] (CHUNK multiple of 32) → words int32 [CHUNK // 32, BITS_P2] (columns ≥ BITS are 0)."""
    c2 = tl.reshape(code.to(tl.uint32), [CHUNK // 32, 32])
    lane = tl.arange(0, 32).to(tl.uint32)[None, :]
    col = tl.arange(0, BITS_P2)[None, :]
    words = tl.zeros([CHUNK // 32, BITS_P2], tl.uint32)
    for p in tl.static_range(BITS):
        wp = tl.sum(((c2 >> p) & 1) << lane, axis=1)
        words = tl.where(col == p, wp[:, None], words)
    return words.to(tl.int32, bitcast=True)


@triton.jit
def store_words(out_ptr, words, group0, ngroups_valid, CHUNK: tl.constexpr, BITS: tl.constexpr,
                BITS_P2: tl.constexpr):
    """Store a [CHUNK // 32, BITS_P2] word tile for groups group0 … (int64) where group < group0 + ngroups_valid."""
    gi = tl.arange(0, CHUNK // 32)
    store_groups(out_ptr, words, group0 + gi, gi < ngroups_valid, BITS, BITS_P2)


@triton.jit
def store_groups(out_ptr, words, group, valid, BITS: tl.constexpr, BITS_P2: tl.constexpr):
    """Store a [G, BITS_P2] word tile at groups `group` (int64 [G]) where `valid` [G]."""
    col = tl.arange(0, BITS_P2)[None, :]
    tl.store(out_ptr + group[:, None] * BITS + col, words, mask=valid[:, None] & (col < BITS))


@triton.jit
def unpack_planes(words_ptr, group0, ngroups_valid, CHUNK: tl.constexpr, BITS: tl.constexpr):
    """Load the words of CHUNK // 32 groups starting at group0 (int64) → codes int32 [CHUNK]."""
    gi = tl.arange(0, CHUNK // 32)
    gm = gi < ngroups_valid
    lane = tl.arange(0, 32)[None, :]
    code = tl.zeros([CHUNK // 32, 32], tl.int32)
    base = words_ptr + (group0 + gi) * BITS
    for p in tl.static_range(BITS):
        w = tl.load(base + p, mask=gm, other=0)
        code = code | (((w[:, None] >> lane) & 1) << p)
    return tl.reshape(code, [CHUNK])


@triton.jit
def pack_kernel(codes_ptr, words_ptr, n, BITS: tl.constexpr, BITS_P2: tl.constexpr, CHUNK: tl.constexpr):
    e0 = tl.program_id(0).to(tl.int64) * CHUNK
    idx = e0 + tl.arange(0, CHUNK)
    code = tl.load(codes_ptr + idx, mask=idx < n, other=0).to(tl.int32)
    words = pack_planes(code & ((1 << BITS) - 1), CHUNK, BITS, BITS_P2)
    store_words(words_ptr, words, e0 // 32, tl.cdiv(n - e0, 32), CHUNK, BITS, BITS_P2)


@triton.jit
def unpack_kernel(words_ptr, codes_ptr, n, BITS: tl.constexpr, CHUNK: tl.constexpr):
    e0 = tl.program_id(0).to(tl.int64) * CHUNK
    code = unpack_planes(words_ptr, e0 // 32, tl.cdiv(n - e0, 32), CHUNK, BITS)
    idx = e0 + tl.arange(0, CHUNK)
    tl.store(codes_ptr + idx, code.to(tl.uint8), mask=idx < n)


_CHUNK = 2048


def triton_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [n] (any shape, flattened; bits above `bits` ignored) → int32 words [bits·ceil(n/32)]."""
    c = C.flat(codes)
    n = c.numel()
    words = torch.empty(fmt.num_words(n, bits), dtype=torch.int32, device=codes.device)
    if n > 0 and C.launches(c):
        with C.device_guard(codes.device):
            wrap_triton(pack_kernel)[(triton.cdiv(n, _CHUNK),)](c, words, n, BITS=bits, BITS_P2=C.next_pow2(bits),
                                                               CHUNK=_CHUNK, num_warps=C.warps_for(_CHUNK))
    return words


def triton_unpack(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """int32 words [bits·ceil(n/32)] → uint8 codes [n]."""
    torch._check(words.numel() == fmt.num_words(n, bits),
                 lambda: f"words must hold bits*ceil(n/32) = {fmt.num_words(n, bits)} values, got {words.numel()}")
    w = C.flat(words)
    codes = torch.empty(n, dtype=torch.uint8, device=words.device)
    if n > 0 and C.launches(w):
        with C.device_guard(words.device):
            wrap_triton(unpack_kernel)[(triton.cdiv(n, _CHUNK),)](w, codes, n, BITS=bits, CHUNK=_CHUNK,
                                                                 num_warps=C.warps_for(_CHUNK))
    return codes


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Job 3, the reference's signature: uint8 codes [n] → int32 words [bits·ceil(n/32)]."""
    checks.check_codes(codes)
    checks.check_bits(bits)
    return torch.ops.tnq.triton_pack(codes, bits)


def unpack(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack: int32 words [bits·ceil(n/32)] → uint8 codes [n]."""
    checks.check_words(words, bits, n)
    return torch.ops.tnq.triton_unpack(words, bits, n)
