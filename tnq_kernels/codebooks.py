"""Codebook math (docs/format.md): normalised level tables for TNQ, the bias-aware TNQ family and the baselines.

Pure Python (``math`` only) so it imports nothing of ours and nothing of torch. A codebook is fully defined by
``(name, bits)``; the decoder needs only its table and the per-block scale. Tables are computed in fp64 and
rounded once to fp32 (returned as Python floats that are exactly representable in fp32).

The C++ backend recomputes the same tables with the same double-precision operations; a test checks they agree
bit for bit (STYLE rule 4).

Codebooks (the derivations and measurements are in docs/codebooks.md):

- ``tnq`` (0): the paper's quantizer (Chen et al.-style TNQ, docs/format.md), scale mean|g|.
- ``tqsgd`` (1), ``nqsgd`` (2), ``qsgd`` (3): the practical baselines of docs/format.md (max- or mean-scaled, blocked).
- ``qsgd_l2`` (4): QSGD as Alistarh et al. define it ("QSGD: Communication-Efficient SGD via Gradient Quantization
  and Encoding", NeurIPS 2017, §3.1, the quantizer Q_s): Q_s(v_i) = ‖v‖₂·sgn(v_i)·ξ_i(v, s), where ξ_i rounds
  |v_i|/‖v‖₂ ∈ [0, 1] stochastically and unbiasedly to the neighbouring levels ℓ/s, ℓ = 0 … s. Scale: ‖v‖₂ of the
  block ("bucket"; B = 0 is the paper's whole vector). Here s = 2^(b−1) − 1, the paper's fixed-length encoding of
  one sign bit + (b−1) magnitude bits; the 2s + 1 signed values {−1, …, −1/s, 0, 1/s, …, 1} take 2^b − 1 codes and
  the last code is a spare level (s+1)/s (see _sign_magnitude). b = 1 has no room for a zero: levels {−1, 1}.
- ``nuqsgd_l2`` (5): NUQSGD as Ramezani-Kebrya et al. define it ("NUQSGD: Provably Communication-efficient
  Data-parallel SGD via Nonuniform Quantization", JMLR 2023 / arXiv:1908.06077, §3, the nonuniform quantizer):
  the same ‖v‖₂·sgn(v_i)·ξ_i with the exponentially spaced levels {0, 1/2^(s−1), …, 1/2, 1} of |v_i|/‖v‖₂;
  s = 2^(b−1) − 1 magnitudes, the same sign-magnitude mapping and spare level (1.5), {−1, 1} at b = 1.
- ``rtnq{N}`` (6 … 14), the family ``"rtnq"`` + ``clients=N``: bias-aware robust TNQ. Levels = TNQ's formula with
  a → a/√N, i.e. the truncation α_N = 3γ·ln(1 + s√N/a) that minimises bias² + variance/N of the N-client average
  on Laplace data (truncation bias is the same on every client, rounding noise averages out); N is rounded to a
  power of two (RTNQ_CLIENTS), so the decoder still needs only (id, bits). Scale Σg²/(2Σ|g|): the Laplace scale
  from the first two moments, exactly γ on Laplace data, unchanged by exact zeros, and larger than mean|g| on the
  heavier-than-Laplace tails of real gradients (by mean g²/(2·mean|g|²)). Unbiased w.r.t. its truncated value.
- ``tnq_max`` (15): for error feedback. TNQ's level density (∝ p^(1/3) of Laplace) over the whole block,
  [−max|g|, max|g|], so nothing is clipped and no residual can wind up (docs/codebooks.md §5): the table is TNQ's
  formula with its range α set to H_n = E[max of n Laplace magnitudes]/γ for n = 2048 (TNQ_MAX_ALPHA), divided by
  its top level. Scale max|g|.
"""
from __future__ import annotations

import functools
import math
import struct

#: a := 3·√6 / 2, the constant of the optimal TNQ truncation threshold.
TNQ_A = 3.0 * math.sqrt(6.0) / 2.0

#: client-count classes of the bias-aware TNQ family ("rtnq", docs/codebooks.md): N rounded to a power of two.
#: Its truncation threshold grows like 1.5·ln N, and between neighbouring classes the Laplace error of the
#: average is within 2.3% of the exact-N optimum (N off by at most √2).
RTNQ_CLIENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: tnq_max's range in units of the Laplace scale: H_2048 = Σ_{i≤2048} 1/i, the expected largest magnitude of a
#: block of 2048 (the default block size) Laplace draws (math.fsum, correctly rounded). Shared with csrc/tnq_constants.h, checked by a test.
TNQ_MAX_BLOCK = 2048
TNQ_MAX_ALPHA = 8.202078771817717

#: wire-format codebook ids (docs/format.md byte 6). Shared with csrc/tnq_constants.h, cross-checked by a test.
#: 4, 5: the papers' L2-norm-scaled QSGD / NUQSGD; 6 … 14: "rtnq{N}" for N in RTNQ_CLIENTS; 15: tnq_max.
CODEBOOK_IDS = {"tnq": 0, "tqsgd": 1, "nqsgd": 2, "qsgd": 3, "qsgd_l2": 4, "nuqsgd_l2": 5,
                **{f"rtnq{n}": 6 + j for j, n in enumerate(RTNQ_CLIENTS)}, "tnq_max": 15}
CODEBOOK_NAMES = {v: k for k, v in CODEBOOK_IDS.items()}
NUM_CODEBOOKS = len(CODEBOOK_IDS)
#: the family name the public API takes together with ``clients=`` (resolved by codebook_id).
RTNQ = "rtnq"
FIRST_RTNQ_ID = CODEBOOK_IDS["rtnq1"]
LAST_RTNQ_ID = CODEBOOK_IDS[f"rtnq{RTNQ_CLIENTS[-1]}"]

#: scale rules (per block, all reductions of one read of the block):
#: 0 = mean|g| (Laplace ML scale), 1 = max|g| (nothing clipped), 2 = ‖g‖₂ (QSGD/NUQSGD's norm),
#: 3 = Σg² / (2·Σ|g|) (Laplace scale from the first two moments, blind to exact zeros: see rtnq_levels).
SCALE_MEAN_ABS = 0
SCALE_MAX_ABS = 1
SCALE_L2 = 2
SCALE_M2_M1 = 3
SCALE_RULE = {"tnq": SCALE_MEAN_ABS, "tqsgd": SCALE_MEAN_ABS, "nqsgd": SCALE_MAX_ABS, "qsgd": SCALE_MAX_ABS,
              "qsgd_l2": SCALE_L2, "nuqsgd_l2": SCALE_L2, **{f"rtnq{n}": SCALE_M2_M1 for n in RTNQ_CLIENTS},
              "tnq_max": SCALE_MAX_ABS}

MIN_BITS = 1
MAX_BITS = 8


def _f32(v: float) -> float:
    """Round a double to the nearest fp32 value (round-to-nearest-even), returned as a double."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def rtnq_class(clients: int) -> int:
    """The RTNQ_CLIENTS class of N clients: N rounded to the nearest power of two in log scale (N = 3 → 4,
    N = 5 → 4, N = 6 → 8), capped at the largest class."""
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ValueError(f"clients must be an int >= 1 (the number of gradients averaged), got {clients!r}")
    # round(log2 N) without floating point: the class 2^e nearest in log scale is the one with 2^(2e-1) < N² ≤ 2^(2e+1)
    e = 0
    while e + 1 < len(RTNQ_CLIENTS) and clients * clients > 1 << (2 * e + 1):
        e += 1
    return RTNQ_CLIENTS[e]


def codebook_id(codebook: str | int, clients: int | None = None) -> int:
    """Map a codebook name (or id) to its wire id; raise ValueError naming the argument otherwise.

    ``"rtnq"`` names the bias-aware family; ``clients`` (the number of gradients the server averages; default 1)
    picks its member ``rtnq{class}`` (see rtnq_class). ``clients`` is ignored by every other codebook, so
    integrations can always pass their world size.
    """
    if codebook == RTNQ and isinstance(codebook, str):
        return CODEBOOK_IDS[f"rtnq{rtnq_class(1 if clients is None else clients)}"]
    if isinstance(codebook, bool):
        raise ValueError(f"codebook must be one of {sorted(CODEBOOK_IDS) + [RTNQ]}, got {codebook!r}")
    if isinstance(codebook, int):
        if codebook in CODEBOOK_NAMES:
            return codebook
    elif isinstance(codebook, str) and codebook in CODEBOOK_IDS:
        return CODEBOOK_IDS[codebook]
    raise ValueError(f"codebook must be one of {sorted(CODEBOOK_IDS) + [RTNQ]} (or ids 0-{NUM_CODEBOOKS - 1}), "
                     f"got {codebook!r}")


def codebook_name(codebook: str | int, clients: int | None = None) -> str:
    """The name a configuration keeps: ``"rtnq"`` stays the family (its member follows the client count of each
    call), any other name or id becomes its canonical name. Raises ValueError as codebook_id does."""
    cid = codebook_id(codebook, clients)
    return RTNQ if isinstance(codebook, str) and codebook == RTNQ else CODEBOOK_NAMES[cid]


def rtnq_clients(codebook: str | int) -> int | None:
    """The client class N of an rtnq member (its id or name), None for any other codebook."""
    cid = codebook_id(codebook)
    return RTNQ_CLIENTS[cid - FIRST_RTNQ_ID] if FIRST_RTNQ_ID <= cid <= LAST_RTNQ_ID else None


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


def rtnq_a(clients: int) -> float:
    """a_N = a/√N: the bias-aware TNQ for N clients is TNQ with a replaced by a_N (docs/codebooks.md §2)."""
    return TNQ_A / math.sqrt(float(clients))


def rtnq_alpha(bits: int, clients: int) -> float:
    """α_N/γ = 3·ln(1 + s·√N/a): minimises bias² + variance/N of the N-client average (Laplace model,
    the paper's variance bound Δ²/4 per cell); α_1 = α*."""
    s = (1 << check_bits(bits)) - 1
    return 3.0 * math.log1p(s / rtnq_a(clients))


def rtnq_mse_bound(bits: int, clients: int) -> float:
    """The minimum of that model, 27/(N·(s + a/√N)²) = 27/(s√N + a)² per element for γ = 1."""
    s = (1 << check_bits(bits)) - 1
    return 27.0 / (s * math.sqrt(float(clients)) + TNQ_A) ** 2


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


def _tnq_levels(s: int, a: float) -> list[float]:
    out = []
    for k in range(s + 1):
        d = 2 * k - s
        mag = 3.0 * (-math.log1p(-abs(d) / (s + a)))
        out.append(math.copysign(mag, d))
    return out


def _sign_magnitude(mags: list[float]) -> list[float]:
    """The papers' sign × magnitude level set {−m…, 0, …m} (mags increasing, 0 excluded) on 2^b codes: 2·len + 1
    values, plus one spare level above the top one, 1 + (top − next) (1 + top for a single magnitude).

    A symmetric set with a zero has an odd count, so 2^b codes hold one level more than the papers' fixed-length
    sign + magnitude encoding (which spends two codes on ±0). The spare sits above the largest magnitude, where
    z = g·fp32(1/‖g‖₂) ≤ 1 reaches it only when fp32 rounding puts z a few ulps above 1 (and then with a
    probability of those few ulps over the top gap): the codebook is the papers' quantizer, one code of 2^b unused."""
    top = mags[-1]
    spare = top + (top - mags[-2] if len(mags) > 1 else top)
    return [-m for m in reversed(mags)] + [0.0] + mags + [spare]


def _levels_f64(codebook_name: str, bits: int) -> list[float]:
    s = (1 << bits) - 1
    if codebook_name == "tnq":
        return _tnq_levels(s, TNQ_A)
    if codebook_name.startswith("rtnq"):
        return _tnq_levels(s, rtnq_a(int(codebook_name[4:])))
    if codebook_name == "tnq_max":
        # the a whose range 3·ln(1 + s/a) is TNQ_MAX_ALPHA, then every level over the top one (exactly ±1)
        c = _tnq_levels(s, s / math.expm1(TNQ_MAX_ALPHA / 3.0))
        return [v / c[-1] for v in c]
    if codebook_name in ("qsgd_l2", "nuqsgd_l2"):
        if bits == 1:
            return [-1.0, 1.0]  # no room for a zero: the only unbiased 2-level set on [-1, 1]
        m = (1 << (bits - 1)) - 1  # the papers' s: magnitudes 1..s (QSGD) or s powers of two (NUQSGD)
        if codebook_name == "qsgd_l2":
            return _sign_magnitude([j / m for j in range(1, m + 1)])
        return _sign_magnitude([math.ldexp(1.0, j - m) for j in range(1, m + 1)])
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

    Decoding is ĝ = scale · c_code with the block's scale from scale_rule(codebook): mean|g| (tnq, tqsgd),
    max|g| (nqsgd, qsgd, tnq_max), ‖g‖₂ (qsgd_l2, nuqsgd_l2) or Σg²/(2Σ|g|) (rtnq*).
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
    """The codebook's scale rule: SCALE_MEAN_ABS, SCALE_MAX_ABS, SCALE_L2 or SCALE_M2_M1."""
    return SCALE_RULE[CODEBOOK_NAMES[codebook_id(codebook)]]
