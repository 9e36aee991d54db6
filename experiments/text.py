"""Beyond MNIST: a small byte-level transformer trained on real English text by 8 clients, compressed gradients.

    python -m experiments.text --optimizer adamw --steps 150 --seeds 0,1,2 --out experiments/results/text_adamw
    python -m experiments.text --help        # every flag of experiments.mnist (the same simulation and outputs)

The corpus is the Python language reference and library topics that CPython ships as ``pydoc_data/topics.py`` (the
text behind ``help('if')`` etc., ~465k characters of English technical prose with code samples): it is part of
the standard library, so every machine that runs the project has it and nothing is downloaded. The topics are
joined in sorted order and UTF-8 encoded; the first 90% of the bytes train, the last 10% are held out.

The clients, the compression of their gradients and the server's aggregation are experiments.mnist's simulation
(``simulate`` with ``task="text"``); this module only supplies the data, the model and the metric: held-out
cross-entropy in bits per byte (``test_loss``) and next-byte top-1 accuracy (``test_accuracy``).
"""
from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import tnq_kernels as tnq

VOCAB = 256
CONTEXT = 64
TRAIN_FRACTION = 0.9
#: held-out windows of CONTEXT + 1 bytes scored at each evaluation (~16k predicted bytes)
EVAL_WINDOWS = 256
DESCRIBE = ("text: byte-level transformer (2 layers, d 64, 4 heads, context 64, 0.12M parameters) on the CPython "
            "pydoc topics corpus (English prose)")
#: task "text_gru": another model family on the same data (a recurrent network), for confirmation studies
DESCRIBE_GRU = ("text_gru: byte-level GRU (embedding 64, one GRU layer of 128, 0.12M parameters) on the CPython "
                "pydoc topics corpus (English prose)")


class TextUnavailable(RuntimeError):
    """The standard library's pydoc_data package is missing (some minimal Python builds strip it)."""


@dataclass(frozen=True)
class Corpus:
    """train / test: uint8 byte tensors [n]."""
    train: torch.Tensor
    test: torch.Tensor


_CACHE: dict[str, Corpus] = {}


def load_corpus() -> Corpus:
    """The pydoc topics as bytes, split 90/10 into train and held-out test (cached)."""
    if "pydoc" in _CACHE:
        return _CACHE["pydoc"]
    if importlib.util.find_spec("pydoc_data") is None:
        raise TextUnavailable("text corpus not found: the standard library's pydoc_data package is missing from this "
                              f"Python ({sys.executable}); use a full CPython build")
    from pydoc_data import topics
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
    if data.numel() < 100_000:
        raise ValueError(f"the pydoc topics corpus must hold >= 100000 bytes, got {data.numel()}")
    cut = int(TRAIN_FRACTION * data.numel())
    corpus = Corpus(data[:cut].clone(), data[cut:].clone())
    _CACHE["pydoc"] = corpus
    return corpus


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x GELU MLP, each with a residual."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteTransformer(nn.Module):
    """x int64 [B, T] bytes → logits float32 [B, T, 256]; learned positions, tied input/output embedding."""

    def __init__(self, d: int = 64, layers: int = 2, heads: int = 4, context: int = CONTEXT):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.ln(h) @ self.tok.weight.t()


class ByteGRU(nn.Module):
    """x int64 [B, T] bytes → logits float32 [B, T, 256]: embedding, one GRU layer, a linear read-out."""

    def __init__(self, d: int = 64, hidden: int = 128):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.rnn = nn.GRU(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.tok(x))
        return self.head(h)


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats."""
    return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))


class TextBatches:
    """Each client's mini-batch at a step: ``batch`` windows of CONTEXT + 1 bytes at random offsets.

    IID: every client draws from the whole training text. ``iid=False``: client c draws only from the c-th of
    ``clients`` contiguous slices (different topics per client). Offsets come from derive_seed(seed, client, step),
    so a run is reproducible and paired across codebooks. An epoch is len(train) / (clients · batch · CONTEXT) steps.
    """

    def __init__(self, corpus: Corpus, cfg):
        if cfg.dirichlet > 0:
            raise ValueError("dirichlet must be 0 for task 'text' (no labels to skew); use --non-iid for topic-"
                             "sliced clients")
        data = corpus.train[: cfg.train_subset] if cfg.train_subset else corpus.train
        self.data, self.cfg = data.long(), cfg
        n = data.numel()
        span = n // cfg.clients if not cfg.iid else n
        if span < CONTEXT + 2:
            raise ValueError(f"each client's text ({span} bytes) must exceed one window of {CONTEXT + 1} bytes")
        self.ranges = [(0, n)] * cfg.clients if cfg.iid else [(c * span, (c + 1) * span) for c in range(cfg.clients)]
        self.steps_per_epoch = max(1, n // (cfg.clients * cfg.batch_size * CONTEXT))

    def total_steps(self) -> int:
        return self.cfg.steps or max(1, round(self.cfg.epochs * self.steps_per_epoch))

    def batch(self, client: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y int64 [batch, CONTEXT]: y is x shifted by one byte."""
        lo, hi = self.ranges[client]
        gen = torch.Generator().manual_seed(tnq.derive_seed(self.cfg.seed, client, step, 0x7E47))
        start = lo + torch.randint(0, hi - lo - CONTEXT - 1, (self.cfg.batch_size,), generator=gen)
        w = self.data[start[:, None] + torch.arange(CONTEXT + 1)]
        return w[:, :-1], w[:, 1:]


def evaluate(model: nn.Module, corpus: Corpus, windows: int = EVAL_WINDOWS) -> tuple[float, float]:
    """(next-byte top-1 accuracy, cross-entropy in bits per byte) on the first ``windows`` non-overlapping held-out
    windows."""
    t = corpus.test.long()
    windows = min(windows, (t.numel() - 1) // CONTEXT)
    idx = torch.arange(windows)[:, None] * CONTEXT + torch.arange(CONTEXT + 1)
    w = t[idx]
    model.eval()
    with torch.no_grad():
        logits = model(w[:, :-1])
        loss = float(F.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1)))
        acc = float((logits.argmax(-1) == w[:, 1:]).double().mean())
    model.train()
    return acc, loss / math.log(2)


def describe(task: str) -> str:
    """The one-line description of a text task (data and model)."""
    return DESCRIBE_GRU if task == "text_gru" else DESCRIBE


def build_model(seed: int, task: str = "text") -> nn.Module:
    """The transformer (task "text") or the GRU ("text_gru"), initialised from ``seed``."""
    torch.manual_seed(seed)
    return ByteGRU() if task == "text_gru" else ByteTransformer()


def text_task(cfg, corpus: Corpus | None = None):
    """experiments.mnist.Task for the transformer or the GRU (``cfg.test_subset``: number of held-out windows,
    0 = 256)."""
    from .mnist import Task
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus()
    return Task(cfg.task, describe(cfg.task),
                lambda: build_model(cfg.seed, cfg.task), TextBatches(corpus, cfg), lm_loss,
                lambda m: evaluate(m, corpus, cfg.test_subset or EVAL_WINDOWS))


def main(argv: Sequence[str] | None = None) -> int:
    from . import mnist
    return mnist.main(argv, prog="python -m experiments.text", task="text")


if __name__ == "__main__":
    sys.exit(main())
