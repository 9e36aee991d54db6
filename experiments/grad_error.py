"""Error of the aggregated gradient per codebook, on real gradients of an experiment task's model.

    python -m experiments.grad_error            # MNIST CNN, ~3 min on 2 cores (C++ backend)
    python -m experiments.grad_error --task text --points 0,100,300,599 --bits 3 --reps 4
    python -m experiments.grad_error --out experiments/results/mnist/investigation.md

Trains the experiment's model uncompressed (8 clients, the sweep's hyper-parameters, seed 0) and, at a few
training points, takes the 8 clients' real gradients g_c (one flat bucket in parameter order, as DDP sends it) and
their average g. For each compressor × bits × block size it measures what the server's decompress_sum(1/8) returns:

- relative MSE  E||ĝ − g||² / ||g||²  (Monte-Carlo over ``--reps`` seeds),
- truncation bias  ||E[ĝ] − g|| / ||g||, computed exactly: E[ĝ] = Σ_c scale_c · z_c / 8 with (scale, z) from
  scale_truncate (stochastic rounding is unbiased w.r.t. the truncated value; max-scaled codebooks clip nothing),
- the shrinkage  <E[ĝ], g> / ||g||²  (1 = none) and the cosine  E[cos(ĝ, g)],

next to the mini-batch noise of the same 8×32-image average (Σ_c ||g_c − g||² / (8·7) / ||g||²) for scale.
It also checks the Laplace model per block of a client's gradient: mean(g²)/mean(|g|)² (2 for Laplace, π/2 for a
Gaussian), the fraction of exact zeros, the fraction of entries clipped at α* against Laplace's exp(−α*/γ), and
one client's per-element MSE in units of γ̂² against the Laplace column of docs/format.md ("Reference numbers").

If the output file already has a "## Conclusion" section, it is kept in place; the numbers are rewritten.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Sequence

import torch
import torch.nn.functional as F

import tnq_kernels as tnq
from tnq_kernels import codebooks as cb
from .mnist import DEFAULT_LR, TASKS, RunConfig, default_batch_size, make_task, resolve_backend

#: "rtnq" is sized for the number of clients (rtnq8 with 8); qsgd_l2 / nuqsgd_l2 are the papers' L2-scaled ones
CODEBOOKS = ("tnq", "rtnq", "tqsgd", "nqsgd", "qsgd", "nuqsgd_l2", "qsgd_l2")
#: docs/format.md ("Reference numbers"): expected per-element MSE of TNQ on Laplace data with γ = 1
LAPLACE_MSE = {2: 0.522, 3: 0.187, 4: 0.0570, 5: 0.0158}
#: "layer": one scale per parameter tensor (B = 0 per tensor, the paper's setting); "model": B = 0 over the whole
#: bucket, i.e. one scale for all layers.
BLOCKS = (256, 2048, "layer", "model")


def client_grads(model, task, step: int, clients: int) -> torch.Tensor:
    """float32 [clients, n]: each client's mini-batch gradient at ``step``, flattened in parameter order."""
    params = list(model.parameters())
    out = []
    for c in range(clients):
        model.zero_grad(set_to_none=True)
        x, y = task.batches.batch(c, step)
        task.loss(model(x), y).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return torch.stack(out)


def _pieces(block, sizes: Sequence[int]):
    """(block_size, [(lo, hi)]) of the compressed tensors for one block setting."""
    n = sum(sizes)
    if block == "model":
        return 0, [(0, n)]
    if block == "layer":
        bounds, off = [], 0
        for s in sizes:
            bounds.append((off, off + s))
            off += s
        return 0, bounds
    return int(block), [(0, n)]


def aggregate_error(G: torch.Tensor, sizes, codebook: str, bits: int, block, reps: int, backend: str) -> dict:
    """Error of decompress_sum(1/N) of the clients' compressed gradients against their exact average."""
    N, n = G.shape
    g = G.mean(0)
    gg = float(g.double().pow(2).sum())
    B, bounds = _pieces(block, sizes)
    w = [1.0 / N] * N
    expect = torch.zeros(n, dtype=torch.float64)
    top = cb.levels(cb.codebook_id(codebook, N), bits)[-1]
    clipped = 0
    for c in range(N):
        for lo, hi in bounds:
            scales, z = tnq.scale_truncate(G[c, lo:hi], bits, B, codebook, backend=backend, clients=N)
            ids = torch.arange(hi - lo) // B if B else torch.zeros(hi - lo, dtype=torch.int64)
            s = scales[ids].double()
            expect[lo:hi] += s * z.double() / N
            clipped += int((G[c, lo:hi].double().abs() > s * top).sum())
    bias = expect - g.double()
    mses, coss = [], []
    for r in range(reps):
        ghat = torch.empty(n)
        for lo, hi in bounds:
            pays = [tnq.compress(G[c, lo:hi], bits, B, codebook, tnq.derive_seed(r, c, lo, 0x6E4), backend=backend,
                                 clients=N) for c in range(N)]
            ghat[lo:hi] = tnq.decompress_sum(pays, w, (hi - lo,), torch.float32, backend=backend)
        d = (ghat - g).double()
        mses.append(float(d.pow(2).sum()) / gg)
        coss.append(float(F.cosine_similarity(ghat.double(), g.double(), dim=0)))
    return {"rel_mse": statistics.fmean(mses), "bias": math.sqrt(float(bias.pow(2).sum()) / gg),
            "bias_sq": float(bias.pow(2).sum()) / gg,
            "shrink": float((expect * g.double()).sum()) / gg, "cos": statistics.fmean(coss),
            "bias_cos": float(F.cosine_similarity(expect, g.double(), dim=0)),
            "clip_frac": clipped / (N * n)}


def laplace_check(G: torch.Tensor, sizes, names, block: int = 2048) -> list[dict]:
    """Per parameter tensor of client 0..N-1, blocks of ``block``: how Laplace-like the gradient is."""
    rows = []
    off = 0
    for name, s in zip(names, sizes):
        x = G[:, off: off + s].double()
        off += s
        nb = -(-s // block)
        ratios, zeros, clip = [], [], {b: [] for b in (2, 3, 4, 5)}
        for c in range(x.shape[0]):
            for j in range(nb):
                v = x[c, j * block: (j + 1) * block]
                gamma = float(v.abs().mean())
                if gamma == 0:
                    continue
                ratios.append(float(v.pow(2).mean()) / gamma ** 2)
                zeros.append(float((v == 0).double().mean()))
                for b in clip:
                    clip[b].append(float((v.abs() > cb.tnq_alpha(b) * gamma).double().mean()))
        rows.append({"tensor": name, "numel": s, "blocks": nb, "ratio": statistics.median(ratios),
                     "ratio_max": max(ratios), "zeros": statistics.fmean(zeros),
                     **{f"clip{b}": statistics.fmean(clip[b]) for b in clip}})
    return rows


def unit_mse(G: torch.Tensor, bits: int, block: int, reps: int, backend: str) -> float:
    """One client's per-element MSE in units of its block's γ̂² (docs/format.md's "expected" column, Laplace)."""
    num = den = 0.0
    for c in range(G.shape[0]):
        x = G[c]
        scales, _ = tnq.scale_truncate(x, bits, block, "tnq", backend=backend)
        g2 = scales.double().pow(2)[torch.arange(x.numel()) // block]
        for r in range(reps):
            y = tnq.decompress(tnq.compress(x, bits, block, "tnq", tnq.derive_seed(r, c, 0x11), backend=backend))
            num += float(((y - x).double().pow(2)).sum())
            den += float(g2.sum())
    return num / den


def train_and_snapshot(cfg: RunConfig, points: Sequence[int], task):
    """Uncompressed 8-client momentum SGD (as the studies' "none" runs); yields (step, client gradients)."""
    model = task.build_model()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    for step in range(max(points) + 1):
        G = client_grads(model, task, step, cfg.clients)
        if step in points:
            yield step, G
        g = G.mean(0)
        off = 0
        for p in params:
            p.grad = g[off: off + p.numel()].view_as(p).clone()
            off += p.numel()
        opt.step()


def _f(v: float, d: int = 4) -> str:
    return f"{v:.{d}f}" if abs(v) >= 10 ** -d or v == 0 else f"{v:.1e}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.grad_error",
                                description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=TASKS, default="mnist",
                   help="mnist: the earlier sweep's CNN at lr 0.05; others: their fp32-chosen momentum-SGD lr")
    p.add_argument("--points", default="0,30,117,233", help="training steps to measure at (MNIST: 1 epoch = 234)")
    p.add_argument("--bits", default="2,3,4,5")
    p.add_argument("--reps", type=int, default=8, help="Monte-Carlo seeds per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None, help="tnq backend (default: C++ if built, else reference)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--codebooks", default=",".join(CODEBOOKS), help="comma-separated subset of " + ",".join(CODEBOOKS))
    p.add_argument("--out", default=None, help="write the Markdown here (default: stdout only)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    points = [int(v) for v in a.points.split(",")]
    bits_list = [int(v) for v in a.bits.split(",")]
    books = [c for c in CODEBOOKS if c in a.codebooks.split(",")]
    backend = resolve_backend(a.backend)
    # "mnist" keeps the earlier sweep's lr (RunConfig's default), as its tables were made
    lr = {} if a.task == "mnist" else {"lr": DEFAULT_LR[(a.task, "sgdm")]}
    cfg = RunConfig(compressor="none", seed=a.seed, task=a.task, batch_size=default_batch_size(a.task), **lr)
    task = make_task(cfg)
    names = [k for k, _ in task.build_model().named_parameters()]
    sizes = [q.numel() for q in task.build_model().parameters()]
    t0 = time.perf_counter()
    cmd = "" if a.task == "mnist" else f" --task {a.task}"
    out = [f"# {'MNIST' if a.task == 'mnist' else task.describe} gradients under compression", "",
           f"Generated by `python -m experiments.grad_error{cmd} --points {a.points} --bits {a.bits} "
           f"--reps {a.reps}` (backend {backend}, generator {tnq.rng.VERSION}, {a.reps} Monte-Carlo "
           f"seeds, training seed {a.seed}). {task.describe}, 8 clients × batch {cfg.batch_size}, momentum SGD "
           f"lr {cfg.lr}, momentum {cfg.momentum}, trained uncompressed; measured at steps {points} "
           f"(1 epoch = {task.batches.steps_per_epoch} steps). g = the exact average of the 8 client gradients, "
           f"ĝ = decompress_sum(1/8) of their payloads.", ""]
    agg_rows, lap_rows, unit_rows = [], {}, []
    for step, G in train_and_snapshot(cfg, points, task):
        g = G.mean(0)
        sgd_noise = float(sum((G[c] - g).double().pow(2).sum() for c in range(G.shape[0]))) / \
            (G.shape[0] * (G.shape[0] - 1)) / float(g.double().pow(2).sum())
        print(f"step {step}: ||g|| = {float(g.norm()):.4f}, mini-batch noise of the average {sgd_noise:.3f}",
              file=sys.stderr)
        lap_rows[step] = laplace_check(G, sizes, names)
        for bits in bits_list:
            unit_rows.append({"step": step, "bits": bits, "mse": unit_mse(G, bits, 2048, 2, backend)})
            for codebook in books:
                for block in (BLOCKS if bits == 3 else (2048, "layer")):  # the block-size study is at 3 bits
                    r = aggregate_error(G, sizes, codebook, bits, block, a.reps, backend)
                    agg_rows.append({"step": step, "bits": bits, "codebook": codebook, "block": block,
                                     "sgd_noise": sgd_noise, "gnorm": float(g.norm()), **r})
        print(f"  done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    out += ["## 1. Error of the aggregated gradient (block size 2048, the sweep's setting)", "",
            "rel MSE = E‖ĝ−g‖²/‖g‖²; bias = ‖E[ĝ]−g‖/‖g‖ (exact); bias² share = ‖E[ĝ]−g‖²/E‖ĝ−g‖²; "
            "shrink = ⟨E[ĝ],g⟩/‖g‖²; cos(E) = cos(E[ĝ],g), the direction error left by truncation alone; "
            "cos = E cos(ĝ,g); clipped = fraction of client entries changed by "
            "truncation. 'SGD noise' = the mini-batch noise of the same 8-client average, ‖g_c−g‖²/(8·7)/‖g‖² "
            "summed over clients — the error the uncompressed run already lives with.", ""]
    for step in points:
        rows = [r for r in agg_rows if r["step"] == step and r["block"] == 2048]
        out += [f"### step {step} (‖g‖ = {rows[0]['gnorm']:.4f}, SGD noise {rows[0]['sgd_noise']:.3f})", "",
                "| bits | codebook | rel MSE | bias | bias² share | shrink | cos(E) | cos | clipped |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["bits"], books.index(r["codebook"]))):
            share = r["bias_sq"] / r["rel_mse"] if r["rel_mse"] else 0.0
            out.append(f"| {r['bits']} | {r['codebook']} | {_f(r['rel_mse'])} | {_f(r['bias'])} | {share:.2f} | "
                       f"{r['shrink']:.4f} | {r['bias_cos']:.4f} | {r['cos']:.4f} | {_f(r['clip_frac'])} |")
        out.append("")

    out += ["## 1b. Mean over the measured steps", "",
            "rel MSE, bias and shrink as in section 1, averaged over the steps; 2048 = one scale per 2048 elements, "
            "layer = one scale per parameter tensor (B = 0 per tensor, the papers' setting).", "",
            "| bits | codebook | rel MSE (2048) | bias (2048) | shrink (2048) | rel MSE (layer) | bias (layer) | "
            "shrink (layer) |", "|---|---|---|---|---|---|---|---|"]
    for bits in bits_list:
        for codebook in books:
            cells = []
            for block in (2048, "layer"):
                rows = [r for r in agg_rows if r["bits"] == bits and r["codebook"] == codebook and r["block"] == block]
                m = {k: statistics.fmean(r[k] for r in rows) for k in ("rel_mse", "bias", "shrink")}
                cells += [_f(m["rel_mse"]), _f(m["bias"]), f"{m['shrink']:.3f}"]
            out.append(f"| {bits} | {codebook} | " + " | ".join(cells) + " |")
    out.append("")

    out += ["## 2. Block size (3 bits; mean over the measured steps)", "",
            "256 / 2048: elements per scale; layer: one scale per parameter tensor (the paper's setting); "
            "model: one scale for the whole 0.32M-element bucket.", "",
            "| codebook | block | rel MSE | bias | shrink | cos(E) | cos | clipped |", "|---|---|---|---|---|---|---|---|"]
    for codebook in books:
        for block in BLOCKS:
            rows = [r for r in agg_rows if r["bits"] == 3 and r["codebook"] == codebook and r["block"] == block]
            if not rows:
                continue
            m = {k: statistics.fmean(r[k] for r in rows) for k in ("rel_mse", "bias", "shrink", "bias_cos", "cos",
                                                                "clip_frac")}
            out.append(f"| {codebook} | {block} | {_f(m['rel_mse'])} | {_f(m['bias'])} | {m['shrink']:.4f} | "
                       f"{m['bias_cos']:.4f} | {m['cos']:.4f} | {_f(m['clip_frac'])} |")
    out.append("")

    out += ["## 3. Is a block of the gradient Laplace? (blocks of 2048 of each client's gradient)", "",
            "ratio = mean(g²)/mean(|g|)² per block (Laplace 2, Gaussian 1.571; median and max over blocks); "
            "zeros = fraction of exact zeros; clip b = fraction of entries with |g| > α*(b)·γ̂ "
            "(Laplace: " + ", ".join(f"{b} bits {math.exp(-cb.tnq_alpha(b)):.4f}" for b in (2, 3, 4, 5)) + ").", ""]
    for step in points:
        out += [f"### step {step}", "",
                "| tensor | numel | blocks | ratio (median) | ratio (max) | zeros | clip 2 | clip 3 | clip 4 | clip 5 |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in lap_rows[step]:
            out.append(f"| {r['tensor']} | {r['numel']} | {r['blocks']} | {r['ratio']:.2f} | {r['ratio_max']:.1f} | "
                       f"{r['zeros']:.3f} | {r['clip2']:.4f} | {r['clip3']:.4f} | {r['clip4']:.4f} | "
                       f"{r['clip5']:.4f} |")
        out.append("")

    out += ["## 4. One client's TNQ error in units of γ̂² (block 2048) vs Laplace data "
            "(docs/format.md, \"Reference numbers\")", "",
            "| bits | Laplace expected | " + " | ".join(f"step {s}" for s in points) + " |",
            "|---|---|" + "---|" * len(points)]
    for bits in bits_list:
        vals = [next(r["mse"] for r in unit_rows if r["step"] == s and r["bits"] == bits) for s in points]
        out.append(f"| {bits} | {LAPLACE_MSE[bits]} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    out += ["", f"Measurement time: {time.perf_counter() - t0:.0f} s.", ""]

    text = "\n".join(out)
    if a.out:
        keep = ""
        if os.path.exists(a.out):
            old = open(a.out).read()
            if "## Conclusion" in old:
                keep = old[old.index("## Conclusion"):]
                keep = keep[: keep.index("## 1.")] if "## 1." in keep else keep
        if keep:  # the hand-written conclusion goes first, before the numbers it is drawn from
            cut = text.index("## 1.")
            text = text[:cut] + keep.rstrip() + "\n\n" + text[cut:]
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
