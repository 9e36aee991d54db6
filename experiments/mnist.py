"""The paper's MNIST experiment: N = 8 clients, momentum SGD, gradients compressed to b bits and averaged.

    python -m experiments.mnist --quick              # all compressors at 3 bits, 1 seed, < 2 min
    python -m experiments.mnist --sweep              # none + 4 codebooks x bits 2..5 x 3 seeds, 2 epochs
    python -m experiments.mnist --mode ddp ...       # the same runs over torch.distributed (gloo)
    python -m experiments.mnist --error-feedback ... # clients re-inject their residuals (not the paper's)
    python -m experiments.mnist --preset paper ...   # the paper's setting: one scale per parameter tensor
    python -m experiments.mnist --optimizer adamw --dirichlet 0.3 ...  # AdamW; label-skewed clients
    python -m experiments.mnist --demo               # the codebook comparison at 3 bits, ~3 min on 2 cores

Each step every client computes the gradient of its own mini-batch, flattens it into the DDP bucket layout,
compresses each bucket with seed derive_seed(seed, client, step, bucket); the server decodes and averages the
clients' payloads with decompress_sum(weights = 1/N) and applies the update. Two modes give the same numbers:
  sim  one process loops over the clients (fast);
  ddp  N processes on 127.0.0.1 (gloo), DistributedDataParallel with tnq_kernels.ddp.tnq_hook ("allgather").
Equal numbers need equal init (torch.manual_seed(seed) before building the model), equal data order per client
and the same bucket layout: DDP packs every gradient into one bucket (BUCKET_CAP_MB) whose order is the
parameter order in the first step and, after DDP's bucket rebuild, the order the gradients became ready in the
first backward; the simulation replays exactly that (see ``ddp_bucket_layouts``).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

import tnq_kernels as tnq
from tnq_kernels import api as tnq_api
from tnq_kernels import codebooks as cb
from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import fsdp as tnq_fsdp
from tnq_kernels import rng as tnq_rng
from .data import MNIST, dirichlet_split, load_mnist, split_clients
from .model import MnistCNN, MnistMLP

#: "none" (fp32, DDP's default all-reduce), every codebook the installed tnq_kernels knows, and the family name
#: "rtnq" (bias-aware robust TNQ), which the simulation resolves with clients = the run's client count, as the DDP
#: hook does with the world size.
RTNQ = getattr(cb, "RTNQ", None)
#: diagnostics, not wire formats: the fp32 gradient truncated exactly as the codebook truncates it (its scale and
#: threshold per block), with no rounding — what the truncation alone does to training (simulation only)
CLIPPED = ("clip_tnq",) + (("clip_rtnq",) if RTNQ else ())
COMPRESSORS = ("none",) + tuple(cb.CODEBOOK_IDS) + ((RTNQ,) if RTNQ else ()) + CLIPPED
#: what a sweep runs when --compressors is not given: fp32, the TNQ family, the papers' baselines, the practical ones
DEFAULT_COMPRESSORS = tuple(c for c in ("none", "tnq", "rtnq", "tqsgd", "qsgd_l2", "nuqsgd_l2", "nqsgd", "qsgd")
                            if c in COMPRESSORS)
OPTIMIZERS = ("sgdm", "adamw")
#: --residual-dtype: what each client's error-feedback residual is stored in between steps (added back in fp32)
RESIDUAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: what the simulation can train: "mnist" (the paper's CNN), "mnist_mlp" (a 2-hidden-layer MLP, another model
#: family on the same data) and "text" (a byte-level transformer on real English text, experiments/text.py).
TASKS = ("mnist", "mnist_mlp", "text", "text_gru")
#: the tasks on the text corpus (experiments/text.py): the transformer, and a GRU for confirmation studies
TEXT_TASKS = ("text", "text_gru")
#: Large enough that DDP puts the whole model (1.27 MB) in one bucket, and explicit, so DDP also drops its 1 MiB
#: first-bucket cap: one payload per client per step.
BUCKET_CAP_MB = 64
#: The paper's final MNIST accuracies at 3 bits (the only two it publishes).
PAPER_3BIT = {"tnq": 0.9595, "tqsgd": 0.9487}
#: test_loss: mean cross-entropy on the test set (MNIST: nats per image; text: bits per byte); backend: the tnq
#: backend that encoded and decoded ("none" for fp32), recorded so no run can fall back to another silently;
#: rng: the stochastic-rounding generator (tnq_kernels.rng.VERSION; rows written before it was recorded: "v1.1").
CSV_FIELDS = ("compressor", "bits", "seed", "epoch", "step", "train_loss", "test_loss", "test_accuracy",
              "bits_per_client_step", "backend", "rng")

Layout = list[list[int]]  # buckets in DDP order, each a list of parameter indices in bucket order


@dataclass
class RunConfig:
    """One training run. ``bits`` is ignored (reported as 32) for compressor "none".

    ``per_tensor``: compress every parameter tensor as its own payload (with ``block_size``; 0 = one scale per
    tensor, the paper's setting) instead of the whole DDP bucket. ``dirichlet`` > 0: label-skewed clients with that
    Dirichlet concentration (overrides ``iid``).
    """
    compressor: str = "tnq"
    bits: int = 3
    seed: int = 0
    epochs: float = 1.0
    clients: int = 8
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    block_size: int = tnq.DEFAULT_BLOCK_SIZE
    iid: bool = True
    eval_every: int = 100
    train_subset: int = 0  # 0: all 60k; else the first n images (tests)
    test_subset: int = 0
    backend: str | None = None  # None: C++ if built, else the reference (same bits)
    error_feedback: bool = False  # each client re-injects its own compression residual (TNQState's option)
    optimizer: str = "sgdm"  # "sgdm": SGD with ``momentum``; "adamw": AdamW, betas (0.9, 0.999)
    weight_decay: float = 0.0
    per_tensor: bool = False
    dirichlet: float = 0.0
    task: str = "mnist"
    steps: int = 0  # > 0: train exactly this many steps (``epochs`` is then ignored)
    #: FSDP2 semantics: per FSDP unit (fsdp_units), every client's flat gradient is split into one row per client and
    #: reduce-scattered by tnq_kernels.fsdp.simulate (one quantization, rtnq member for N clients), as
    #: compress_reduce_scatter does on real ranks; instead of one payload per client (the DDP hook's allgather)
    fsdp: bool = False
    #: the encode's rounding (tnq.compress(rounding=)): "stochastic" or "nearest" (biased; for error feedback)
    rounding: str = tnq.api.DEFAULT_ROUNDING
    #: the dtype each client keeps its error-feedback residual in (fp32 like the integrations, or a cheaper one)
    residual_dtype: str = "float32"

    def __post_init__(self):
        if self.rounding not in tnq.api.ROUNDINGS:
            raise ValueError(f"rounding must be one of {tnq.api.ROUNDINGS}, got {self.rounding!r}")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(f"residual_dtype must be one of {tuple(RESIDUAL_DTYPES)}, got {self.residual_dtype!r}")
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {COMPRESSORS}, got {self.compressor!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.dirichlet >= 0 or not math.isfinite(self.dirichlet):
            raise ValueError(f"dirichlet must be 0 (off) or a finite alpha > 0, got {self.dirichlet!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.compressor == "none":
            self.bits = 32
            self.error_feedback = False  # nothing is lost, so there is no residual
            self.residual_dtype = "float32"
        elif self.residual_dtype != "float32" and (not self.error_feedback or self.fsdp):
            raise ValueError(f"residual_dtype={self.residual_dtype!r} needs error_feedback=True and fsdp=False")
        elif self.compressor in CLIPPED and self.error_feedback:
            raise ValueError(f"compressor {self.compressor!r} (truncation only) has no error-feedback residual")
        elif not 2 <= self.bits <= 5:
            raise ValueError(f"bits must be in 2..5 for compressor {self.compressor!r}, got {self.bits}")
        if self.fsdp and (self.per_tensor or self.compressor in CLIPPED):
            raise ValueError("fsdp=True reduce-scatters whole FSDP units: it takes neither per_tensor nor the "
                             "clip_* diagnostics")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: use epochs), got {self.steps}")
        for name in ("clients", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")


@dataclass
class RunResult:
    config: RunConfig
    records: list[dict]  # CSV rows (CSV_FIELDS)
    state: dict  # final model state_dict
    layouts: list[Layout] = field(default_factory=list)  # bucket layout used at each step
    seconds: float = 0.0
    steps: int = 0


#: backend spec: the C++ backend where this build has the codebook, else the reference (same bits, slower)
AUTO_ELSE_REFERENCE = "auto-else-reference"


def resolve_backend(backend: str | None, compressor: str | None = None) -> str:
    """The tnq backend of ``compressor`` under the spec ``backend``.

    ``backend``: None, a backend name, or a comma list of a default and per-codebook overrides, e.g.
    "auto,rtnq=reference". Without a default: "auto" — never the reference silently: without the C++ build the run
    stops at ``check_backend`` with how to build it (ask for "reference" to run the oracle). AUTO_ELSE_REFERENCE asks for "auto" where the C++ build has the codebook and "reference"
    elsewhere (``check_backend`` decides; the run records which). ``check_backend`` proves the pair can run.
    """
    default, per = None, {}
    for part in (backend or "").split(","):
        part = part.strip()
        if "=" in part:
            k, v = part.split("=", 1)
            per[k.strip()] = v.strip()
        elif part:
            default = part
    name = per.get(compressor or "") or default
    if name is None:
        name = "auto"
    if name not in tnq_api.BACKENDS + (AUTO_ELSE_REFERENCE,):
        raise ValueError(f"backend must be one of {tnq_api.BACKENDS + (AUTO_ELSE_REFERENCE,)} (or "
                         f"'DEFAULT,CODEBOOK=NAME,...'), got {name!r} "
                         f"in {backend!r}")
    return name


def check_backend(cfg: "RunConfig") -> str:
    """The backend ``cfg`` runs with ("none" for fp32), after one tiny compress/decompress proves it supports the
    codebook, so an unsupported pair fails before training instead of falling back to another backend."""
    if cfg.compressor == "none":
        return "none"
    if cfg.compressor in CLIPPED:  # runs the codebook's scale_truncate: the codebook's backend
        return check_backend(replace(cfg, compressor=clipped_codebook(cfg)))
    name = resolve_backend(cfg.backend, cfg.compressor)
    if name == AUTO_ELSE_REFERENCE:
        try:
            return _probe(cfg, "auto")
        except RuntimeError:
            return _probe(cfg, "reference")
    return _probe(cfg, name)


def _probe(cfg: "RunConfig", name: str) -> str:
    try:
        x = torch.linspace(-1.0, 1.0, 64)
        p = compress_piece(x, cfg, 0, name)
        tnq.decompress_sum([p, p], [0.5, 0.5], (64,), torch.float32, backend=name)
    except Exception as e:  # noqa: BLE001 - any failure means this backend cannot run the codebook
        raise RuntimeError(f"backend {name!r} cannot run codebook {cfg.compressor!r} at {cfg.bits} bits ({e}); pass "
                           f"it explicitly, e.g. --backend auto,{cfg.compressor}=reference") from e
    return name


def compress_piece(g: torch.Tensor, cfg: "RunConfig", seed: int, backend: str) -> torch.Tensor:
    """One client's payload of ``g`` under ``cfg``'s codebook, bits and block size (``clients`` picks the member of
    the rtnq family; the other codebooks ignore it)."""
    if RTNQ:
        return tnq.compress(g, cfg.bits, cfg.block_size, cfg.compressor, seed=seed, backend=backend,
                            clients=cfg.clients, rounding=cfg.rounding)
    return tnq.compress(g, cfg.bits, cfg.block_size, cfg.compressor, seed=seed, backend=backend,
                        rounding=cfg.rounding)


def sends_fp32(cfg: "RunConfig") -> bool:
    """fp32 on the wire: the uncompressed run and the truncation-only diagnostics (summed, not decompressed)."""
    return cfg.compressor == "none" or cfg.compressor in CLIPPED


def default_batch_size(task: str) -> int:
    """Per-client batch: 8 windows of 64 bytes for the transformer, 32 images for the MNIST models."""
    return 8 if task in TEXT_TASKS else 32


def clipped_codebook(cfg: "RunConfig") -> str | None:
    """The codebook a "clip_<codebook>" diagnostic truncates like, else None."""
    return cfg.compressor[len("clip_"):] if cfg.compressor in CLIPPED else None


def truncate_piece(g: torch.Tensor, cfg: "RunConfig", backend: str) -> torch.Tensor:
    """fp32 ``g`` truncated as ``clipped_codebook(cfg)`` truncates it (scale · z per block), without rounding."""
    scales, z = tnq.scale_truncate(g, cfg.bits, cfg.block_size, clipped_codebook(cfg), backend=backend,
                                   clients=cfg.clients if RTNQ else None)
    return torch.repeat_interleave(scales, cfg.block_size or g.numel())[: g.numel()] * z


# ---- data order ----

class ClientBatches:
    """Mini-batches of each client's shard: a fresh permutation per (client, client epoch), drop-last.

    An epoch is len(train) / (clients · batch) steps; with Dirichlet shards of unequal size each client cycles
    through its own shard at its own pace (a small shard is revisited more often).
    """

    def __init__(self, data: MNIST, cfg: RunConfig):
        x, y = data.train_x, data.train_y
        if cfg.train_subset:
            x, y = x[: cfg.train_subset], y[: cfg.train_subset]
        self.x, self.y, self.cfg = x, y, cfg
        if cfg.dirichlet > 0:
            self.shards = dirichlet_split(y, cfg.clients, cfg.dirichlet, cfg.seed,
                                          min_size=min(2 * cfg.batch_size, y.numel() // cfg.clients))
            self.steps_per_epoch = y.numel() // cfg.clients // cfg.batch_size
        else:
            self.shards = split_clients(y, cfg.clients, cfg.iid, cfg.seed)
            self.steps_per_epoch = self.shards[0].numel() // cfg.batch_size
        self._client_steps = [s.numel() // cfg.batch_size for s in self.shards]
        if min(self._client_steps + [self.steps_per_epoch]) < 1:
            raise ValueError(f"each client's shard ({min(s.numel() for s in self.shards)} images at least) must hold "
                             f"one batch of {cfg.batch_size}")
        self._perm: dict[tuple[int, int], torch.Tensor] = {}

    def total_steps(self) -> int:
        return self.cfg.steps or max(1, round(self.cfg.epochs * self.steps_per_epoch))

    def batch(self, client: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 [batch, 1, 28, 28], y int64 [batch] of ``client`` at global ``step``."""
        epoch, j = divmod(step, self._client_steps[client])
        key = (client, epoch)
        if key not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k[0] != client or k[1] >= epoch}
            gen = torch.Generator().manual_seed(tnq.derive_seed(self.cfg.seed, client, epoch, 0xDA7A))
            self._perm[key] = self.shards[client][torch.randperm(self.shards[client].numel(), generator=gen)]
        idx = self._perm[key][j * self.cfg.batch_size: (j + 1) * self.cfg.batch_size]
        return self.x[idx], self.y[idx]


def build_model(seed: int, task: str = "mnist") -> torch.nn.Module:
    torch.manual_seed(seed)
    return MnistMLP() if task == "mnist_mlp" else MnistCNN()


def evaluate_loss(model: torch.nn.Module, data: MNIST, subset: int = 0) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy in nats) on the test set (or its first ``subset`` images)."""
    x, y = data.test_x, data.test_y
    if subset:
        x, y = x[:subset], y[:subset]
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], 2000):
            out = model(x[i: i + 2000])
            correct += int((out.argmax(1) == y[i: i + 2000]).sum())
            loss += float(F.cross_entropy(out, y[i: i + 2000], reduction="sum"))
    model.train()
    return correct / x.shape[0], loss / x.shape[0]


def evaluate(model: torch.nn.Module, data: MNIST, subset: int = 0) -> float:
    """Top-1 accuracy on the test set (or its first ``subset`` images)."""
    return evaluate_loss(model, data, subset)[0]


@dataclass
class Task:
    """What the client simulation trains: the same loop serves MNIST, the MLP and the text transformer.

    ``batches``: ``batch(client, step) -> (x, y)``, ``steps_per_epoch``, ``total_steps()`` (as ClientBatches);
    ``loss``: (model output, y) -> scalar; ``evaluate``: model -> (test accuracy, test loss).
    """
    name: str
    describe: str
    build_model: Callable[[], torch.nn.Module]
    batches: Any
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], tuple[float, float]]


def make_task(cfg: RunConfig, data: Any = None) -> Task:
    """The Task of ``cfg.task``; ``data`` (MNIST, or the text corpus) is loaded when None."""
    if cfg.task in TEXT_TASKS:
        from . import text
        return text.text_task(cfg, data)
    data = data or load_mnist()
    return Task(cfg.task, make_task_description(cfg), lambda: build_model(cfg.seed, cfg.task), ClientBatches(data, cfg),
                F.cross_entropy, lambda m: evaluate_loss(m, data, cfg.test_subset))


def make_task_description(cfg: RunConfig) -> str:
    """The task's one-line description (data and model) without loading its data."""
    if cfg.task in TEXT_TASKS:
        from . import text
        return text.describe(cfg.task)
    return ("MNIST, AlexNet-style CNN (0.32M parameters)" if cfg.task == "mnist" else
            "MNIST, MLP 784-256-128-10 (0.24M parameters)")


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def pieces(cfg: RunConfig, layout: Layout) -> list[tuple[int, list[int]]]:
    """(seed id, parameter indices) of each payload a client sends in one step: one per bucket, or with
    ``per_tensor`` one per parameter tensor (seed id = the parameter's index)."""
    if cfg.per_tensor:
        return [(i, [i]) for bucket in layout for i in bucket]
    return list(enumerate(layout))


def bits_per_client_step(cfg: RunConfig, layout: Layout, numels: Sequence[int]) -> int:
    """Bits one client sends per step: 32·n uncompressed, else 8·(payload bytes) summed over the payloads."""
    sizes = [sum(numels[i] for i in idx) for _, idx in pieces(cfg, layout)]
    if sends_fp32(cfg):
        return 32 * sum(sizes)
    return sum(8 * tnq.payload_bytes(n, cfg.bits, cfg.block_size) for n in sizes)


# ---- bucket layout ----

def ddp_bucket_layouts(model: torch.nn.Module) -> Callable[[int], Layout]:
    """The layout DDP (one bucket, BUCKET_CAP_MB) uses at each step, as a function of the step.

    Step 0: one bucket in parameter order. Later steps: DDP rebuilt its buckets from the order in which the
    gradients became ready during the first backward; call ``record_ready_order`` around that backward.
    """
    params = list(model.parameters())
    state = {"ready": None}

    def layout(step: int) -> Layout:
        if step == 0 or state["ready"] is None:
            return [list(range(len(params)))]
        return [list(state["ready"])]

    def record_ready_order(backward: Callable[[], None]) -> None:
        order: list[int] = []
        handles = [p.register_post_accumulate_grad_hook(lambda _p, i=i: order.append(i))
                   for i, p in enumerate(params)]
        try:
            backward()
        finally:
            for h in handles:
                h.remove()
        state["ready"] = order

    layout.record_ready_order = record_ready_order  # type: ignore[attr-defined]
    return layout


def _flat(params: list[torch.Tensor], bucket: list[int]) -> torch.Tensor:
    return torch.cat([params[i].grad.reshape(-1) for i in bucket])


def _scatter(params: list[torch.Tensor], bucket: list[int], flat: torch.Tensor) -> None:
    off = 0
    for i in bucket:
        n = params[i].numel()
        params[i].grad = flat[off: off + n].view_as(params[i]).clone()
        off += n


# ---- single-process simulation ----

def _setup(cfg: RunConfig, data, max_steps: int):
    """What a simulated and a real-process run share before their first step: the task, the checked backend, the
    batches, the step count, the model (same init for both modes) and its parameters."""
    task = make_task(cfg, data)
    backend = check_backend(cfg)
    batches = task.batches
    total = batches.total_steps() if not max_steps else min(max_steps, batches.total_steps())
    model = task.build_model()
    params = list(model.parameters())
    return task, backend, batches, total, model, params, [p.numel() for p in params]


def simulate(cfg: RunConfig, data: Any = None, buckets: Layout | None = None, max_steps: int = 0,
             progress: bool = True) -> RunResult:
    """Train with ``cfg.clients`` simulated clients in this process; returns CSV rows, final state and layouts.

    ``data``: the task's data (MNIST, or the text corpus), loaded when None. ``buckets``: a fixed layout (list of
    parameter-index lists, in DDP's bucket order) for every step; None replays DDP's own layout
    (``ddp_bucket_layouts``). ``max_steps`` > 0 stops early (tests).
    """
    task, backend, batches, total, model, params, numels = _setup(cfg, data, max_steps)
    opt = make_optimizer(cfg, params)
    ddp_layout = ddp_bucket_layouts(model) if buckets is None else None
    w = [1.0 / cfg.clients] * cfg.clients
    # error feedback: residuals per client and parameter, so they survive DDP's bucket rebuild as the hook's do
    residual = ([[torch.zeros(n) for n in numels] for _ in range(cfg.clients)]
                if cfg.error_feedback and not cfg.fsdp else None)
    records, layouts, loss_sum, loss_n = [], [], 0.0, 0
    units = fsdp_units(model) if cfg.fsdp else []
    fsdp_grads: list = []  # per client: per unit, its parameters' gradients
    fsdp_residual: dict = {} if cfg.fsdp and cfg.error_feedback else None
    bar = _progress(cfg, total, progress)
    t0 = time.perf_counter()
    for step in range(total):
        layout = ddp_layout(step) if ddp_layout is not None else buckets
        layouts.append(layout)
        parts = pieces(cfg, layout)
        payloads: list[list[torch.Tensor]] = [[] for _ in parts]
        for c in range(cfg.clients):
            x, y = batches.batch(c, step)
            for p in params:
                p.grad = None
            loss = task.loss(model(x), y)
            if step == 0 and c == 0 and ddp_layout is not None:
                ddp_layout.record_ready_order(loss.backward)
            else:
                loss.backward()
            loss_sum += loss.item() / cfg.clients
            if cfg.fsdp:
                fsdp_grads.append([[params[i].grad.detach().clone() for i in unit] for unit in units])
                continue
            for b, (sid, idx) in enumerate(parts):
                g = _flat(params, idx)
                if cfg.compressor == "none":
                    # DDP's default hook divides by the world size before its sum-allreduce
                    payloads[b].append(g / cfg.clients)
                elif cfg.compressor in CLIPPED:
                    payloads[b].append(truncate_piece(g, cfg, backend) / cfg.clients)
                else:
                    if residual is not None:  # the DDP hook's own error-feedback helpers, so both stay one logic
                        g = g + tnq_ddp.gather_residual([residual[c][i] for i in idx], [numels[i] for i in idx],
                                                        g.device)
                    payload = compress_piece(g, cfg, tnq.derive_seed(cfg.seed, c, step, sid), backend)
                    payloads[b].append(payload)
                    if residual is not None:
                        r = tnq_ddp.feedback_residual(g, tnq.decompress(payload, (g.numel(),), torch.float32,
                                                                        backend=backend))
                        keep = RESIDUAL_DTYPES[cfg.residual_dtype]
                        for i, piece in zip(idx, tnq_ddp.split_residual(r, [numels[i] for i in idx])):
                            residual[c][i] = piece.to(keep)
        loss_n += 1
        if cfg.fsdp:
            _fsdp_reduce(cfg, params, units, fsdp_grads, step, backend, fsdp_residual)
            fsdp_grads = []
        for b, (_, idx) in enumerate([] if cfg.fsdp else parts):
            if sends_fp32(cfg):
                avg = payloads[b][0]
                for g in payloads[b][1:]:
                    avg = avg + g
            else:
                n = sum(numels[i] for i in idx)
                avg = tnq.decompress_sum(payloads[b], w, (n,), torch.float32, backend=backend)
            _scatter(params, idx, avg)
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
            acc, test_loss = task.evaluate(model)
            records.append(_record(cfg, step + 1, batches.steps_per_epoch, loss_sum / loss_n, test_loss, acc,
                                   bits_per_client_step(cfg, layout, numels), backend))
            loss_sum, loss_n = 0.0, 0
            _postfix(bar, records[-1])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return RunResult(cfg, records, {k: v.clone() for k, v in model.state_dict().items()}, layouts,
                     time.perf_counter() - t0, total)


def fsdp_units(model: torch.nn.Module) -> list[list[int]]:
    """Parameter indices of the FSDP units, in the order compress_reduce_scatter numbers them: the root (the
    parameters of no unit) first, then each of ``model.blocks`` (the transformer: fully_shard per block) or else each
    top-level child module with parameters."""
    params = list(model.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    subs = list(model.blocks) if hasattr(model, "blocks") else [m for m in model.children()
                                                                  if any(True for _ in m.parameters())]
    units = [[index[id(p)] for p in m.parameters()] for m in subs]
    taken = {i for u in units for i in u}
    root = [i for i in range(len(params)) if i not in taken]
    return ([root] if root else []) + units


def _fsdp_reduce(cfg, params, units, grads, step, backend, residual) -> None:
    """Each unit's averaged gradient through tnq_kernels.fsdp.simulate (fp32 sums for compressor "none")."""
    W = cfg.clients
    cfg_rs = tnq_fsdp.Config(bits=cfg.bits, block_size=cfg.block_size, codebook=cfg.compressor,
                             error_feedback=cfg.error_feedback, rounding=cfg.rounding) \
        if cfg.compressor != "none" else None
    for u, unit in enumerate(units):
        inputs = [tnq_fsdp.flat_input(grads[c][u], W) for c in range(W)]
        if cfg_rs is None:
            outs = list((sum(inputs) / W).view(W, -1))
        else:
            res = None
            if residual is not None:
                res = residual.setdefault(u, [torch.zeros(W, inputs[0].numel() // W) for _ in range(W)])
            outs = tnq_fsdp.simulate(inputs, torch.distributed.ReduceOp.AVG, cfg_rs, cfg.seed, step, u,
                                     backend=backend, residuals=res)
        for i, g in zip(unit, tnq_fsdp.split_output(torch.stack(outs), [params[i].shape for i in unit], W)):
            params[i].grad = g.to(params[i].dtype)


def _record(cfg, step, steps_per_epoch, loss, test_loss, acc, bits, backend):
    return {"compressor": cfg.compressor, "bits": cfg.bits, "seed": cfg.seed,
            "epoch": round(step / steps_per_epoch, 4), "step": step, "train_loss": round(loss, 6),
            "test_loss": round(test_loss, 6), "test_accuracy": acc, "bits_per_client_step": bits,
            "backend": backend, "rng": tnq_rng.VERSION}


def _progress(cfg: RunConfig, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    name = "fp32" if cfg.compressor == "none" else f"{cfg.compressor} {cfg.bits}b"
    name += " +EF" if cfg.error_feedback else ""
    name += " nearest" if cfg.rounding != tnq.api.DEFAULT_ROUNDING and cfg.compressor != "none" else ""
    return tqdm(total=total, desc=f"{name} seed={cfg.seed}", unit="step", leave=True, dynamic_ncols=True,
                file=sys.stderr)


def _postfix(bar, rec):
    if bar is not None:
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", acc=f"{rec['test_accuracy']:.4f}", refresh=False)


# ---- multi-process mode: real processes, torch.distributed (gloo), the DDP hook ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, cfg: RunConfig, port: int, out_path: str, max_steps: int, progress: bool,
                threads: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=cfg.clients)
    try:
        task, backend, batches, total, model, params, numels = _setup(cfg, None, max_steps)
        index = {id(p): i for i, p in enumerate(params)}
        ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
        seen: dict[int, Layout] = {}  # step -> layout the hook saw
        if cfg.compressor != "none":
            state = tnq_ddp.TNQState(process_group=None, bits=cfg.bits, block_size=cfg.block_size,
                                     codebook=cfg.compressor, scheme="allgather", seed=cfg.seed,
                                     error_feedback=cfg.error_feedback, warmup_steps=0, min_bucket_numel=0,
                                     backend=backend, rounding=cfg.rounding)
            box = {"step": 0}

            def hook(state, bucket):
                layout = seen.setdefault(box["step"], [])
                while len(layout) <= bucket.index():
                    layout.append([])
                layout[bucket.index()] = [index[id(p)] for p in bucket.parameters()]
                return tnq_ddp.tnq_hook(state, bucket)
            ddp.register_comm_hook(state, hook)
        opt = make_optimizer(cfg, ddp.parameters())
        records, loss_sum, loss_n = [], 0.0, 0
        bar = _progress(cfg, total, progress and rank == 0)
        t0 = time.perf_counter()
        for step in range(total):
            if cfg.compressor != "none":
                box["step"] = step
            x, y = batches.batch(rank, step)
            opt.zero_grad(set_to_none=True)
            loss = task.loss(ddp(x), y)
            loss.backward()
            opt.step()
            lt = loss.detach().reshape(1) / cfg.clients
            dist.all_reduce(lt)
            loss_sum += float(lt)
            loss_n += 1
            if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
                if rank == 0:
                    layout = seen.get(step) or [list(range(len(params)))]
                    acc, test_loss = task.evaluate(model)
                    records.append(_record(cfg, step + 1, batches.steps_per_epoch, loss_sum / loss_n, test_loss,
                                           acc, bits_per_client_step(cfg, layout, numels), backend))
                    _postfix(bar, records[-1])
                loss_sum, loss_n = 0.0, 0
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if rank == 0:
            layouts = [seen.get(s, []) for s in range(total)]
            torch.save({"records": records, "state": model.state_dict(), "layouts": layouts,
                        "seconds": time.perf_counter() - t0, "steps": total}, out_path)
        del ddp  # its reducer holds the process group: release it while every rank is still connected
        dist.barrier()  # nobody tears gloo down while another rank still talks to it
    finally:
        dist.destroy_process_group()


def _ddp_entry(rank: int, *args) -> None:
    _ddp_worker(rank, *args)
    # Results are saved and the group is destroyed. Leave without interpreter teardown: on a loaded 2-core CI box a
    # gloo/DDP background thread still being destroyed at exit once aborted a worker of another gloo script
    # ("terminate called without an active exception") after all its work was done. Failures raise above instead,
    # so mp.spawn still reports their traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(cfg: RunConfig, max_steps: int = 0, progress: bool = True, threads: int = 1) -> RunResult:
    """Train with ``cfg.clients`` real processes (gloo on 127.0.0.1) and the tnq DDP hook.

    ``layouts`` of the result holds the bucket layout the hook saw at each step (empty for "none").
    """
    import torch.multiprocessing as mp
    if cfg.per_tensor:
        raise ValueError("per_tensor=True (one payload per parameter tensor) is simulation-only: the DDP hook "
                         "compresses whole buckets; use mode 'sim'")
    if cfg.compressor in CLIPPED:
        raise ValueError(f"compressor {cfg.compressor!r} is a simulation-only diagnostic; use mode 'sim'")
    if cfg.compressor != "none":
        try:
            from tnq_kernels import ddp as _  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"--mode ddp needs tnq_kernels.ddp (the DDP hook), which failed to import: {e}") from e
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_ddp_entry, args=(cfg, _free_port(), out, max_steps, progress, threads), nprocs=cfg.clients,
                 join=True)
        res = torch.load(out, weights_only=False)
    return RunResult(cfg, res["records"], res["state"], res["layouts"], res["seconds"], res["steps"])


# ---- sweep + outputs ----

def write_csv(path: str, records: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(records)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("bits", "seed", "step", "bits_per_client_step"):
            r[k] = int(r[k])
        for k in ("epoch", "train_loss", "test_loss", "test_accuracy"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
        r.setdefault("backend", "")
        r["rng"] = r.get("rng") or tnq_rng.VERSION_BEFORE_RECORDING
    return rows


def plan(compressors: Sequence[str], bits: Sequence[int], seeds: Sequence[int], base: RunConfig) -> list[RunConfig]:
    """The runs of a sweep: "none" once per seed, every other compressor at every bit width."""
    runs = []
    for seed in seeds:
        for comp in compressors:
            for b in ([32] if comp == "none" else bits):
                runs.append(replace(base, compressor=comp, bits=b if comp != "none" else 3, seed=seed))
    return runs


def sweep(runs: list[RunConfig], out_dir: str, mode: str = "sim", resume: bool = False,
          progress: bool = True, data: Any = None, max_steps: int = 0) -> list[dict]:
    """Run ``runs`` one after another, rewriting results.csv / runs.csv / table.md / PNGs after each run."""
    from . import report
    os.makedirs(out_dir, exist_ok=True)
    csv_path, runs_path = os.path.join(out_dir, "results.csv"), os.path.join(out_dir, "runs.csv")
    records = read_csv(csv_path) if resume and os.path.exists(csv_path) else []
    timings = report.read_runs(runs_path) if resume and os.path.exists(runs_path) else []
    # runs are keyed by (compressor, bits, seed): one folder holds one rounding
    # runs are keyed by (compressor, bits, seed): one folder holds one rounding and one residual setting
    for name, of_cfg in (("rounding", lambda c: c.rounding), ("residual", residual_label)):
        other = {r[name] for r in timings if r[name]} - {of_cfg(cfg) for cfg in runs if cfg.compressor != "none"}
        if other and any(cfg.compressor != "none" for cfg in runs):
            raise ValueError(f"{runs_path} holds runs with {name} {sorted(other)}, these runs use "
                             f"{sorted({of_cfg(cfg) for cfg in runs})}: write them to another --out")
    done = {(r["compressor"], int(r["bits"]), int(r["seed"])) for r in timings}
    if mode == "sim" and data is None and runs and runs[0].task not in TEXT_TASKS:
        data = load_mnist()
    for cfg in runs:
        key = (cfg.compressor, cfg.bits, cfg.seed)
        if key in done:
            continue
        res = simulate(cfg, data, max_steps=max_steps, progress=progress) if mode == "sim" else \
            run_ddp(cfg, max_steps=max_steps, progress=progress)
        records = [r for r in records if (r["compressor"], r["bits"], r["seed"]) != key] + res.records
        timings.append({"compressor": cfg.compressor, "bits": cfg.bits, "seed": cfg.seed,
                        "mode": mode + ("-fsdp" if cfg.fsdp else ""),
                        "backend": res.records[-1]["backend"], "steps": res.steps,
                        "seconds": round(res.seconds, 2), "ms_per_step": round(1000 * res.seconds / res.steps, 2),
                        "final_accuracy": res.records[-1]["test_accuracy"],
                        "final_test_loss": res.records[-1]["test_loss"], "task": cfg.task,
                        "optimizer": cfg.optimizer, "lr": cfg.lr, "block_size": cfg.block_size,
                        "per_tensor": int(cfg.per_tensor), "partition": partition(cfg), "rng": tnq_rng.VERSION,
                        "rounding": cfg.rounding, "residual": residual_label(cfg)})
        write_csv(csv_path, records)
        report.write_runs(runs_path, timings)
        report.write_all(records, out_dir, config=runs[0], timings=timings)
    return records


def residual_label(cfg: RunConfig) -> str:
    """runs.csv's ``residual``: "none" without error feedback (fp32 runs included), else the residual's dtype."""
    return cfg.residual_dtype if cfg.error_feedback else "none"


def partition(cfg: RunConfig) -> str:
    """"iid", "two-digit" (the FedAvg split) or "dirichlet(ALPHA)"."""
    if cfg.dirichlet > 0:
        return f"dirichlet({cfg.dirichlet:g})"
    return "iid" if cfg.iid else "two-digit"


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


#: Learning rates chosen on fp32 alone, before any compressed run (experiments/results/lr_check/), then used for
#: every codebook: (task, optimizer) -> lr.
DEFAULT_LR = {("mnist", "sgdm"): 0.1, ("mnist", "adamw"): 3e-3, ("mnist_mlp", "sgdm"): 0.1,
              ("mnist_mlp", "adamw"): 1e-2, ("text", "sgdm"): 0.1, ("text", "adamw"): 3e-3,
              ("text_gru", "sgdm"): 1.0}
#: --preset paper: the paper's MNIST setting (one scale per layer tensor, 8 clients, momentum SGD, the CNN), with
#: the paper's baselines as their own papers define them (L2-norm scaled) next to the practical max-scaled ones.
PAPER_COMPRESSORS = ("none", "tnq", "rtnq", "tqsgd", "qsgd_l2", "nuqsgd_l2", "nqsgd", "qsgd")
PRESETS = {
    "paper": dict(task="mnist", per_tensor=True, block_size=0, clients=8, optimizer="sgdm",
                  compressors=PAPER_COMPRESSORS),
}
#: --demo: the paper preset's codebooks at 3 bits on the MLP (fast, and past its initial plateau in 300 steps,
#: which the CNN is not in 60), one seed: a quick look, not evidence (experiments/results/ is).
DEMO = dict(task="mnist_mlp", steps=300, eval_every=100, bits="3", seeds="0", backend=AUTO_ELSE_REFERENCE)


def build_parser(prog: str = "python -m experiments.mnist", task: str = "mnist") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default=None, help=f"default {task} (--demo: {DEMO['task']})")
    p.set_defaults(default_task=task)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper: one scale per parameter tensor (block 0), 8 clients, momentum SGD, the paper's "
                        "baselines (explicit flags override)")
    p.add_argument("--quick", action="store_true",
                   help="every compressor at 3 bits, one seed, 0.25 epoch (< 2 min on 2 CPU cores)")
    p.add_argument("--demo", action="store_true",
                   help="the paper preset's codebooks at 3 bits on the MLP, 300 steps, one seed (~2 min on 2 cores "
                        "with the C++ backend)")
    p.add_argument("--sweep", action="store_true", help="the full sweep: bits 2..5, seeds 0,1,2, 2 epochs")
    p.add_argument("--mode", choices=("sim", "ddp"), default="sim")
    p.add_argument("--compressors", default=None,
                   help=f"comma list of {COMPRESSORS} (default: {','.join(DEFAULT_COMPRESSORS)})")
    p.add_argument("--bits", default=None, help="comma list, default 3 (--sweep: 2,3,4,5)")
    p.add_argument("--seeds", default=None, help="comma list, default 0 (--sweep: 0,1,2)")
    p.add_argument("--epochs", type=float, default=None, help="default 1 (--quick: 0.25, --sweep: 2)")
    p.add_argument("--steps", type=int, default=None, help="train exactly N steps (overrides --epochs)")
    p.add_argument("--clients", type=int, default=None, help="default 8")
    p.add_argument("--batch-size", type=int, default=None, help="per client; default 32 (text: 8 sequences)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="default sgdm")
    p.add_argument("--lr", type=float, default=None, help="default: DEFAULT_LR[(task, optimizer)], chosen on fp32")
    p.add_argument("--momentum", type=float, default=RunConfig.momentum)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--block-size", type=int, default=None, help=f"default {tnq.DEFAULT_BLOCK_SIZE} (paper: 0)")
    p.add_argument("--per-tensor", action="store_true", default=None,
                   help="one payload per parameter tensor instead of one per DDP bucket (paper preset)")
    p.add_argument("--non-iid", action="store_true", help="each client holds mostly two digits")
    p.add_argument("--dirichlet", type=float, default=0.0, metavar="ALPHA",
                   help="label-skewed clients: class shares ~ Dirichlet(ALPHA), e.g. 0.3 (0: off)")
    p.add_argument("--fsdp", action="store_true",
                   help="FSDP2 semantics: each FSDP unit's gradients reduce-scattered as tnq_kernels.fsdp does "
                        "(rows per client, one quantization) instead of one payload per client")
    p.add_argument("--error-feedback", action="store_true",
                   help="each client adds its previous compression residual to its gradient (off in the sweep)")
    p.add_argument("--rounding", choices=tnq.api.ROUNDINGS, default=tnq.api.DEFAULT_ROUNDING,
                   help="the encode's rounding: stochastic (unbiased, default) or nearest (no random numbers; "
                        "docs/codebooks.md §5); recorded in runs.csv")
    p.add_argument("--residual-dtype", choices=tuple(RESIDUAL_DTYPES), default="float32",
                   help="with --error-feedback: the dtype each client stores its residual in (recorded in runs.csv)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between test evaluations")
    p.add_argument("--backend", default=None,
                   help="tnq backend, or a default plus per-codebook overrides, e.g. 'auto,rtnq=reference' "
                        "(default: C++ if built, else reference); recorded per run, never replaced silently")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the simulation (default 2; --demo: 1, since two threads on a busy 2-core "
                        "machine ran the MLP 20x slower than one)")
    p.add_argument("--out", default=None,
                   help="output folder (default experiments/results/<task>; --quick/--demo: out/<task>-quick)")
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs.csv")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--train-subset", type=int, default=0, help="use only the first N training items (smoke tests)")
    p.add_argument("--test-subset", type=int, default=0, help="evaluate on the first N test items (smoke tests)")
    return p


def config_from_args(a: argparse.Namespace) -> tuple[RunConfig, list[str], list[int], list[int]]:
    """(base config, compressors, bits, seeds) from parsed arguments: explicit flags, then the preset, then the
    mode's (--demo / --quick / --sweep) defaults, then the plain defaults."""
    preset = dict(PRESETS[a.preset or ("paper" if a.demo else "")] if a.preset or a.demo else {})

    def pick(name, default):
        v = getattr(a, name)
        return v if v is not None else preset.get(name, default)
    task = a.task or (DEMO["task"] if a.demo else a.default_task)
    comps = pick("compressors", DEFAULT_COMPRESSORS)
    comps = comps.split(",") if isinstance(comps, str) else [c for c in comps if c in COMPRESSORS]
    for c in comps:
        if c not in COMPRESSORS:
            raise ValueError(f"--compressors: {c!r} is not one of {COMPRESSORS}")
    bits = _ints(a.bits or (DEMO["bits"] if a.demo else "")) or ([2, 3, 4, 5] if a.sweep else [3])
    seeds = _ints(a.seeds or (DEMO["seeds"] if a.demo else "")) or ([0, 1, 2] if a.sweep else [0])
    epochs = a.epochs if a.epochs is not None else (0.25 if a.quick else 2.0 if a.sweep else 1.0)
    steps = a.steps if a.steps is not None else (DEMO["steps"] if a.demo else 0)
    optimizer = pick("optimizer", "sgdm")
    lr = a.lr if a.lr is not None else DEFAULT_LR[(task, optimizer)]
    eval_every = a.eval_every or (DEMO["eval_every"] if a.demo else 29 if a.quick else 78)
    batch = a.batch_size or default_batch_size(task)
    base = RunConfig(epochs=epochs, steps=steps, clients=pick("clients", 8), batch_size=batch, lr=lr,
                     momentum=a.momentum, block_size=pick("block_size", tnq.DEFAULT_BLOCK_SIZE), iid=not a.non_iid,
                     eval_every=eval_every, backend=a.backend or (DEMO["backend"] if a.demo else None),
                     error_feedback=a.error_feedback, fsdp=a.fsdp, rounding=a.rounding,
                     residual_dtype=a.residual_dtype,
                     train_subset=a.train_subset, test_subset=a.test_subset, optimizer=optimizer,
                     weight_decay=a.weight_decay, per_tensor=bool(pick("per_tensor", False)), dirichlet=a.dirichlet,
                     task=task)
    return base, comps, bits, seeds


def main(argv: Sequence[str] | None = None, prog: str = "python -m experiments.mnist", task: str = "mnist") -> int:
    p = build_parser(prog, task)
    a = p.parse_args(argv)
    a.threads = a.threads or (1 if a.demo else 2)
    torch.set_num_threads(a.threads)
    try:
        base, comps, bits, seeds = config_from_args(a)
    except ValueError as e:
        p.error(str(e))
    out = a.out or (f"out/{base.task}-quick" if a.quick or a.demo else f"experiments/results/{base.task}")
    try:
        runs = plan(comps, bits, seeds, base)
        for c in dict.fromkeys(r.compressor for r in runs):  # fail before any training, not after an hour
            check_backend(replace(base, compressor=c, bits=bits[0] if c != "none" else base.bits))
        data = load_mnist() if a.mode == "sim" and base.task not in TEXT_TASKS else None
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    backends = ", ".join(f"{c}={check_backend(replace(base, compressor=c, bits=bits[0]))}" for c in comps
                         if c != "none")
    length = f"{base.steps} steps" if base.steps else f"{base.epochs} epochs"
    print(f"{base.task}, {base.clients} clients ({partition(base)}), {len(runs)} runs x {length}, "
          f"{base.optimizer} lr {base.lr}, block {base.block_size}{' per tensor' if base.per_tensor else ''}, "
          f"mode={a.mode}, backends: {backends or '-'}, threads={a.threads} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    records = sweep(runs, out, a.mode, a.resume, not a.no_progress, data)
    from . import report
    metric, _ = report.metric_of(base)
    print(report.table(records, metric, paper=base.task == "mnist"), flush=True)
    print(f"\n{len(runs)} runs in {time.perf_counter() - t0:.0f} s; results in {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
