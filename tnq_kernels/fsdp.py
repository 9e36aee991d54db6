"""FSDP2 (``fully_shard``) integration: a compressed gradient reduce-scatter (docs/integrations.md).

    model = ...; [fully_shard(layer) for layer in model.layers]; fully_shard(model)
    state = tnq_kernels.fsdp.compress_reduce_scatter(model, bits=3)        # after fully_shard, on every rank
    # train as usual; state.stats() reports the bytes; torch.save(state.state_dict(), f"tnq.rank{rank}.pt")

FSDP2 reduce-scatters each module's gradients as one flat buffer ``input [W·chunk]`` (its reduce dtype: fp32, bf16 or
fp16; every parameter padded to a multiple of W along dim 0) into ``output [chunk]``, rank r's shard. This module
replaces that collective (``FSDPModule.set_custom_reduce_scatter``) on every FSDP module of a model:

**flat** (``node_size=None``)  rank r compresses the W rows of ``input.view(W, chunk)``, row j for rank j (codebook
    member for W clients), exchanges them in one ``all_to_all_single``, and decodes the W payloads it receives with
    ``decompress_sum(weights, out=output)`` (fp32 accumulation, one pass). Each gradient is quantized once; each rank
    sends (W−1)·P(chunk) bytes, P(n) = the payload size of n elements (≈ b/32 of the fp32 bytes).
**hierarchical** (``node_size=k``)  ranks r = a·k + l form nodes of k consecutive ranks (a = node, l = local index).
    Inside a node, an uncompressed all-to-all sends each local rank l the rows destined for the ranks (b, l) of every
    node b; it sums the k node members' rows in fp32, in local-rank order. Across nodes, the n = W/k ranks with the
    same local index exchange those node sums compressed (codebook member for n clients) and decode them into
    ``output``. Cross-node bytes per rank: (n−1)·P(chunk), against (W−k)·P(chunk) for the flat mode: k times fewer.
    Gradients are still quantized once; the node link carries (k−1)·n·chunk elements of the reduce dtype.
    Set k to the number of ranks per node, e.g. ``node_size=int(os.environ["LOCAL_WORLD_SIZE"])`` under torchrun,
    with ranks numbered node by node (torchrun's default).

Ops: FSDP2 passes AVG (its default), SUM (fp16 reduce dtype, or ``force_sum_reduction_for_comms``) or
PREMUL_SUM(f) (``set_gradient_divide_factor``); they become decode weights 1/W, 1 and f. Any other op (MAX, MIN,
PRODUCT, bitwise) raises ValueError. The call is synchronous (FSDP2 calls it so, on its reduce-scatter stream).

Seeds (docs/RNG.md): the row that rank r sends to rank d, in the t-th reduce-scatter of module m (its index in
``model.named_modules()`` order among the FSDP modules), is compressed with ``derive_seed(seed, r, t, m, d)``.
:func:`simulate` runs the same compressed reduce-scatter in one process, from every rank's input, and gets the same
bits as the ranks.

Plain reduce-scatter (FSDP's own ``reduce_scatter_single`` with its op) replaces compression during the first
``warmup_steps`` calls of each module, and for modules whose flat input has fewer than ``min_numel`` elements.

Error feedback (``error_feedback=True``): each rank adds its residual to the rows it compresses and keeps
e ← (rows + e) − decode(own payloads) in fp32. With a clipping codebook (``tnq``, ``tqsgd``, ``rtnq``) it warns
(``tnq_kernels.feedback.FeedbackWarning``, as the DDP hook and the Horovod wrapper do): measured to degrade training;
with no codebook named, feedback uses ``qsgd`` (``tnq_kernels.feedback.default_codebook``). Memory: one fp32 residual per FSDP module per rank, of W·chunk
elements in the flat mode (the module's whole padded *unsharded* gradient: FSDP's sharding saves none of it) and
of W·chunk/k in the hierarchical mode. During plain steps the residual is sent exactly and reset to zero.

Not supported, refused by :func:`compress_reduce_scatter` with a ValueError that names the module: HSDP (a mesh
with a replicate dimension: FSDP2 all-reduces across replicas itself, after the reduce-scatter, and that all-reduce
cannot be replaced; use a 1-D mesh with ``node_size`` instead), modules with several parameter groups
(``shard_placement_fn`` with per-parameter meshes: FSDP2 refuses a custom reduce-scatter there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import api
from . import checks
from . import codebooks as cb
from . import format as fmt
from .ddp import SAVED_BEFORE, _check_int
from .feedback import check_error_feedback, default_codebook, feedback_residual
from .rng import derive_seed

try:  # torch >= 2.9; import must not fail on an older torch (the call that needs it says so)
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter as _ReduceScatterBase
    from torch.distributed.fsdp._fully_shard._fsdp_common import DDPMeshInfo
except ImportError:  # pragma: no cover  (every supported torch has FSDP2)
    FSDPModule = DDPMeshInfo = None
    _ReduceScatterBase = object

#: as the DDP hook's min_bucket_numel: below 1024 elements a reduce-scatter is latency-bound
DEFAULT_MIN_NUMEL = 1024
_REDUCE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Config:
    """What every rank must agree on (the bits of the result depend on each field)."""
    bits: int = api.DEFAULT_BITS
    block_size: int = api.DEFAULT_BLOCK_SIZE
    codebook: str = api.DEFAULT_CODEBOOK
    node_size: int = 1  # 1: the flat mode
    error_feedback: bool = False
    warmup_steps: int = 0
    min_numel: int = DEFAULT_MIN_NUMEL
    rounding: str = api.DEFAULT_ROUNDING

    @classmethod
    def checked(cls, bits, block_size, codebook, node_size, error_feedback, warmup_steps, min_numel,
                rounding=api.DEFAULT_ROUNDING) -> "Config":
        if node_size is None:
            node_size = 1
        checks.rounding_id(rounding)
        return cls(bits=cb.check_bits(bits), block_size=fmt.check_block_size(block_size),
                   codebook=cb.codebook_name(codebook), node_size=_check_int("node_size", node_size, 1),
                   error_feedback=bool(error_feedback), warmup_steps=_check_int("warmup_steps", warmup_steps),
                   min_numel=_check_int("min_numel", min_numel), rounding=rounding)


def op_weight(op, world_size: int) -> float:
    """The weight each rank's input gets in the sum: AVG → 1/W, SUM → 1, PREMUL_SUM(f) → f."""
    kind = getattr(op, "op", op)  # PREMUL_SUM(f) is a ReduceOp object holding (op, factor)
    if kind == dist.ReduceOp.AVG:
        return 1.0 / world_size
    if kind == dist.ReduceOp.SUM:
        return 1.0
    if kind == dist.ReduceOp.PREMUL_SUM:
        f = op.factor
        return float(f.item() if isinstance(f, torch.Tensor) else f)
    raise ValueError(f"op must be ReduceOp.AVG, SUM or PREMUL_SUM (what FSDP2 passes to a reduce-scatter), got "
                     f"{op!r}: a compressed reduce-scatter decodes a weighted sum and cannot take a max, min, "
                     "product or bitwise op")


def _encode(cfg: Config, rows: torch.Tensor, seeds: list[int], clients: int, backend) -> torch.Tensor:
    """rows [m, chunk] → payloads uint8 [m, slot], row i with seeds[i]."""
    m, chunk = rows.shape
    slot = fmt.payload_bytes(chunk, cfg.bits, cfg.block_size)
    out = torch.empty(m, slot, dtype=torch.uint8, device=rows.device)
    for i in range(m):
        out[i].copy_(api.compress(rows[i], cfg.bits, cfg.block_size, cfg.codebook, seeds[i], backend=backend,
                                  clients=clients, rounding=cfg.rounding))
    return out


def _decode_own(sent: torch.Tensor, chunk: int, backend) -> torch.Tensor:
    """What the receivers of this rank's payloads decode: fp32 [m, chunk] (error feedback's reference)."""
    out = torch.empty(sent.shape[0], chunk, dtype=torch.float32, device=sent.device)
    for i in range(sent.shape[0]):
        api.decompress(sent[i], backend=backend, out=out[i])
    return out


def _node_rows(x: torch.Tensor, node_size: int, local: int) -> torch.Tensor:
    """Rows of x [W, chunk] destined for the ranks with local index ``local``: [W/k, chunk], node by node."""
    return x.view(-1, node_size, x.shape[1])[:, local]


def _node_sum(parts) -> torch.Tensor:
    """The fp32 sum of a node's k members' rows (each [W/k, chunk]), in local-rank order."""
    rows = parts[0].float()
    for p in parts[1:]:
        rows = rows + p.float()
    return rows


def _send(cfg: Config, rows: torch.Tensor, seed: int, rank: int, step: int, module: int, backend,
          residual: torch.Tensor | None):
    """Compress the rows this rank sends ([W/k, chunk], row b for rank (b, rank's local index)), with its
    error-feedback residual added when it has one. Returns (payloads uint8 [W/k, slot], the new residual or None)."""
    k, n = cfg.node_size, rows.shape[0]
    if residual is not None:
        rows = rows.float() + residual
    seeds = [derive_seed(seed, rank, step, module, b * k + rank % k) for b in range(n)]
    payloads = _encode(cfg, rows, seeds, n, backend)
    if residual is not None:
        residual = feedback_residual(rows, _decode_own(payloads, rows.shape[1], backend))
    return payloads, residual


def flat_input(grads, world_size: int) -> torch.Tensor:
    """The flat buffer FSDP2 hands a reduce-scatter for a module whose (unsharded) gradients are ``grads``:
    [W·chunk] in the grads' dtype; row j = every gradient's j-th dim-0 chunk (dim 0 padded with zeros to a
    multiple of W), concatenated. FSDP2's own ``torch.ops.fsdp.chunk_cat``."""
    W = world_size
    chunk = sum(-(-g.shape[0] // W) * (g.numel() // max(g.shape[0], 1)) for g in grads)
    out = torch.empty(W, chunk, dtype=grads[0].dtype, device=grads[0].device)
    torch.ops.fsdp.chunk_cat(list(grads), dim=0, num_chunks=W, out=out)
    return out.view(-1)


def split_output(rows: torch.Tensor, shapes, world_size: int) -> list[torch.Tensor]:
    """The inverse of :func:`flat_input` on every rank's output stacked [W, chunk]: the full gradients, unpadded."""
    W, out, off = world_size, [], 0
    for shape in shapes:
        shape = torch.Size(shape)
        rest = shape.numel() // max(shape[0], 1)
        per = -(-shape[0] // W)
        piece = rows[:, off: off + per * rest].reshape(W * per, *shape[1:])[: shape[0]]
        out.append(piece.reshape(shape))
        off += per * rest
    return out


def simulate(inputs, op, cfg: Config, seed: int, step: int, module: int, backend=None,
             residuals=None) -> list[torch.Tensor]:
    """The compressed reduce-scatter of ``inputs`` (every rank's flat input [W·chunk], in rank order), in one process.

    Returns each rank's output [chunk] in the inputs' dtype, bit-identical to what :class:`TNQReduceScatter` writes
    on the ranks for the same (cfg, seed, step, module). ``residuals``: every rank's error-feedback residual (fp32,
    [W/k, chunk]) or None; updated in place like the ranks' own.
    """
    W, k = len(inputs), cfg.node_size
    chunk = inputs[0].numel() // W
    xs = [t.reshape(W, chunk) for t in inputs]
    w = op_weight(op, W)
    # every rank's compressed rows: its own rows (flat) or its node's fp32 sums (hierarchical)
    sent = []
    for r in range(W):
        a, local = divmod(r, k)
        rows = xs[r] if k == 1 else _node_sum([_node_rows(xs[a * k + m], k, local) for m in range(k)])
        payloads, res = _send(cfg, rows, seed, r, step, module, backend,
                              None if residuals is None else residuals[r])
        if residuals is not None:
            residuals[r] = res
        sent.append(payloads)
    outs = []
    for d in range(W):
        b, local = divmod(d, k)
        got = torch.stack([sent[a * k + local][b] for a in range(W // k)])
        out = torch.empty(chunk, dtype=inputs[0].dtype, device=inputs[0].device)
        api.decompress_sum(got, [w] * (W // k), backend=backend, out=out)
        outs.append(out)
    return outs


@dataclass
class _Groups:
    """The process groups of one FSDP shard group: the node's and the cross-node one of this rank."""
    ranks: tuple  # global ranks of the shard group, in group-rank order
    node: object = None
    cross: object = None


class TNQReduceScatter(_ReduceScatterBase):
    """A ``torch.distributed.fsdp.ReduceScatter`` for one FSDP module (installed by :func:`compress_reduce_scatter`).

    ``__call__(output_tensor [chunk], input_tensor [W·chunk], group, op)``: writes rank r's shard of the (weighted)
    sum into ``output_tensor``, in its dtype, and returns None (it runs synchronously).
    """

    def __init__(self, state: "FSDPState", index: int, name: str):
        self.state, self.index, self.name = state, index, name
        self.calls = 0  # reduce-scatters done: the t of the seeds
        self.residual: torch.Tensor | None = None
        self.last_sent = self.last_intra = self.last_fp32 = 0

    def allocate(self, size, *, dtype, device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        st, cfg = self.state, self.state.config
        if input_tensor.dtype not in _REDUCE_DTYPES:
            raise ValueError(f"TNQReduceScatter: input_tensor dtype must be float32, bfloat16 or float16 (FSDP2's "
                             f"reduce dtype), got {input_tensor.dtype}")
        W, rank = group.size(), group.rank()
        n = input_tensor.numel()
        if n != W * output_tensor.numel():
            raise ValueError(f"TNQReduceScatter: input_tensor has {n} elements, output_tensor "
                             f"{output_tensor.numel()}; expected input = world size {W} x output")
        w = op_weight(op, W)
        chunk, k = output_tensor.numel(), cfg.node_size
        groups = st._groups_for(group)
        x = input_tensor.view(W, chunk)
        fp32 = _ring_reduce_scatter_bytes(4 * n, W)
        if self.calls < cfg.warmup_steps or n < cfg.min_numel:
            if self.residual is not None:  # the exact reduce-scatter transmits the whole residual
                rows = _node_rows(x, k, rank % k)
                rows.copy_(rows.float() + self.residual)
                self.residual.zero_()
            dist.reduce_scatter_single(output_tensor, input_tensor, op=op, group=group)
            self._account(_ring_reduce_scatter_bytes(n * input_tensor.element_size(), W), 0, fp32)
            return None
        intra = 0
        if k == 1:
            rows = x
        else:  # inside the node: uncompressed all-to-all, then the node sum in fp32, local-rank order
            send = x.view(-1, k, chunk).transpose(0, 1).contiguous()  # [k, n, chunk]: block l for local rank l
            recv = torch.empty_like(send)
            dist.all_to_all_single(recv, send, group=groups.node)
            rows = _node_sum(list(recv))
            intra = (k - 1) * send[0].numel() * send.element_size()
        if cfg.error_feedback and (self.residual is None or self.residual.shape != rows.shape):
            self.residual = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        payloads, self.residual = _send(cfg, rows, st.seed, rank, self.calls, self.index, st.backend, self.residual)
        recv = torch.empty_like(payloads)
        dist.all_to_all_single(recv, payloads, group=group if k == 1 else groups.cross)
        api.decompress_sum(recv, [w] * (W // k), backend=st.backend, out=output_tensor)
        self._account((W // k - 1) * payloads.shape[1] + intra, intra, fp32)
        return None

    def _account(self, sent: int, intra: int, fp32: int) -> None:
        self.calls += 1
        self.last_sent, self.last_intra, self.last_fp32 = sent, intra, fp32
        st = self.state
        st.bytes_sent += sent
        st.bytes_intra += intra
        st.bytes_fp32 += fp32


def _ring_reduce_scatter_bytes(nbytes: int, world_size: int) -> int:
    """What one rank sends in a ring reduce-scatter of nbytes: (W−1)/W of them."""
    return (world_size - 1) * nbytes // world_size


class FSDPState:
    """Configuration, per-module counters, error-feedback residuals and byte statistics of the compressed
    reduce-scatters installed by :func:`compress_reduce_scatter` (one :class:`TNQReduceScatter` per FSDP module).

    Byte statistics, per rank (what this rank transmits): ``bytes_sent`` (all of it), ``bytes_intra`` (the part
    that stays inside a node, hierarchical mode), ``bytes_fp32`` (what FSDP's ring reduce-scatter of the same
    buffers in fp32 sends: (W−1)/W of 4·W·chunk bytes); ``last_*`` of each module's most recent call, summed.
    """

    #: configuration that must match between a saved and a restoring state
    CONFIG_FIELDS = ("world_size", "bits", "block_size", "codebook", "node_size", "error_feedback", "warmup_steps",
                     "min_numel", "rounding")
    SAVED_BEFORE = SAVED_BEFORE
    STATE_DICT_VERSION = 1

    def __init__(self, config: Config, seed: int, backend: str | None):
        self.config, self.seed, self.backend = config, seed, backend
        self.comms: dict[str, TNQReduceScatter] = {}
        self.bytes_sent = self.bytes_intra = self.bytes_fp32 = 0
        self.world_size: int | None = None
        self._groups: dict[tuple, _Groups] = {}

    # ---- introspection ----

    @property
    def step(self) -> int:
        """Reduce-scatters completed by every module (the step count when each runs once per step)."""
        return min((c.calls for c in self.comms.values()), default=0)

    @property
    def compression_ratio(self) -> float:
        return self.bytes_fp32 / self.bytes_sent if self.bytes_sent else float("inf")

    def stats(self) -> dict:
        c = list(self.comms.values())
        return {"step": self.step, "bytes_sent": self.bytes_sent, "bytes_intra": self.bytes_intra,
                "bytes_inter": self.bytes_sent - self.bytes_intra, "bytes_fp32": self.bytes_fp32,
                "last_bytes_sent": sum(x.last_sent for x in c), "last_bytes_intra": sum(x.last_intra for x in c),
                "last_bytes_fp32": sum(x.last_fp32 for x in c), "compression_ratio": self.compression_ratio,
                "residual_bytes": sum(x.residual.numel() * 4 for x in c if x.residual is not None)}

    # ---- process groups ----

    def _setup_groups(self, group) -> None:
        """Create the node and cross-node groups of an FSDP shard group (collective: every rank, same order)."""
        ranks = tuple(dist.get_process_group_ranks(group))
        if ranks in self._groups:
            return
        W, k = len(ranks), self.config.node_size
        if W % k:
            raise ValueError(f"node_size must divide the FSDP group's size {W}, got {k}")
        if self.world_size not in (None, W):
            raise ValueError(f"compress_reduce_scatter: FSDP modules shard over groups of {self.world_size} and {W} "
                             "ranks; one state serves one shard group size")
        self.world_size = W
        g = _Groups(ranks)
        if k > 1:
            me = ranks.index(dist.get_rank())
            for a in range(W // k):
                pg = dist.new_group(list(ranks[a * k:(a + 1) * k]))
                if me // k == a:
                    g.node = pg
            for local in range(k):
                pg = dist.new_group(list(ranks[local::k]))
                if me % k == local:
                    g.cross = pg
        self._groups[ranks] = g

    def _groups_for(self, group) -> _Groups:
        g = self._groups.get(tuple(dist.get_process_group_ranks(group)))
        if g is None:
            raise RuntimeError("TNQReduceScatter called with a process group it was not installed for; call "
                               "compress_reduce_scatter after fully_shard, on the model FSDP2 trains")
        return g

    # ---- checkpoints ----

    def _config(self) -> dict:
        c = self.config
        return {"world_size": self.world_size, "bits": c.bits, "block_size": c.block_size, "codebook": c.codebook,
                "node_size": c.node_size, "error_feedback": c.error_feedback, "warmup_steps": c.warmup_steps,
                "min_numel": c.min_numel, "rounding": c.rounding}

    def state_dict(self) -> dict:
        """Seed, per-module call counters, byte statistics and (error feedback) this rank's residuals, keyed by
        module name. Residuals differ per rank: every rank saves its own (e.g. ``tnq.rank{r}.pt``)."""
        return {"version": self.STATE_DICT_VERSION, **self._config(), "rank": dist.get_rank(), "seed": self.seed,
                "calls": {n: c.calls for n, c in self.comms.items()},
                "bytes": [self.bytes_sent, self.bytes_intra, self.bytes_fp32],
                "residuals": {n: c.residual.detach().clone() for n, c in self.comms.items()
                              if c.residual is not None}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` of this rank, taken with the same configuration and modules (else
        ValueError naming the field)."""
        if not isinstance(state_dict, dict) or state_dict.get("version") != self.STATE_DICT_VERSION:
            got = state_dict.get("version") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"FSDPState.load_state_dict: version must be {self.STATE_DICT_VERSION}, got {got!r}")
        mine = self._config()
        for field in self.CONFIG_FIELDS:
            saved = state_dict.get(field, self.SAVED_BEFORE.get(field))
            if saved != mine[field]:
                raise ValueError(f"FSDPState.load_state_dict: {field} of the saved state is "
                                 f"{saved!r}, this state has {mine[field]!r}")
        calls = state_dict.get("calls") or {}
        if set(calls) != set(self.comms):
            raise ValueError(f"FSDPState.load_state_dict: the saved state has FSDP modules {sorted(calls)}, this "
                             f"model has {sorted(self.comms)}")
        residuals = state_dict.get("residuals") or {}
        if residuals and state_dict.get("rank") != dist.get_rank():
            raise ValueError(f"FSDPState.load_state_dict: rank of the saved state is {state_dict.get('rank')!r}, "
                             f"this process is rank {dist.get_rank()}; error-feedback residuals are per rank")
        for name, value in residuals.items():
            if name not in self.comms:
                raise ValueError(f"FSDPState.load_state_dict: residual for module {name!r}, which is not here")
        seed = state_dict.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"FSDPState.load_state_dict: seed must be an int, got {seed!r}")
        self.seed = seed
        self.bytes_sent, self.bytes_intra, self.bytes_fp32 = (_check_int("bytes", int(b))
                                                              for b in state_dict.get("bytes", (0, 0, 0)))
        for name, comm in self.comms.items():
            comm.calls = _check_int(f"calls[{name!r}]", calls[name])
            r = residuals.get(name)
            comm.residual = None if r is None else r.detach().to(torch.float32).clone()


def compress_reduce_scatter(model: torch.nn.Module, bits: int = api.DEFAULT_BITS,
                            codebook: str | int | None = None, seed: int = 0,
                            block_size: int = api.DEFAULT_BLOCK_SIZE, node_size: int | None = None,
                            error_feedback: bool = False, warmup_steps: int = 0,
                            min_numel: int = DEFAULT_MIN_NUMEL, backend: str | None = None,
                            rounding: str = api.DEFAULT_ROUNDING) -> FSDPState:
    """Install a :class:`TNQReduceScatter` on every FSDP module of ``model`` (after ``fully_shard``; call it on
    every rank, in the same order: the hierarchical mode creates process groups). Returns the :class:`FSDPState`.

    Args:
        bits, block_size, codebook, backend: as for :func:`tnq_kernels.compress`; ``"rtnq"`` is sized for the
            number of payloads each rank averages (W flat, W/node_size hierarchical). codebook None (default):
            "rtnq", or "qsgd" with ``error_feedback`` (tnq_kernels.feedback.default_codebook).
        seed: base seed; per-(rank, call, module, destination) seeds are derived from it.
        node_size: None (flat) or k, the ranks per node (hierarchical; k must divide the world size).
        error_feedback: keep and re-inject each rank's compression residual (memory: module docstring).
        warmup_steps: the first calls of each module use FSDP's plain reduce-scatter.
        min_numel: modules whose flat gradient has fewer elements use the plain reduce-scatter.
        rounding: "stochastic" (default) or "nearest", passed to every compress (:func:`tnq_kernels.compress`).
    """
    if FSDPModule is None:  # pragma: no cover
        raise RuntimeError("tnq_kernels.fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.9)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if backend is not None and backend not in api.BACKENDS:
        raise ValueError(f"backend must be None or one of {api.BACKENDS}, got {backend!r}")
    cfg = Config.checked(bits, block_size, default_codebook(codebook, bool(error_feedback)), node_size,
                         error_feedback, warmup_steps, min_numel, rounding)
    check_error_feedback(cfg.codebook, cfg.bits, cfg.error_feedback, where="compress_reduce_scatter")
    if not dist.is_initialized():
        raise RuntimeError("compress_reduce_scatter: torch.distributed is not initialized")
    state = FSDPState(cfg, seed, backend)
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, FSDPModule)]
    if not modules:
        raise ValueError("model has no module wrapped by fully_shard; call fully_shard on its layers and on the "
                         "model first, then compress_reduce_scatter(model)")
    to_install = []
    for name, m in modules:
        groups = m._get_fsdp_state()._fsdp_param_groups
        if not groups:
            continue  # a module without parameters of its own reduces nothing
        label = name or "<root>"
        if len(groups) > 1:
            raise ValueError(f"module {label!r} has {len(groups)} FSDP parameter groups (shard_placement_fn with "
                             "per-parameter meshes); FSDP2 takes a custom reduce-scatter only for one group")
        info = groups[0].mesh_info
        if isinstance(info, DDPMeshInfo):
            raise ValueError(f"module {label!r} is sharded on a mesh with a replicate dimension (HSDP): FSDP2 "
                             "all-reduces across replicas itself, after the reduce-scatter, and that all-reduce "
                             "cannot be replaced. Use a 1-D mesh over all ranks with node_size=<ranks per node> "
                             "(hierarchical mode) instead")
        to_install.append((name, m, info.shard_process_group))
    for name, m, group in to_install:
        state._setup_groups(group)
    for index, (name, m, _) in enumerate(to_install):
        comm = TNQReduceScatter(state, index, name)
        m.set_custom_reduce_scatter(comm)
        state.comms[name] = comm
    return state
