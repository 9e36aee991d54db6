"""The counter-based generator H(seed, i) of SPEC §4, in its reference forms.

Every backend computes, for element i (its global index in the flattened tensor, 64-bit) and a 64-bit seed:

    fmix32(x):  x ^= x >> 16;  x *= 0x85EBCA6B;  x ^= x >> 13;  x *= 0xC2B2AE35;  x ^= x >> 16   (mod 2^32)
    key0 = fmix32(seed_lo ^ 0x9E3779B9)          key1 = fmix32(seed_hi ^ 0x7F4A7C15)   (once per call)
    h    = fmix32(i_lo ^ key0)
    h    = fmix32((h + (i_hi ^ key1)) mod 2^32)
    U    = (h >> 8) · 2^-24                        (a 24-bit uniform in [0, 1), exact in fp32)

seed_lo/seed_hi and i_lo/i_hi are the low/high 32-bit halves (a negative int64 seed is read as its two's
complement). Only 32-bit integer multiplies, xors and shifts: the same bits in Python, torch, C++, CUDA and
Triton. Test vectors live in docs/RNG.md and tests/test_rng.py.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
C1 = 0x85EBCA6B
C2 = 0xC2B2AE35
SEED_SALT_LO = 0x9E3779B9
SEED_SALT_HI = 0x7F4A7C15
UNIFORM_BITS = 24


def fmix32_int(x: int) -> int:
    """MurmurHash3's 32-bit finaliser on a Python int."""
    x &= M32
    x ^= x >> 16
    x = (x * C1) & M32
    x ^= x >> 13
    x = (x * C2) & M32
    x ^= x >> 16
    return x


def seed_keys(seed: int) -> tuple[int, int]:
    """(key0, key1) for a seed: computed once per call on the host and handed to kernels as uint32."""
    seed &= (1 << 64) - 1
    return fmix32_int((seed & M32) ^ SEED_SALT_LO), fmix32_int((seed >> 32) ^ SEED_SALT_HI)


def hash_int(seed: int, i: int) -> int:
    """H(seed, i) as a 32-bit int: the scalar definition every backend must reproduce."""
    key0, key1 = seed_keys(seed)
    h = fmix32_int((i & M32) ^ key0)
    return fmix32_int((h + ((i >> 32) ^ key1)) & M32)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # x < 2^32 in int64; split the constant so no intermediate exceeds 2^49 (no signed overflow).
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, C1)
    x = x ^ (x >> 13)
    x = _mul32(x, C2)
    return x ^ (x >> 16)


def hash_tensor(seed: int, index: torch.Tensor) -> torch.Tensor:
    """H(seed, index) elementwise; ``index`` int64 ≥ 0, result int64 in [0, 2^32)."""
    key0, key1 = seed_keys(seed)
    h = _fmix32((index & M32) ^ key0)
    return _fmix32((h + ((index >> 32) ^ key1)) & M32)


def uniform_tensor(seed: int, index: torch.Tensor) -> torch.Tensor:
    """U = H(seed, index) >> 8 scaled to [0, 1): fp32, exactly 24 random bits."""
    return (hash_tensor(seed, index) >> (32 - UNIFORM_BITS)).to(torch.float32) * 2.0 ** -UNIFORM_BITS


def derive_seed(*parts: int) -> int:
    """Fold integers (user seed, rank, step, bucket, …) into one 63-bit seed with the same mixer, so
    ranks and buckets draw independent rounding noise (correlated noise would not average out)."""
    h0, h1 = 0x243F6A88, 0x85A308D3
    for p in parts:
        p &= (1 << 64) - 1
        h0 = fmix32_int(h0 ^ fmix32_int((p & M32) ^ h1))
        h1 = fmix32_int(h1 ^ fmix32_int((p >> 32) ^ h0) ^ SEED_SALT_HI)
    return ((h1 & 0x7FFFFFFF) << 32) | h0
