"""Numbers behind docs/codebooks.md: the N-client truncation α_N, its Laplace error, the scale statistic on
heavier-than-Laplace families, and Monte-Carlo checks of the implementation.

    python -m experiments.codebook_math                 # ~5 min on 2 cores (reference backend)
    python -m experiments.codebook_math --out experiments/results/codebooks/laplace.md

Exact numbers are numerical integrals over the density (no sampling): for a table c (in units of the scale σ),
bias² = E[(g − clamp(g, ±c_s·σ))²] and var = E[(z − c_k)(c_{k+1} − z)]·σ² (the variance of stochastic rounding in
cell k), so the error of the average of N clients' independent roundings of the same g is bias² + var/N.
Monte Carlo runs the reference implementation (tnq_kernels.reference) on Laplace samples.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref
from tnq_kernels import rng

BITS = (2, 3, 4, 5)


# ---- one-sided densities of |g| on a grid (weights sum to 1), mean |g| = 1 ----

def _grid(xmax: float, n: int = 200_001) -> torch.Tensor:
    # dense near 0 and long in the tail: a geometric grid glued to a linear start
    return torch.cat([torch.linspace(0, 1e-3, 1001, dtype=torch.float64)[:-1],
                      torch.logspace(-3, math.log10(xmax), n, dtype=torch.float64)])


def _weights(x: torch.Tensor, pdf: torch.Tensor) -> torch.Tensor:
    dx = torch.empty_like(x)
    dx[1:-1] = (x[2:] - x[:-2]) / 2
    dx[0] = (x[1] - x[0]) / 2
    dx[-1] = (x[-1] - x[-2]) / 2
    w = pdf * dx
    return w / w.sum()


def laplace_density():
    x = _grid(80.0)
    return x, _weights(x, torch.exp(-x))


def gen_gauss_density(beta: float):
    """|g| ∝ exp(−(x/θ)^β) (generalised Gaussian, β = 1 Laplace, β < 1 heavier tails), scaled to mean |g| = 1."""
    theta = math.gamma(1 / beta) / math.gamma(2 / beta)
    x = _grid(theta * 70.0 ** (1 / beta))
    return x, _weights(x, torch.exp(-(x / theta) ** beta))


def laplace_mixture_density(sd: float):
    """Laplace with a log-normal scale (log-sd ``sd``): a block mixing rows of different magnitude; mean |g| = 1."""
    t = torch.linspace(-5 * sd, 5 * sd, 101, dtype=torch.float64)
    th = torch.exp(t)
    pw = torch.exp(-0.5 * (t / sd) ** 2)
    pw = pw / pw.sum()
    th = th / float((pw * th).sum())
    x = _grid(float(th.max()) * 70)
    pdf = (pw[:, None] * torch.exp(-x[None, :] / th[:, None]) / th[:, None]).sum(0)
    return x, _weights(x, pdf)


ROUNDINGS = ("stochastic", "nearest")


def errors(levels, sigma: float, x: torch.Tensor, w: torch.Tensor, rounding: str = "stochastic") -> tuple[float, float]:
    """(bias², rounding error) per element for |g| ~ (x, w) under a symmetric table scaled by sigma. Rounding error:
    the variance (z − c_k)(c_{k+1} − z) of unbiased stochastic rounding, or min(z − c_k, c_{k+1} − z)² of rounding to
    the nearest level (deterministic: its error is a bias per value, which error feedback carries to the next step)."""
    c = torch.tensor(levels, dtype=torch.float64) * sigma
    top = float(c[-1]) if float(c[-1]) == -float(c[0]) else float(c[-2])  # L2 tables: the spare level is unused
    z = torch.clamp(x, max=top)
    k = torch.clamp(torch.searchsorted(c, z, right=True) - 1, 0, len(levels) - 2)
    lo, hi = z - c[k], c[k + 1] - z
    if rounding == "stochastic":
        var = lo * hi
    elif rounding == "nearest":
        var = torch.minimum(lo, hi) ** 2
    else:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return float((w * (x - z) ** 2).sum()), float((w * var).sum())


def tnq_shape(bits: int, alpha: float) -> list[float]:
    """Levels ∝ p^(1/3) for Laplace(γ = 1) on [−α, α] (TNQ's construction for any α; α = α_N gives rtnq{N})."""
    s = 2 ** bits - 1
    t = 1 - math.exp(-alpha / 3)
    return [math.copysign(-3 * math.log1p(-abs(2 * k - s) / s * t), 2 * k - s) for k in range(s + 1)]


def golden(f, lo: float, hi: float, it: int = 80) -> float:
    g = (math.sqrt(5) - 1) / 2
    for _ in range(it):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


# ---- error feedback (docs/codebooks.md §5) ----

#: the cell-error constant K of one client's model error 2e^(−α) + K·(1 − e^(−α/3))³/s² (Laplace γ = 1, levels
#: ∝ p^(1/3)): 27 from the paper's Δ²/4 bound on stochastic rounding, 9 from the Panter–Dite Δ²/12 of rounding to
#: the nearest level
MODEL_K = {"stochastic": 27.0, "nearest": 9.0}


def ef_model_error(alpha: float, bits: int, rounding: str) -> float:
    s = 2 ** bits - 1
    return 2 * math.exp(-alpha) + MODEL_K[rounding] * (1 - math.exp(-alpha / 3)) ** 3 / s ** 2


def ef_alpha(bits: int, rounding: str = "stochastic") -> float:
    """α = 3·ln(1 + s/c), c = √(K/2): the minimum of ef_model_error (stochastic: c = a, TNQ's α*, i.e. rtnq1)."""
    return 3 * math.log1p((2 ** bits - 1) / math.sqrt(MODEL_K[rounding] / 2))


def ef_error_bound(bits: int, rounding: str = "stochastic") -> float:
    """The minimum of ef_model_error: K/(s + c)² per element (27/(s + a)² for stochastic, 9/(s + 3/√2)² nearest)."""
    return MODEL_K[rounding] / (2 ** bits - 1 + math.sqrt(MODEL_K[rounding] / 2)) ** 2


def windup_point(rule: int, g: float, n: int, top: float, s1: float, s2: float) -> float:
    """Where a coordinate held at gradient g stops winding up under error feedback: the input x* whose clip level
    equals g (it then sends g per step and its residual x* − g stops growing). ``top``: the table's top level in
    units of the scale; s1 = Σ|x_j|, s2 = Σx_j² over the block's other n − 1 entries."""
    if rule == cb.SCALE_MAX_ABS:
        return g  # the largest entry is a level: nothing is clipped
    if rule == cb.SCALE_MEAN_ABS:  # top·(x + s1)/n = g
        return n * g / top - s1
    if rule == cb.SCALE_M2_M1:  # top·(x² + s2)/(2(x + s1)) = g
        return (g + math.sqrt(g * g - top * (top * s2 - 2 * g * s1))) / top
    raise ValueError(f"rule must be a scale rule of tnq_kernels.codebooks, got {rule!r}")


def windup_sim(codebook: str, bits: int, steps: int, g: float = 20.0, n: int = 2048, seed: int = 0):
    """One client under error feedback with the reference codec on a block of Laplace(1) noise whose coordinate 0
    is held at g. Returns (mean input x_0 = g + e_0, mean Σ|x_j|, mean Σx_j² over j ≠ 0), over the last quarter of
    the steps."""
    gen = torch.Generator().manual_seed(seed)
    cid = cb.codebook_id(codebook, 8)
    e = torch.zeros(n)
    acc, m = [0.0, 0.0, 0.0], 0
    for t in range(steps):
        u = torch.rand(n, generator=gen) - 0.5
        x = -torch.sign(u) * torch.log1p(-2 * u.abs()) + e
        x[0] = g + e[0]
        e = x - ref.decompress(ref.compress(x, bits, n, cid, seed + t), (n,), torch.float32)
        if t >= steps - steps // 4:
            acc = [acc[0] + float(x[0]), acc[1] + float(x[1:].abs().sum()), acc[2] + float((x[1:] ** 2).sum())]
            m += 1
    return tuple(v / m for v in acc)


def max_scaled_error(levels, x: torch.Tensor, block: int, rounding: str) -> float:
    """Per-element error of one client with the scale max|x| of each block (nothing clipped) and the normalised
    table ``levels`` (top ±1): the rounding error E[(z − c_k)(c_{k+1} − z)] (stochastic) or E[min(·)²] (nearest),
    exact given the data, times the block's scale²."""
    xb = x.double().view(-1, block)
    m = xb.abs().amax(1, keepdim=True)
    z = xb / m
    c = torch.tensor(levels, dtype=torch.float64)
    k = torch.clamp(torch.searchsorted(c, z.contiguous(), right=True) - 1, 0, len(levels) - 2)
    lo, hi = z - c[k], c[k + 1] - z
    var = lo * hi if rounding == "stochastic" else torch.minimum(lo, hi) ** 2
    return float((var * m ** 2).mean())


def codec_error(codebook: str, bits: int, x: torch.Tensor, block: int, rounding: str, reps: int) -> float:
    """One client's per-element error E(ĝ − x)² of the reference codec (mean over ``reps`` seeds)."""
    cid = cb.codebook_id(codebook)
    tot = 0.0
    for r in range(reps):
        p = ref.compress(x, bits, block, cid, 101 + r, rounding=rng.ROUNDING_IDS[rounding])
        tot += float(((ref.decompress(p, (x.numel(),), torch.float32).double() - x.double()) ** 2).mean())
    return tot / reps


def max_scaled_section(blocks: int = 256, block: int = cb.TNQ_MAX_BLOCK) -> list[str]:
    """docs/codebooks.md §5: the table for a threshold at the block maximum (tnq_max) against qsgd and nqsgd."""
    x = laplace_sample(blocks * block, 11)
    out = ["### Under error feedback: tables scaled by the block maximum (Laplace, block 2048)", "",
           f"One client's error per element on {blocks} blocks of {block} Laplace(γ = 1) draws, scale max|x| per block "
           "(nothing clipped). 'model' = the rounding error given the data (exact per value); 'codec' = the "
           "reference codec (stochastic: mean of 4 seeds), which must agree with it. tnq_max = levels ∝ p^(1/3) on "
           f"[−α, α]/α with α = H_{block} = {cb.TNQ_MAX_ALPHA:.4f}; α_opt = the α that minimises the model error of "
           "that construction (golden section on [2, 20]). Δ_max = the widest gap of the normalised table; "
           "residual bound ‖e‖∞ ≤ ρ/(1 − ρ)·max‖g‖∞ with ρ = Δ_max (stochastic) or Δ_max/2 (nearest).", "",
           "| bits | rounding | qsgd (model / codec) | nqsgd | tnq_max | α_opt | at α_opt | tnq_max Δ_max | "
           "residual bound |", "|---|---|---|---|---|---|---|---|---|"]
    for bits in BITS:
        for rounding in ROUNDINGS:
            cells = []
            for name in ("qsgd", "nqsgd", "tnq_max"):
                model = max_scaled_error(cb.levels(name, bits), x, block, rounding)
                codec = codec_error(name, bits, x, block, rounding, 4 if rounding == "stochastic" else 1)
                cells.append(f"{model:.4f} / {codec:.4f}")

            def f(al):
                t = tnq_shape(bits, al)
                return max_scaled_error([v / t[-1] for v in t], x, block, rounding)
            al_opt = golden(f, 2.0, 20.0, it=40)
            lv = cb.levels("tnq_max", bits)
            dmax = max(b - a for a, b in zip(lv, lv[1:]))
            rho = dmax if rounding == "stochastic" else dmax / 2
            out.append(f"| {bits} | {rounding} | " + " | ".join(cells) + f" | {al_opt:.2f} | {f(al_opt):.4f} | "
                       f"{dmax:.3f} | {rho / (1 - rho):.2f} |")
    return out + [""]


def feedback_section(lx: torch.Tensor, lw: torch.Tensor, windup_steps: int) -> list[str]:
    """docs/codebooks.md §5: one client's error under error feedback, both roundings, and the wind-up point."""
    out = ["### Under error feedback: one client's error, stochastic vs nearest rounding (Laplace)", "",
           "α (closed form) = 3·ln(1 + s/c), c = √(K/2), K = 27 (stochastic, the Δ²/4 bound: TNQ's α*) or 9 (nearest, "
           "Panter–Dite Δ²/12); bound = K/(s + c)²; exact = bias² + rounding error of one client by numerical "
           "integration with the p^(1/3) table for that α; opt = the exact error minimised over α (golden "
           "section). 'avg of 8' = the error of the 8-client average if the clients' errors are independent "
           "(bias² + rounding/8), for comparison with rtnq8 (no feedback, α_8).", "",
           "| bits | rounding | α | bound | exact at α | α_opt | exact at α_opt | excess | rounding share | "
           "avg of 8 at α |", "|---|---|---|---|---|---|---|---|---|---|"]
    for bits in BITS:
        for rounding in ROUNDINGS:
            alpha = ef_alpha(bits, rounding)
            b2, v = errors(tnq_shape(bits, alpha), 1.0, lx, lw, rounding)

            def f(al):
                bb, vv = errors(tnq_shape(bits, al), 1.0, lx, lw, rounding)
                return bb + vv
            al_opt = golden(f, 0.3 * alpha, 3 * alpha)
            out.append(f"| {bits} | {rounding} | {alpha:.4f} | {ef_error_bound(bits, rounding):.5f} | {b2 + v:.5f} | "
                       f"{al_opt:.4f} | {f(al_opt):.5f} | {(b2 + v) / f(al_opt) - 1:+.1%} | {v / (b2 + v):.2f} | "
                       f"{b2 + v / 8:.5f} |")
        b8, v8 = errors(cb.levels("rtnq8", bits), 1.0, lx, lw)
        out.append(f"| {bits} | rtnq8 (stochastic, α_8) | {cb.rtnq_alpha(bits, 8):.4f} |  | {b8 + v8:.5f} |  |  |  | "
                   f"{v8 / (b8 + v8):.2f} | {b8 + v8 / 8:.5f} |")
    out += ["", "### Under error feedback: where a persistent coordinate stops winding up", "",
            f"One client, block n = 2048 of Laplace(1) noise, coordinate 0 held at g = 20; reference codec, "
            f"{windup_steps} steps. x* = windup_point (closed form, with Σ|x_j| and Σx_j² of the other entries as "
            "measured in the run); sim = the mean input x_0 = g + e_0 over the last quarter of the run; residual "
            "= x* − g in units of g.", "",
            "| codebook | bits | scale rule | top level | Σ|x_j| | x* (closed form) | x_0 (sim) | residual / g |",
            "|---|---|---|---|---|---|---|---|"]
    rules = {cb.SCALE_MEAN_ABS: "mean|x|", cb.SCALE_M2_M1: "Σx²/(2Σ|x|)", cb.SCALE_MAX_ABS: "max|x|"}
    for name in ("tnq", "tqsgd", "rtnq8", "qsgd", "tnq_max"):
        for bits in (2, 3):
            x0, s1, s2 = windup_sim(name, bits, windup_steps)
            rule, top = cb.scale_rule(name), cb.levels(name, bits)[-1]
            xs = windup_point(rule, 20.0, 2048, top, s1, s2)
            out.append(f"| {name} | {bits} | {rules[rule]} | {top:.3f} | {s1:.0f} | {xs:.1f} | {x0:.1f} | "
                       f"{(xs - 20.0) / 20.0:.1f} |")
    return out + [""]


# ---- Monte Carlo of the implementation ----

def laplace_sample(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def mc_average_error(codebook: str, bits: int, clients: int, block: int, n: int, reps: int, seed: int):
    """Per-element (bias², total error of the N-client average) of the reference on Laplace(γ = 1) data: each of
    the N clients compresses the same x with its own seed; bias² is exact given the stored scales."""
    cid = cb.codebook_id(codebook, clients)
    x = laplace_sample(n, seed)
    scales, z = ref.scale_truncate(x, bits, block, cid)
    bid = torch.zeros(n, dtype=torch.int64) if block == 0 else torch.arange(n) // block
    mean = scales.double()[bid] * z.double()
    bias2 = float(((mean - x.double()) ** 2).mean())
    tot = 0.0
    for r in range(reps):
        acc = torch.zeros(n, dtype=torch.float64)
        for c in range(clients):
            p = ref.compress(x, bits, block, cid, 1_000_003 * r + 7919 * c + seed)
            acc += ref.decompress(p, (n,), torch.float32).double()
        tot += float(((acc / clients - x.double()) ** 2).mean())
    return bias2, tot / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.codebook_math", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2 ** 18, help="Laplace samples per Monte-Carlo run")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--part", choices=("all", "feedback"), default="all",
                   help="feedback: only the error-feedback section (§5), ~1 min")
    p.add_argument("--windup-steps", type=int, default=4000)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    out = [f"Generated by `python -m experiments.codebook_math --n {a.n} --reps {a.reps}` (generator "
           f"{rng.VERSION}). Laplace γ = 1; "
           f"errors per element; 'avg of N' = the error of the average of N clients' independent roundings of the "
           f"same data.", ""]

    # 1. the derivation: α_N, model, exact error at α_N, exact optimum over α with the same level construction
    lx, lw = laplace_density()
    if a.part == "feedback":
        return _emit([f"Generated by `python -m experiments.codebook_math --part feedback --windup-steps "
                      f"{a.windup_steps}`. Laplace γ = 1; errors per element.", ""]
                     + feedback_section(lx, lw, a.windup_steps) + max_scaled_section()
                     + [f"Run time: {time.perf_counter() - t0:.0f} s.", ""], a.out)
    out += ["### α_N and the error of the N-client average (Laplace)", "",
            "α_N = 3·ln(1 + s√N/a) (closed form); bound = 27/(s√N + a)² (the minimum of the model with the paper's "
            "Δ²/4 cell variance); exact = bias² + var/N at α_N by numerical integration (true cell variance); "
            "opt = the exact error minimised over α with the same p^(1/3) level construction (golden section); "
            "MC = the reference implementation, one scale (Σg²/(2Σ|g|)) for the whole sample, "
            f"n = {a.n}, {a.reps} repeats.", "",
            "| bits | N | α_N | bound | exact at α_N | bias² share | α_opt | exact at α_opt | excess | MC |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for bits in BITS:
        for n_cl in (1, 2, 8, 32, 256):
            alpha = cb.rtnq_alpha(bits, n_cl)
            b2, v = errors(cb.levels(f"rtnq{n_cl}", bits), 1.0, lx, lw)
            e = b2 + v / n_cl

            def f(al):
                bb, vv = errors(tnq_shape(bits, al), 1.0, lx, lw)
                return bb + vv / n_cl
            al_opt = golden(f, 0.3 * alpha, 3 * alpha)
            mc = ""
            if n_cl in (1, 8):
                _, tot = mc_average_error("rtnq", bits, n_cl, 0, a.n, a.reps, seed=bits)
                mc = f"{tot:.5f}"
            out.append(f"| {bits} | {n_cl} | {alpha:.4f} | {cb.rtnq_mse_bound(bits, n_cl):.5f} | {e:.5f} | "
                       f"{b2 / e:.2f} | {al_opt:.4f} | {f(al_opt):.5f} | {e / f(al_opt) - 1:+.1%} | {mc} |")
        print(f"derivation {bits} bits done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out.append("")

    # 2. codebooks on Laplace data: per-element error of one client and of the 8-client average, and bias²
    out += ["### Every codebook on Laplace data (block 2048, Monte Carlo of the reference)", "",
            f"n = {a.n} Laplace samples, {a.reps} repeats; bias² exact given the stored scales. The L2-scaled "
            "baselines are also shown with one scale for all n elements (B = 0, the papers' setting).", "",
            "| bits | codebook | B | bias² | MSE, 1 client | error of the 8-client average |", "|---|---|---|---|---|---|"]
    books = [("tnq", 2048), ("rtnq1", 2048), ("rtnq8", 2048), ("tqsgd", 2048), ("nqsgd", 2048), ("qsgd", 2048),
             ("nuqsgd_l2", 2048), ("qsgd_l2", 2048), ("nuqsgd_l2", 0), ("qsgd_l2", 0)]
    for bits in BITS:
        for name, block in books:
            b1, one = mc_average_error(name, bits, 1, block, a.n, a.reps, seed=100 + bits)
            _, eight = mc_average_error(name, bits, 8, block, a.n, 1, seed=100 + bits)
            out.append(f"| {bits} | {name} | {block} | {b1:.2e} | {one:.4g} | {eight:.4g} |")
        print(f"codebooks {bits} bits done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out.append("")

    # 3. the scale statistic on heavier tails: exact relative error of the 8-client average, rtnq8's table
    fams = [("Laplace", laplace_density()), ("gen. Gaussian β = 0.7", gen_gauss_density(0.7)),
            ("gen. Gaussian β = 0.5", gen_gauss_density(0.5)), ("gen. Gaussian β = 0.4", gen_gauss_density(0.4)),
            ("Laplace, log-normal scale sd 0.5", laplace_mixture_density(0.5)),
            ("Laplace, log-normal scale sd 0.8", laplace_mixture_density(0.8)),
            ("Laplace, log-normal scale sd 1.1", laplace_mixture_density(1.1))]
    out += ["### Scale statistics on heavier-than-Laplace tails (exact, relative error E‖ĝ−g‖²/E‖g‖²)", "",
            "rtnq{N}'s table with three scale statistics: mean|g| (tnq's), sqrt(mean g²/2) (RMS in Laplace units) and "
            "mean g²/(2·mean|g|) (rtnq's); 'best' = the error at the best single scale σ* for that density "
            "(golden section), σ*/σ_rtnq = how far rtnq's statistic is from it. κ = mean g²/mean|g|² (Laplace 2).", "",
            "| density | κ | bits | N | mean|g| | RMS | rtnq | best | σ*/σ_rtnq |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (x, w) in fams:
        m1, m2 = float((w * x).sum()), float((w * x * x).sum())
        for bits in (2, 3, 4):
            for n_cl in (1, 8):
                lv = cb.levels(f"rtnq{n_cl}", bits)

                def rel(sig):
                    bb, vv = errors(lv, sig, x, w)
                    return (bb + vv / n_cl) / m2
                ch = m2 / (2 * m1)
                ls = golden(lambda t: rel(math.exp(t)), math.log(ch) - 2.5, math.log(ch) + 2.5)
                out.append(f"| {name} | {m2 / m1 ** 2:.2f} | {bits} | {n_cl} | {rel(m1):.4f} | "
                           f"{rel(math.sqrt(m2 / 2)):.4f} | {rel(ch):.4f} | {rel(math.exp(ls)):.4f} | "
                           f"{math.exp(ls) / ch:.2f} |")
    out += [""] + feedback_section(lx, lw, a.windup_steps)
    out += [f"Run time: {time.perf_counter() - t0:.0f} s.", ""]
    return _emit(out, a.out)


def _emit(out: list[str], path: str | None) -> int:
    text = "\n".join(out)
    if path:
        import os
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
