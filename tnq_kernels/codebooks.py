"""Codebook math (SPEC §1): normalised level tables for TNQ and the baseline codebooks.

Pure Python (``math`` only) so it imports nothing of ours and nothing of torch. A codebook is fully defined by
``(name, bits)``; the decoder needs only its table and the per-block scale. Tables are computed in fp64 and
rounded once to fp32 (returned as Python floats that are exactly representable in fp32).

The C++ backend recomputes the same tables with the same double-precision operations; a test checks they agree
bit for bit (STYLE rule 4).
"""
from __future__ import annotations

import functools
import math
import struct

#: a := 3·√6 / 2, the constant of the optimal TNQ truncation threshold.
TNQ_A = 3.0 * math.sqrt(6.0) / 2.0

#: wire-format codebook ids (SPEC §3 byte 6). Shared with csrc/tnq_constants.h, cross-checked by a test.
CODEBOOK_IDS = {"tnq": 0, "tqsgd": 1, "nqsgd": 2, "qsgd": 3}
CODEBOOK_NAMES = {v: k for k, v in CODEBOOK_IDS.items()}

#: scale rules: 0 = mean|g| (Laplace ML scale), 1 = max|g| (nothing clipped).
SCALE_MEAN_ABS = 0
SCALE_MAX_ABS = 1
SCALE_RULE = {"tnq": SCALE_MEAN_ABS, "tqsgd": SCALE_MEAN_ABS, "nqsgd": SCALE_MAX_ABS, "qsgd": SCALE_MAX_ABS}

MIN_BITS = 1
MAX_BITS = 8


def _f32(v: float) -> float:
    """Round a double to the nearest fp32 value (round-to-nearest-even), returned as a double."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def codebook_id(codebook: str | int) -> int:
    """Map a codebook name (or id) to its wire id; raise ValueError naming the argument otherwise."""
    if isinstance(codebook, bool):
        raise ValueError(f"codebook must be one of {sorted(CODEBOOK_IDS)}, got {codebook!r}")
    if isinstance(codebook, int):
        if codebook in CODEBOOK_NAMES:
            return codebook
    elif isinstance(codebook, str) and codebook in CODEBOOK_IDS:
        return CODEBOOK_IDS[codebook]
    raise ValueError(f"codebook must be one of {sorted(CODEBOOK_IDS)} (or ids 0-3), got {codebook!r}")


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}] (2-5 are the fast paths), got {bits!r}")
    return bits


def tnq_alpha(bits: int) -> float:
    """α*/γ = 3·ln(1 + 2s/(3√6)), the optimal truncation threshold in units of the Laplace scale γ."""
    s = (1 << check_bits(bits)) - 1
    return 3.0 * math.log1p(2.0 * s / (3.0 * math.sqrt(6.0)))


def tnq_mse_bound(bits: int) -> float:
    """Closed-form per-element MSE bound 27/(s+a)² for γ = 1 (the paper's E_TQ per coordinate)."""
    s = (1 << check_bits(bits)) - 1
    return 27.0 / (s + TNQ_A) ** 2


def lambert_w0(x: float) -> float:
    """Principal branch of Lambert W for x ≥ 0 by Newton's method in fp64 (mirrored in csrc)."""
    if x < 0:
        raise ValueError(f"x must be >= 0 for lambert_w0, got {x}")
    w = math.log1p(x)  # start below the root for x >= 0; Newton on w·e^w − x converges monotonically
    for _ in range(64):
        ew = math.exp(w)
        f = w * ew - x
        w_next = w - f / (ew * (w + 1.0))
        if w_next == w:
            break
        w = w_next
    return w


def _levels_f64(codebook_name: str, bits: int) -> list[float]:
    s = (1 << bits) - 1
    if codebook_name == "tnq":
        out = []
        for k in range(s + 1):
            d = 2 * k - s
            mag = 3.0 * (-math.log1p(-abs(d) / (s + TNQ_A)))
            out.append(math.copysign(mag, d))
        return out
    if codebook_name == "tqsgd":
        w = lambert_w0(float(s * s))
        return [w * (2.0 * k / s - 1.0) for k in range(s + 1)]
    if codebook_name == "nqsgd":
        m = 1 << (bits - 1)
        mags = [math.ldexp(1.0, -j) for j in range(m)]  # 1, 1/2, ..., 2^-(m-1)
        return [-v for v in mags] + list(reversed(mags))
    if codebook_name == "qsgd":
        return [2.0 * k / s - 1.0 for k in range(s + 1)]
    raise AssertionError(codebook_name)


@functools.lru_cache(maxsize=None)
def levels(codebook: str | int, bits: int) -> tuple[float, ...]:
    """The 2^bits normalised levels c_0 < … < c_s of a codebook, each exactly an fp32 value.

    Decoding is ĝ = scale · c_code with scale = mean|g| (tnq, tqsgd) or max|g| (nqsgd, qsgd) per block.
    """
    name = CODEBOOK_NAMES[codebook_id(codebook)]
    out = tuple(_f32(v) for v in _levels_f64(name, check_bits(bits)))
    assert all(a < b for a, b in zip(out, out[1:])), (name, bits)
    return out


@functools.lru_cache(maxsize=None)
def inv_gaps(codebook: str | int, bits: int) -> tuple[float, ...]:
    """fp32(1 / (c_{k+1} − c_k)) from the fp32 levels, k = 0 … s−1: the rounding probability is
    p = (z − c_k) · inv_gaps[k] — the real level gaps, never the fractional part of an inverse map."""
    c = levels(codebook, bits)
    return tuple(_f32(1.0 / (c[k + 1] - c[k])) for k in range(len(c) - 1))


def scale_rule(codebook: str | int) -> int:
    """SCALE_MEAN_ABS or SCALE_MAX_ABS for a codebook."""
    return SCALE_RULE[CODEBOOK_NAMES[codebook_id(codebook)]]
