"""The counter-based generator of docs/RNG.md (SPEC v1.2), in its reference forms.

Every backend computes, for element i (its global index in the flattened tensor, 64-bit) and a 64-bit seed:

    fmix32(x):  x ^= x >> 16;  x *= 0x85EBCA6B;  x ^= x >> 13;  x *= 0xC2B2AE35;  x ^= x >> 16   (mod 2^32)
    key0 = fmix32(seed_lo ^ 0x9E3779B9)          key1 = fmix32(seed_hi ^ 0x7F4A7C15)   (once per call)
    j    = i >> 1                                  the pair index; j_hi / j_lo its high / low 32 bits
    K    = fmix32(key0 ^ fmix32(j_hi ^ key1))      constant over 2^33 elements: once per block
    h    = fmix32(j_lo ^ K)                        H(seed, j): one finaliser per pair of elements
    m    = (h >> (16 · (i & 1))) & 0xFFFF          element 2j takes the low half, 2j + 1 the high half
    U    = (m + 0.5) · 2^-16                       16-bit centred uniform in (0, 1), exact in fp32

seed_lo/seed_hi are the low/high 32-bit halves of the seed (a negative int64 seed is read as its two's
complement). Only 32-bit integer multiplies, xors and shifts: the same bits in Python, torch, C++, CUDA and
Triton. Test vectors live in docs/RNG.md and tests/test_rng.py. v1.1 (payloads written before) drew
U = (fmix32(fmix32(i_lo ^ key0) + (i_hi ^ key1)) >> 8) · 2^-24 per element; decoders never see the difference.
"""
from __future__ import annotations

import torch

#: the generator version that writes results record (experiments, benchmarks); rows without it are "v1.1"
VERSION = "v1.2"
#: what a results row without an "rng" field was written with
VERSION_BEFORE_RECORDING = "v1.1"

M32 = 0xFFFFFFFF
C1 = 0x85EBCA6B
C2 = 0xC2B2AE35
SEED_SALT_LO = 0x9E3779B9
SEED_SALT_HI = 0x7F4A7C15
UNIFORM_BITS = 16

#: encode rounding modes, the ``rounding`` argument of compress / quantize (ids shared with csrc/tnq_constants.h
#: RoundingId and the Triton kernels; tests/test_constants.py cross-checks them). Both give code = k + [U < p];
#: "stochastic" takes U from this generator (unbiased), "nearest" takes the constant U = NEAREST_U for every element
#: (the nearest level, ties down): it draws no random numbers, so its codes do not depend on the seed.
ROUNDING_IDS = {"stochastic": 0, "nearest": 1}
ROUNDING_NAMES = {v: k for k, v in ROUNDING_IDS.items()}
STOCHASTIC = ROUNDING_IDS["stochastic"]
NEAREST = ROUNDING_IDS["nearest"]
NEAREST_U = 0.5


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


def pair_key_int(key0: int, key1: int, j_hi: int) -> int:
    """K: the key of every pair whose index has high half j_hi (once per block in the kernels)."""
    return fmix32_int(key0 ^ fmix32_int((j_hi & M32) ^ key1))


def hash_int(seed: int, j: int) -> int:
    """H(seed, j): the 32-bit word of pair j (elements 2j and 2j + 1), the scalar definition every backend
    reproduces."""
    key0, key1 = seed_keys(seed)
    return fmix32_int((j & M32) ^ pair_key_int(key0, key1, j >> 32))


def bits16_int(seed: int, i: int) -> int:
    """m: the 16 random bits of element i."""
    return (hash_int(seed, i >> 1) >> (16 * (i & 1))) & 0xFFFF


def uniform_int(seed: int, i: int) -> float:
    """U of element i as a Python float (exact: (m + 0.5) · 2^-16)."""
    return (bits16_int(seed, i) + 0.5) * 2.0 ** -UNIFORM_BITS


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # x < 2^32 in int64; split the constant so no intermediate exceeds 2^49 (no signed overflow).
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, C1)
    x = x ^ (x >> 13)
    x = _mul32(x, C2)
    return x ^ (x >> 16)


def hash_tensor(seed: int, j: torch.Tensor) -> torch.Tensor:
    """H(seed, j) elementwise; ``j`` int64 pair indices ≥ 0, result int64 in [0, 2^32)."""
    key0, key1 = seed_keys(seed)
    k = _fmix32(key0 ^ _fmix32((j >> 32) ^ key1))
    return _fmix32((j & M32) ^ k)


def bits16_tensor(seed: int, index: torch.Tensor) -> torch.Tensor:
    """m of each element: ``index`` int64 element indices ≥ 0 → int64 in [0, 2^16)."""
    return (hash_tensor(seed, index >> 1) >> (16 * (index & 1))) & 0xFFFF


def uniform_tensor(seed: int, index: torch.Tensor) -> torch.Tensor:
    """U = (m + 0.5) · 2^-16 of each element: fp32 in (0, 1), exactly 16 random bits, centred."""
    return (bits16_tensor(seed, index).to(torch.float32) + 0.5) * 2.0 ** -UNIFORM_BITS


def derive_seed(*parts: int) -> int:
    """Fold integers (user seed, rank, step, bucket, …) into one 63-bit seed with the same mixer, so
    ranks and buckets draw independent rounding noise (correlated noise would not average out)."""
    h0, h1 = 0x243F6A88, 0x85A308D3
    for p in parts:
        p &= (1 << 64) - 1
        h0 = fmix32_int(h0 ^ fmix32_int((p & M32) ^ h1))
        h1 = fmix32_int(h1 ^ fmix32_int((p >> 32) ^ h0) ^ SEED_SALT_HI)
    return ((h1 & 0x7FFFFFFF) << 32) | h0
