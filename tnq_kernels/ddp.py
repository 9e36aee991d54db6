"""DistributedDataParallel communication hook that sends TNQ-compressed gradient buckets (docs/integrations.md).

    state = tnq_kernels.ddp.TNQState(bits=3)                  # scheme "auto": allgather for W <= 2, else two_phase
    ddp_model.register_comm_hook(state, tnq_kernels.ddp.tnq_hook)

The hook returns a Future holding the bucket's average over the ranks, in the bucket's dtype (fp32, fp16, bf16).
Every rank ends a step with the bit-identical tensor, so replicas stay in lockstep.

Schemes (n = bucket elements, W = world size, P(n) = payload bytes = b·n/8 + scales + header):

``allgather``  compress the bucket, all-gather the W payloads into one preallocated uint8 tensor, and
    ``decompress_sum(gathered, weights=[1/W]*W)`` — the paper's client→server aggregation done by every rank.
    One quantization per gradient. A ring all-gather makes each rank send (W-1)·P(n) bytes: it grows with W.
``two_phase``  split the bucket into W chunks of ``chunk = roundup(ceil(n/W), 32)`` elements (the last ones may be
    shorter or empty); all-to-all the compressed chunks so rank r receives every rank's chunk r; ``decompress_sum``
    them (weights 1/W, fp32); re-compress that reduced shard; all-gather the shards; decode. Each rank sends
    (W-1)·P(chunk) + (W-1)·P(chunk) ≈ 2·(W-1)/W·P(n) bytes: bounded by 2·P(n) for any W, like a ring all-reduce.
    The price is a second quantization: the averaged shard is rounded again, adding its own unbiased noise with
    per-element MSE ≈ mse(b)·γ̂_avg² (mse(b) as in docs/format.md: 0.187 at 3 bits, in units of the averaged chunk's
    scale). Averaging W independent phase-1 noises divides their variance by W, but the phase-2 noise is not
    averaged, so at W ranks the total is ≈ mse(b)·(γ̂²/W + γ̂_avg²) against mse(b)·γ̂²/W for ``allgather``. It stays
    unbiased, but the extra error is roughly as large as one rank's own quantization error; use ``allgather`` when W is
    small enough that its traffic is acceptable (the default picks it for W <= 2, where it sends less anyway).

All collectives of one bucket are issued from the hook's own thread, in the same order on every rank (phase 1 is
waited for before phase 2 is issued): a collective started from a Future callback can interleave with the next
bucket's first collective differently on each rank, which gloo detects only as a size mismatch or a hang.

Seeds (docs/RNG.md): rank r's payload of bucket index b at hook step t uses ``derive_seed(seed, r, t, b)`` (allgather);
two_phase uses ``derive_seed(seed, r, t, b, 1, j)`` for its chunk j and ``derive_seed(seed, r, t, b, 2)`` for its
reduced shard. t counts hook steps: it advances after the bucket with ``bucket.is_last()``. A single-process
simulation that compresses the same buckets with the same seeds and calls ``decompress_sum`` the same way gets the
same bits as the hook.

Plain all-reduce (of the bucket pre-divided by W, as torch's default hook does) replaces compression during the first
``warmup_steps`` steps and for buckets of fewer than ``min_bucket_numel`` elements.

Non-finite gradients: a block holding NaN/Inf decodes as non-finite (docs/format.md), so the averaged bucket is non-finite
on every rank and torch.amp.GradScaler skips the step. With error feedback, the residual of such a block is reset to
zero instead of carrying NaN into every later step.

Error feedback (``error_feedback=True``): rank r adds its residual e to the bucket before compressing and keeps
e ← (g + e) − decode(own payload) in fp32. Residuals are stored per bucket index together with the parameters the
bucket held; when DDP rebuilds its buckets after the first iteration (different parameters under an index), the
stored residuals are split per parameter and regathered in the new layout, so no residual is lost. In two_phase,
only the phase-1 error is fed back (the phase-2 error belongs to the shard owner's re-quantization of a sum).

Checkpoints (``state_dict`` / ``load_state_dict``): the step counter, seed, byte statistics and each parameter's
error-feedback residual (keyed by the parameter's name in the model, so the saved form does not depend on DDP's bucket
layout), plus the configuration, which a restoring state must share: a state saved with another world size, bits,
block size, codebook, scheme, error feedback, warm-up, bucket threshold or rounding is refused, naming the field (a
state saved before ``rounding`` existed reads as "stochastic"). With error
feedback every rank saves its own state (residuals differ per rank). A fresh DDP starts with one bucket and rebuilds
its buckets after its first backward pass; bucket indices pick the seeds and buckets are compressed as a whole, so a
resumed run reproduces the uninterrupted one bit for bit only once its buckets are rebuilt the same way: run one
backward pass under ``state.passthrough()`` (no communication, no state change; zero the gradients after it) before
the first resumed step. A resumed step whose buckets differ from the saved layout warns.

Bytes statistics (per rank, ring-algorithm model of what this rank transmits; W = 1 sends nothing):
``bytes_sent`` / ``bytes_fp32`` cumulative over all steps, ``last_bytes_sent`` / ``last_bytes_fp32`` of the last
completed step, where ``bytes_fp32`` is what a ring all-reduce of the same buckets in fp32 sends: 2·(W-1)/W·4n.
"""
# No `from __future__ import annotations`: DDP.register_comm_hook compares the hook's annotations with the
# GradBucket class itself, and string annotations fail that check.
import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import api
from . import checks
from . import codebooks as cb
from . import format as fmt
from .feedback import check_error_feedback, default_codebook, feedback_residual, gather_residual, split_residual
from .rng import derive_seed

SCHEMES = ("auto", "allgather", "two_phase")
#: below 1024 elements (4 KiB in fp32) a bucket's all-reduce is latency-bound: compressing saves < 4 KiB of traffic
#: but adds a compress and a decode per step.
DEFAULT_MIN_BUCKET_NUMEL = 1024

# torch 2.13 deprecates all_gather_into_tensor for all_gather_single; torch 2.11 only has the former.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


#: the value of a configuration field that states saved before the field existed had (TNQState, fsdp.FSDPState)
SAVED_BEFORE = {"rounding": api.DEFAULT_ROUNDING}


def _check_int(name: str, value, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


@dataclass
class _Residual:
    params: tuple  # the bucket's parameters, in buffer order (identity: DDP hands back the same Parameter objects)
    value: torch.Tensor  # fp32 [numel of the bucket]


class TNQState:
    """State of :func:`tnq_hook`: configuration, the step counter, error-feedback residuals and byte statistics.

    Args:
        process_group: the group to reduce over (None: the default group).
        bits: bits per element, 1-8 (2-5 are the fast paths).
        block_size: elements per fp32 scale (a multiple of 32; 0: one scale per compressed tensor).
        codebook: "rtnq", "tnq", "tqsgd", "nqsgd", "qsgd", "qsgd_l2", "nuqsgd_l2" or "tnq_max" (docs/codebooks.md);
            "rtnq" is sized for the world size of each call (the number of payloads averaged). None (default):
            "rtnq", or "qsgd" with ``error_feedback`` (tnq_kernels.feedback.default_codebook).
        scheme: "allgather", "two_phase" or "auto" (two_phase when the world size is > 2).
        seed: base seed; per-rank/step/bucket seeds are derived from it (module docstring).
        error_feedback: keep and re-inject each rank's compression residual.
        rounding: "stochastic" (default, unbiased) or "nearest" (no random numbers; meant for error feedback,
            docs/codebooks.md §5), passed to every compress of the hook.
        warmup_steps: number of first hook steps that use plain all-reduce.
        min_bucket_numel: buckets with fewer elements use plain all-reduce.
        backend: the tnq backend for compress/decompress (None: auto by device; or one of api.BACKENDS,
            e.g. "reference" for the pure-PyTorch oracle).
    """

    def __init__(self, process_group=None, bits: int = api.DEFAULT_BITS, block_size: int = api.DEFAULT_BLOCK_SIZE,
                 codebook: str | int | None = None, scheme: str = "auto", seed: int = 0,
                 error_feedback: bool = False,
                 warmup_steps: int = 0, min_bucket_numel: int = DEFAULT_MIN_BUCKET_NUMEL,
                 backend: str | None = None, rounding: str = api.DEFAULT_ROUNDING):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if backend is not None and backend not in api.BACKENDS:
            raise ValueError(f"backend must be None or one of {api.BACKENDS}, got {backend!r}")
        self.process_group = process_group
        self.bits = cb.check_bits(bits)
        self.block_size = fmt.check_block_size(block_size)
        self.error_feedback = bool(error_feedback)
        # "rtnq" stays the family: its member follows the world size
        self.codebook = cb.codebook_name(default_codebook(codebook, self.error_feedback))
        self.scheme = scheme
        self.seed = seed
        check_error_feedback(self.codebook, self.bits, self.error_feedback, where="TNQState")
        checks.rounding_id(rounding)
        self.rounding = rounding
        self.warmup_steps = _check_int("warmup_steps", warmup_steps)
        self.min_bucket_numel = _check_int("min_bucket_numel", min_bucket_numel)
        self.backend = backend
        self.step = 0
        #: [(bucket_index, numel)] of the last completed step, in the order the hook saw the buckets
        self.last_bucket_layout: list[tuple[int, int]] = []
        self.bytes_sent = 0
        self.bytes_fp32 = 0
        self.last_bytes_sent = 0
        self.last_bytes_fp32 = 0
        self._layout: list[tuple[int, int]] = []
        self._step_sent = 0
        self._step_fp32 = 0
        self._residuals: dict[int, _Residual] = {}
        self._pool: dict[int, torch.Tensor] = {}  # per-parameter residuals left over from a rebuilt layout
        self._fresh: set[int] = set()  # bucket indices whose residual was written in the current step
        self._layout_params: list[tuple] = []
        #: the parameters of each bucket of the last completed step, in the order of last_bucket_layout
        self.last_bucket_params: list[tuple] = []
        self._passthrough = False
        self._expect: dict[int, tuple] | None = None  # bucket index -> parameter names saved in a checkpoint
        self._names: dict[int, str] = {}  # id(parameter) -> name, known after load_state_dict(module=...)

    # ---- introspection ----

    @property
    def compression_ratio(self) -> float:
        """bytes_fp32 / bytes_sent over all steps so far (inf while nothing was sent)."""
        return self.bytes_fp32 / self.bytes_sent if self.bytes_sent else float("inf")

    def stats(self) -> dict:
        return {"step": self.step, "bytes_sent": self.bytes_sent, "bytes_fp32": self.bytes_fp32,
                "last_bytes_sent": self.last_bytes_sent, "last_bytes_fp32": self.last_bytes_fp32,
                "compression_ratio": self.compression_ratio, "last_bucket_layout": list(self.last_bucket_layout),
                "residual_bytes": sum(r.value.numel() * r.value.element_size() for r in self._residuals.values())}

    def residuals(self) -> dict[int, tuple[tuple, torch.Tensor]]:
        """Error-feedback residuals: bucket index → (parameters in buffer order, fp32 residual [bucket numel])."""
        return {i: (r.params, r.value) for i, r in self._residuals.items()}

    def world(self) -> tuple[int, int]:
        """(rank, world size) in the state's process group."""
        return dist.get_rank(self.process_group), dist.get_world_size(self.process_group)

    def scheme_for(self, world_size: int) -> str:
        if self.scheme != "auto":
            return self.scheme
        return "two_phase" if world_size > 2 else "allgather"

    # ---- bookkeeping used by the hook ----

    def _account(self, index: int, numel: int, sent: int, world_size: int, is_last: bool) -> None:
        self._layout.append((index, numel))
        self._step_sent += sent
        self._step_fp32 += _ring_allreduce_bytes(4 * numel, world_size)
        if is_last:
            self.last_bucket_layout, self._layout = self._layout, []
            self.last_bucket_params, self._layout_params = self._layout_params, []
            self._fresh.clear()
            self._expect = None
            self.last_bytes_sent, self.last_bytes_fp32 = self._step_sent, self._step_fp32
            self.bytes_sent += self._step_sent
            self.bytes_fp32 += self._step_fp32
            self._step_sent = self._step_fp32 = 0
            self.step += 1

    def _take_residual(self, index: int, params: tuple, numel: int, device) -> torch.Tensor:
        """The fp32 residual to add to bucket ``index`` (zeros if none), re-laid-out if DDP rebuilt its buckets."""
        r = self._residuals.get(index)
        if r is not None and _same(r.params, params) and r.value.numel() == numel:
            return r.value
        if r is not None or self._pool:
            self._dissolve()
        numels = [p.numel() for p in params]
        if not self._pool or sum(numels) != numel:
            return torch.zeros(numel, dtype=torch.float32, device=device)
        return gather_residual([self._pool.pop(id(p), None) for p in params], numels, device)

    def _dissolve(self) -> None:
        # DDP changed which parameters sit under some bucket index: split every stored residual per parameter so
        # each new bucket regathers its own parameters' residuals, whichever index held them before.
        # Residuals written earlier in this step belong to buckets already done: leaving them in place keeps a rebuilt
        # (or restored) layout from re-dissolving every step.
        for i in [i for i in self._residuals if i not in self._fresh]:
            r = self._residuals.pop(i)
            numels = [p.numel() for p in r.params]
            if sum(numels) != r.value.numel():
                continue  # layout unknown (buffer with padding): the residual cannot be attributed, drop it
            for p, piece in zip(r.params, split_residual(r.value, numels)):
                self._pool[id(p)] = piece

    def _keep_residual(self, index: int, params: tuple, corrected: torch.Tensor, decoded: torch.Tensor) -> None:
        self._residuals[index] = _Residual(params, feedback_residual(corrected, decoded))
        self._fresh.add(index)

    def _observe(self, index: int, params: tuple) -> None:
        self._layout_params.append(params)
        if self._expect is None:
            return
        names = tuple(self._names.get(id(p), "?") for p in params)
        if self._expect.get(index) != names:
            warnings.warn(
                f"TNQState: bucket {index} of the first resumed step holds {len(names)} parameters "
                f"({', '.join(names[:3])}{', …' if len(names) > 3 else ''}), not the saved layout's; seeds and "
                "compression blocks differ from the uninterrupted run. Run one backward pass under "
                "state.passthrough() after load_state_dict so DDP rebuilds its buckets first.", stacklevel=3)
            self._expect = None

    # ---- checkpoints ----

    #: configuration that must match between a saved and a restoring state (the hook's bits depend on each)
    CONFIG_FIELDS = ("world_size", "bits", "block_size", "codebook", "scheme", "error_feedback", "warmup_steps",
                     "min_bucket_numel", "rounding")
    SAVED_BEFORE = SAVED_BEFORE
    STATE_DICT_VERSION = 1

    def _config(self) -> dict:
        _, world_size = self.world()
        return {"world_size": world_size, "bits": self.bits, "block_size": self.block_size,
                "codebook": self.codebook, "scheme": self.scheme_for(world_size),
                "error_feedback": self.error_feedback, "warmup_steps": self.warmup_steps,
                "min_bucket_numel": self.min_bucket_numel, "rounding": self.rounding}

    def state_dict(self, module: torch.nn.Module | None = None) -> dict:
        """Everything the hook's future output depends on, in a layout-independent form (module docstring).

        ``module``: the model (or its DDP wrapper) whose parameter names key the residuals; needed when error
        feedback holds residuals, and to record the bucket layout that a resumed run is checked against.
        Call it between steps (after ``optimizer.step()``), on every rank when error feedback is on.
        """
        if not dist.is_initialized():
            raise RuntimeError("TNQState.state_dict: torch.distributed is not initialized (the world size is part "
                               "of the state)")
        if self._layout:
            raise RuntimeError(f"TNQState.state_dict: called in the middle of a step ({len(self._layout)} buckets "
                               "of the current step done); call it between steps")
        rank, _ = self.world()
        names = _param_names(module) if module is not None else {}
        residuals = {}
        pieces = dict(self._pool)
        for r in self._residuals.values():
            numels = [p.numel() for p in r.params]
            if sum(numels) != r.value.numel():
                raise RuntimeError(f"TNQState.state_dict: a residual of {r.value.numel()} elements does not match "
                                   f"its bucket's {len(r.params)} parameters; it cannot be saved per parameter")
            for p, piece in zip(r.params, split_residual(r.value, numels)):
                pieces[id(p)] = piece
        if pieces and module is None:
            raise ValueError("TNQState.state_dict: module=None, but error feedback holds residuals for "
                             f"{len(pieces)} parameters; pass the model so they can be saved by parameter name")
        for pid, value in pieces.items():
            if pid not in names:
                raise ValueError(f"TNQState.state_dict: module has no parameter holding a residual of "
                                 f"{value.numel()} elements; pass the model that DDP wraps")
            residuals[names[pid]] = value.detach().clone()
        layout = None
        if module is not None and self.last_bucket_params:
            layout = [(i, tuple(names.get(id(p), "?") for p in ps))
                      for (i, _), ps in zip(self.last_bucket_layout, self.last_bucket_params)]
        return {"version": self.STATE_DICT_VERSION, **self._config(), "rank": rank, "seed": self.seed,
                "step": self.step, "bytes_sent": self.bytes_sent, "bytes_fp32": self.bytes_fp32,
                "last_bytes_sent": self.last_bytes_sent, "last_bytes_fp32": self.last_bytes_fp32,
                "last_bucket_layout": list(self.last_bucket_layout), "bucket_names": layout,
                "residuals": residuals}

    def load_state_dict(self, state_dict: dict, module: torch.nn.Module | None = None) -> None:
        """Restore a :meth:`state_dict` taken on this rank with the same configuration (else ValueError naming
        the field). ``module``: the model whose parameter names key the residuals (required if any are saved)."""
        if not isinstance(state_dict, dict) or state_dict.get("version") != self.STATE_DICT_VERSION:
            got = state_dict.get("version") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"TNQState.load_state_dict: version must be {self.STATE_DICT_VERSION}, got {got!r}")
        if not dist.is_initialized():
            raise RuntimeError("TNQState.load_state_dict: torch.distributed is not initialized (the saved world "
                               "size must be checked against the process group)")
        mine = self._config()
        for field in self.CONFIG_FIELDS:
            saved = state_dict.get(field, self.SAVED_BEFORE.get(field))
            if saved != mine[field]:
                raise ValueError(f"TNQState.load_state_dict: {field} of the saved state is "
                                 f"{saved!r}, this state has {mine[field]!r}; construct the state "
                                 f"with the saved configuration (TNQState.from_state_dict does)")
        rank, _ = self.world()
        residuals = state_dict.get("residuals") or {}
        if residuals and state_dict.get("rank") != rank:
            raise ValueError(f"TNQState.load_state_dict: rank of the saved state is {state_dict.get('rank')!r}, "
                             f"this process is rank {rank}; error-feedback residuals are per rank")
        seed = state_dict.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"TNQState.load_state_dict: seed must be an int, got {seed!r}")
        params = dict(_named_params(module)) if module is not None else {}
        if residuals and module is None:
            raise ValueError(f"TNQState.load_state_dict: the state holds residuals for {len(residuals)} "
                             "parameters; pass module= (the model they were saved from) to place them")
        pool = {}
        for name, value in residuals.items():
            p = params.get(name)
            if p is None:
                raise ValueError(f"TNQState.load_state_dict: residual for parameter {name!r}, which module has not")
            if value.numel() != p.numel():
                raise ValueError(f"TNQState.load_state_dict: residual for {name!r} has {value.numel()} elements, "
                                 f"the parameter has {p.numel()}")
            pool[id(p)] = value.detach().to(device=p.device, dtype=torch.float32).reshape(-1).clone()
        self.seed = seed
        self.step = _check_int("step", state_dict.get("step"))
        for k in ("bytes_sent", "bytes_fp32", "last_bytes_sent", "last_bytes_fp32"):
            setattr(self, k, _check_int(k, state_dict.get(k)))
        self.last_bucket_layout = [tuple(x) for x in state_dict.get("last_bucket_layout") or []]
        self.last_bucket_params = []
        self._residuals, self._pool, self._fresh = {}, pool, set()
        self._layout, self._layout_params, self._step_sent, self._step_fp32 = [], [], 0, 0
        self._names = {id(p): n for n, p in params.items()}
        layout = state_dict.get("bucket_names")
        # a state saved after DDP's first step holds its initial one-bucket layout, which no later step repeats
        self._expect = ({i: tuple(ns) for i, ns in layout} if layout and module is not None and self.step >= 2
                        else None)

    @classmethod
    def from_state_dict(cls, state_dict: dict, module: torch.nn.Module | None = None, process_group=None,
                        backend: str | None = None) -> "TNQState":
        """A state built with the saved configuration, then restored (the seed comes from ``state_dict``)."""
        if not isinstance(state_dict, dict):
            raise ValueError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("codebook") is None:
            raise ValueError("state_dict has no codebook: not a TNQState.state_dict()")
        state = cls(process_group, bits=state_dict.get("bits"), block_size=state_dict.get("block_size"),
                    codebook=state_dict.get("codebook"), scheme=state_dict.get("scheme"),
                    seed=state_dict.get("seed"), error_feedback=state_dict.get("error_feedback"),
                    warmup_steps=state_dict.get("warmup_steps"),
                    min_bucket_numel=state_dict.get("min_bucket_numel"), backend=backend,
                    rounding=state_dict.get("rounding", cls.SAVED_BEFORE["rounding"]))
        state.load_state_dict(state_dict, module)
        return state

    @contextlib.contextmanager
    def passthrough(self):
        """Inside: the hook returns each bucket unchanged, communicates nothing and leaves the state alone.

        For the one backward pass that makes a fresh DDP rebuild its buckets after a restore (module docstring);
        every rank must run it, and the gradients it leaves are local: zero them before training.
        """
        prev, self._passthrough = self._passthrough, True
        try:
            yield self
        finally:
            self._passthrough = prev


def _unwrap(module):
    # names are taken from the innermost model, so a state saved through DDP or torch.compile loads into the bare
    # model and back (a compiled module's names carry an "_orig_mod." prefix)
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    return getattr(module, "_orig_mod", module)


def _named_params(module):
    return list(_unwrap(module).named_parameters())


def _param_names(module) -> dict:
    return {id(p): n for n, p in _named_params(module)}


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _ring_allreduce_bytes(nbytes: int, world_size: int) -> int:
    return 2 * (world_size - 1) * nbytes // world_size


def _allreduce(state: TNQState, buf: torch.Tensor, world_size: int, corrected: torch.Tensor | None):
    # divide first, like torch's allreduce_hook: a sum of W fp16 gradients can overflow where their average does not
    src = buf if corrected is None else corrected.to(buf.dtype)
    out = torch.div(src, world_size)
    fut = dist.all_reduce(out, group=state.process_group, async_op=True).get_future()
    return fut.then(lambda _: out), _ring_allreduce_bytes(out.numel() * out.element_size(), world_size)


def _allgather(state: TNQState, x: torch.Tensor, dtype, rank: int, world_size: int, index: int, out: torch.Tensor):
    """x: the (corrected) bucket, fp32/fp16/bf16 [n]; out: the bucket buffer, which receives the average.
    Returns (future of the average, bytes sent, own payload)."""
    n = x.numel()
    payload = api.compress(x, state.bits, state.block_size, state.codebook,
                           derive_seed(state.seed, rank, state.step, index), backend=state.backend,
                           clients=world_size, rounding=state.rounding)
    size = payload.numel()
    gathered = torch.empty(world_size * size, dtype=torch.uint8, device=x.device)
    work = _all_gather_flat(gathered, payload, group=state.process_group, async_op=True)
    weights = [1.0 / world_size] * world_size

    def decode(_):  # on gloo the future's value is a list: read the tensor allocated above
        # decoded straight into the bucket: no fresh n-element tensor (and its page faults) per step
        return api.decompress_sum(gathered.view(world_size, size), weights, backend=state.backend, out=out)

    own = [(payload, 0, n)]
    return work.get_future().then(decode), (world_size - 1) * size, own


def chunk_size(n: int, world_size: int) -> int:
    """two_phase chunk length: ceil(n/W) rounded up to 32 (whole code groups); chunk j = [j·chunk, (j+1)·chunk) ∩ [0, n)."""
    return (-(-n // world_size) + 31) // 32 * 32


def _two_phase(state: TNQState, x: torch.Tensor, dtype, rank: int, world_size: int, index: int,
               out: torch.Tensor):
    n, W = x.numel(), world_size
    chunk = chunk_size(n, W)
    bounds = [(min(j * chunk, n), min((j + 1) * chunk, n)) for j in range(W)]
    # every slot is padded to the largest chunk's payload so both collectives move equal-sized pieces
    slot = api.payload_bytes(chunk, state.bits, state.block_size)
    sizes = [api.payload_bytes(hi - lo, state.bits, state.block_size) for lo, hi in bounds]
    send = torch.zeros(W * slot, dtype=torch.uint8, device=x.device)
    own = []
    for j, (lo, hi) in enumerate(bounds):
        p = api.compress(x[lo:hi], state.bits, state.block_size, state.codebook,
                         derive_seed(state.seed, rank, state.step, index, 1, j), backend=state.backend,
                         clients=W, rounding=state.rounding)
        send[j * slot: j * slot + sizes[j]].copy_(p)
        own.append((p, lo, hi))
    recv = torch.empty_like(send)
    # phase 1 is waited for here, not in a callback, so phase 2 is issued in the same order on every rank
    dist.all_to_all_single(recv, send, group=state.process_group, async_op=True).wait()

    lo, hi = bounds[rank]
    parts = [recv[i * slot: i * slot + sizes[rank]] for i in range(W)]
    shard = api.decompress_sum(parts, [1.0 / W] * W, [hi - lo], torch.float32, backend=state.backend)
    # the reduced shard is sent once and decoded alone (no averaging after it): one client
    mine = api.compress(shard, state.bits, state.block_size, state.codebook,
                        derive_seed(state.seed, rank, state.step, index, 2), backend=state.backend, clients=1,
                        rounding=state.rounding)
    shard_slot = torch.zeros(slot, dtype=torch.uint8, device=x.device)
    shard_slot[: mine.numel()].copy_(mine)
    gathered = torch.empty(W * slot, dtype=torch.uint8, device=x.device)
    work = _all_gather_flat(gathered, shard_slot, group=state.process_group, async_op=True)

    def decode(_):
        for j, (a, b) in enumerate(bounds):
            if b > a:
                api.decompress(gathered[j * slot: j * slot + sizes[j]], backend=state.backend, out=out[a:b])
        return out

    return work.get_future().then(decode), 2 * (W - 1) * slot, own


def tnq_hook(state: TNQState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: returns a Future of the bucket averaged over the ranks, same shape and dtype.

    Register with ``ddp_model.register_comm_hook(state, tnq_hook)``; ``state`` is a :class:`TNQState`.
    """
    buf = bucket.buffer()
    index, n, is_last = bucket.index(), buf.numel(), bucket.is_last()
    rank, W = state.world()
    if buf.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"tnq_hook: bucket dtype must be float32, float16 or bfloat16, got {buf.dtype}")

    if state._passthrough:
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut
    params = tuple(bucket.parameters())
    state._observe(index, params)
    corrected = None
    if state.error_feedback:
        corrected = buf.float() + state._take_residual(index, params, n, buf.device)

    if state.step < state.warmup_steps or n < state.min_bucket_numel:
        fut, sent = _allreduce(state, buf, W, corrected)
        if state.error_feedback:  # the exact all-reduce transmitted the whole residual
            state._residuals[index] = _Residual(params, torch.zeros(n, dtype=torch.float32, device=buf.device))
            state._fresh.add(index)
        state._account(index, n, sent, W, is_last)
        return fut

    x = buf if corrected is None else corrected
    run = _two_phase if state.scheme_for(W) == "two_phase" else _allgather
    fut, sent, own = run(state, x, buf.dtype, rank, W, index, buf)
    if state.error_feedback:
        decoded = torch.empty(n, dtype=torch.float32, device=buf.device)
        for p, lo, hi in own:
            if hi > lo:
                api.decompress(p, backend=state.backend, out=decoded[lo:hi])
        state._keep_residual(index, params, corrected, decoded)
    state._account(index, n, sent, W, is_last)
    return fut
