"""How far from Laplace are real gradients? Per model and per layer, on each client's own mini-batch gradient.

    python -m experiments.grad_stats                       # the 3 tasks, ~3 min on 2 cores
    python -m experiments.grad_stats --tasks text --points 20,150

Trains each task uncompressed (8 clients, momentum SGD at the task's fp32-chosen lr, seed 0) and at a few steps
takes every client's gradient of every parameter tensor, the values a codebook sees with one scale per tensor
(the paper's setting). For each tensor it reports, averaged over clients and steps:

- zeros: fraction of exact zeros (inactive ReLUs, unused embedding rows, blank image borders);
- m2/m1²: mean g² / (mean |g|)², the kurtosis-like ratio: 2 for a zero-mean Laplace, π/2 ≈ 1.57 for a Gaussian,
  larger for heavier tails or for a point mass at 0; also on the non-zero entries only;
- KS: the Kolmogorov-Smirnov distance sup |F_emp − F_Laplace| against the Laplace law fitted by maximum likelihood
  (location 0, scale γ̂ = mean |g|), the scale TNQ itself uses;
- q999 ratio: the 99.9% quantile of |g| over the fitted Laplace's (γ̂·ln 1000): > 1 means a heavier tail;
- clip3 / Laplace: the fraction of entries TNQ clips at 3 bits (|g| > α*(3)·γ̂) over Laplace's exp(−α*(3)).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from typing import Sequence

import torch

from tnq_kernels import codebooks as cb
from . import report
from .mnist import DEFAULT_LR, RunConfig, default_batch_size, make_optimizer, make_task

FIELDS = ("task", "tensor", "numel", "zeros", "ratio", "ratio_nonzero", "ks", "q999_ratio", "clip3_ratio")


def laplace_stats(v: torch.Tensor) -> dict | None:
    """The statistics above for one flat gradient tensor; None when it is all zeros."""
    x = v.double().flatten()
    a = x.abs()
    gamma = float(a.mean())
    if gamma == 0.0:
        return None
    nz = a[a > 0]
    zeros = 1.0 - nz.numel() / a.numel()
    ratio = float(x.pow(2).mean()) / gamma ** 2
    ratio_nz = float(nz.pow(2).mean()) / float(nz.mean()) ** 2 if nz.numel() else float("nan")
    s = torch.sort(x).values
    n = s.numel()
    cdf = torch.where(s < 0, 0.5 * torch.exp(s / gamma), 1.0 - 0.5 * torch.exp(-s / gamma))
    i = torch.arange(n, dtype=torch.float64)
    ks = float(torch.maximum((i + 1) / n - cdf, cdf - i / n).max())
    q999 = float(torch.quantile(a, 0.999)) if n <= 16_000_000 else float("nan")
    alpha = cb.tnq_alpha(3)
    clip = float((a > alpha * gamma).double().mean()) / math.exp(-alpha)
    return {"zeros": zeros, "ratio": ratio, "ratio_nonzero": ratio_nz, "ks": ks,
            "q999_ratio": q999 / (gamma * math.log(1000.0)), "clip3_ratio": clip}


def collect(task_name: str, points: Sequence[int], clients: int = 8, seed: int = 0) -> list[dict]:
    """Rows (FIELDS) per parameter tensor plus one "(all, pooled per tensor)" row: means over clients and points."""
    cfg = RunConfig(task=task_name, compressor="none", clients=clients, seed=seed, optimizer="sgdm",
                    lr=DEFAULT_LR[(task_name, "sgdm")], batch_size=default_batch_size(task_name),
                    steps=max(points) + 1)
    task = make_task(cfg)
    model = task.build_model()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    opt = make_optimizer(cfg, params)
    acc: dict[str, list[dict]] = {n: [] for n in names}
    for step in range(max(points) + 1):
        grads = []
        for c in range(clients):
            for p in params:
                p.grad = None
            x, y = task.batches.batch(c, step)
            task.loss(model(x), y).backward()
            grads.append([p.grad.detach().clone() for p in params])
            if step in points:
                for n, g in zip(names, grads[-1]):
                    st = laplace_stats(g)
                    if st is not None:
                        acc[n].append(st)
        for i, p in enumerate(params):
            p.grad = torch.stack([g[i] for g in grads]).mean(0)
        opt.step()
    rows = []
    for n, p in zip(names, params):
        if not acc[n]:
            continue
        rows.append({"task": task_name, "tensor": n, "numel": p.numel(),
                     **{k: statistics.fmean(s[k] for s in acc[n]) for k in FIELDS[3:]}})
    # numel-weighted over tensors: what a random gradient entry of the model sees
    total = sum(r["numel"] for r in rows)
    rows.append({"task": task_name, "tensor": "(model, numel-weighted)", "numel": total,
                 **{k: sum(r[k] * r["numel"] for r in rows) / total for k in FIELDS[3:]}})
    return rows


def markdown(rows: list[dict], points: Sequence[int]) -> str:
    lines = ["# Gradient statistics against the Laplace model", "",
             f"Each client's own mini-batch gradient, per parameter tensor, mean over the 8 clients and steps "
             f"{', '.join(map(str, points))} of uncompressed momentum-SGD training (seed 0). Laplace: zeros 0, "
             f"m2/m1² = 2, KS → 0, q999 ratio 1, clip3 ratio 1. Gaussian: m2/m1² = π/2 = 1.571.", "",
             "| task | tensor | numel | zeros | m2/m1² | m2/m1² (non-zero) | KS vs Laplace | q999 ratio | "
             "clip3 / Laplace |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bold = "**" if r["tensor"].startswith("(") else ""
        lines.append(f"| {r['task']} | {bold}{r['tensor']}{bold} | {r['numel']} | {r['zeros']:.3f} | {r['ratio']:.2f} "
                     f"| {r['ratio_nonzero']:.2f} | {r['ks']:.3f} | {r['q999_ratio']:.2f} | {r['clip3_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.grad_stats", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="mnist,mnist_mlp,text")
    p.add_argument("--points", default="10,100", help="training steps at which gradients are taken")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="experiments/results/grad_stats")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    points = [int(v) for v in a.points.split(",") if v]
    rows, t0 = [], time.perf_counter()
    for t in a.tasks.split(","):
        rows += collect(t, points)
        print(f"{t}: done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "grad_stats.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    text = markdown(rows, points) + f"\nHardware: {report.environment(a.threads)}; {time.perf_counter() - t0:.0f} s.\n"
    with open(os.path.join(a.out, "grad_stats.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
