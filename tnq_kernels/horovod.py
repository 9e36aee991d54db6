"""Horovod integration: a Compressor-compatible TNQ codec and a DistributedOptimizer that all-gathers payloads.

    import horovod.torch as hvd, tnq_kernels.horovod as tnq_hvd
    optimizer = tnq_hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())   # was hvd.…

Why the wrapper exists: ``hvd.DistributedOptimizer(compression=C)`` runs ``C.compress`` and then *all-reduces*
whatever it returns. That is right for a dtype cast (fp16) but wrong for a TNQ payload: element-wise sums of uint8
payload bytes add headers, fp32 scale bytes and bit-plane words as small integers (with uint8 wrap-around), which
decodes to garbage or is rejected by the header check. Packed codes must be moved unchanged and decoded before they
are summed, so this wrapper sends each gradient's payload with ``hvd.allgather`` and averages with
``decompress_sum`` — the paper's aggregation, same as ``tnq_kernels.ddp``'s ``allgather`` scheme. Do not pass
:class:`TNQCompressor` to ``hvd.DistributedOptimizer`` or ``hvd.allreduce``.

Seeds: the payload of rank r for parameter index i (in ``named_parameters``/param_groups order) at optimizer step t
uses ``derive_seed(seed, r, t, i)``.

Error feedback (``DistributedOptimizer(..., error_feedback=True)``): each rank keeps one fp32 residual per parameter
and compresses g + e, as tnq_kernels.ddp does per bucket; with a clipping codebook it warns (tnq_kernels.feedback).

Every Horovod code path that takes a ``compression=`` (``hvd.DistributedOptimizer``, ``hvd.allreduce``, grouped and
async variants) all-reduces the compressed tensor, so :meth:`TNQCompressor.compress` refuses to be called from inside
the ``horovod`` package, with an error saying why, before anything is sent.

Horovod is optional: this module imports without it, and :func:`DistributedOptimizer` raises ImportError when it is
missing. Horovod 0.28.1 as released does not build against torch 2.13 (its PyTorch plugin compiles with C++14);
``make horovod`` builds it with a two-line C++17 patch (scripts/build_horovod.sh).
``hvd=`` accepts any module-like object with Horovod's ``size``, ``rank``, ``allgather_async``, ``synchronize``.
"""
from __future__ import annotations

import sys

import torch

from . import api
from . import checks
from . import codebooks as cb
from . import format as fmt
from .feedback import check_error_feedback, default_codebook, feedback_residual
from .rng import derive_seed


def _import_horovod():
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise ImportError(f"tnq_kernels.horovod needs Horovod (`pip install horovod` built with PyTorch support): {e}."
                          " Horovod 0.28.1 does not build against torch 2.13 as released (its plugin compiles with "
                          "C++14): `make horovod` builds it patched; tnq_kernels.ddp is the torch.distributed "
                          "alternative") from e
    return hvd


class TNQCompressor:
    """Horovod ``Compressor`` interface: ``compress(tensor) -> (payload, ctx)``, ``decompress(payload, ctx)``.

    ``payload`` is the 1-D uint8 TNQ payload of ``tensor`` (fp32/fp16/bf16, any shape); ``ctx`` is (shape, dtype).
    Use it with allgather/broadcast or with :func:`DistributedOptimizer`, never with allreduce (module docstring).
    Without an explicit ``seed=``, call k of ``compress`` uses ``derive_seed(self.seed, self.rank, k)``.
    ``rounding``: "stochastic" (default) or "nearest", passed to every compress (api.compress).
    """

    def __init__(self, bits: int = api.DEFAULT_BITS, block_size: int = api.DEFAULT_BLOCK_SIZE,
                 codebook: str | int = api.DEFAULT_CODEBOOK, seed: int = 0, rank: int = 0, backend: str | None = None,
                 clients: int | None = None, rounding: str = api.DEFAULT_ROUNDING):
        self.bits = cb.check_bits(bits)
        self.block_size = fmt.check_block_size(block_size)
        self.codebook = cb.codebook_name(codebook, clients)  # "rtnq" stays the family, sized per call
        #: payloads the receiver averages (sizes codebook="rtnq"); DistributedOptimizer passes its world size
        self.clients = clients
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed, self.rank, self.backend = seed, rank, backend
        checks.rounding_id(rounding)
        self.rounding = rounding
        self._calls = 0

    def compress(self, tensor: torch.Tensor, seed: int | None = None, clients: int | None = None):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "horovod" or caller.startswith("horovod."):
            raise RuntimeError(
                f"TNQCompressor.compress called from {caller}: Horovod passes compressed tensors to allreduce, which "
                "would add the packed payload bytes of all ranks (headers, scales and bit-planes as small integers) "
                "into garbage. Use tnq_kernels.horovod.DistributedOptimizer (it all-gathers the payloads and "
                "decodes before averaging) instead of hvd.DistributedOptimizer/hvd.allreduce(compression=...)")
        if seed is None:
            seed = derive_seed(self.seed, self.rank, self._calls)
            self._calls += 1
        payload = api.compress(tensor, self.bits, self.block_size, self.codebook, seed, backend=self.backend,
                               clients=self.clients if clients is None else clients, rounding=self.rounding)
        return payload, (tuple(tensor.shape), tensor.dtype)

    def decompress(self, tensor: torch.Tensor, ctx) -> torch.Tensor:
        shape, dtype = ctx
        return api.decompress(tensor, shape, dtype, backend=self.backend)

    def decompress_mean(self, gathered: torch.Tensor, ctx, world_size: int, average: bool = True,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode an all-gather of ``world_size`` equal-sized payloads (uint8 [W·P]) to their mean (or sum); into
        ``out`` (e.g. the existing .grad, contiguous, of the gradient's shape and dtype) when given."""
        shape, dtype = ctx
        w = 1.0 / world_size if average else 1.0
        if out is not None:
            return api.decompress_sum(gathered.view(world_size, -1), [w] * world_size, backend=self.backend, out=out)
        return api.decompress_sum(gathered.view(world_size, -1), [w] * world_size, shape, dtype,
                                  backend=self.backend)


class _Methods:
    """Methods copied into a subclass of the wrapped optimizer's class (so isinstance and LR schedulers work)."""

    def __init__(self, params, named_parameters, compression, backward_passes_per_step, average, sparse_as_dense,
                 hvd, process_set, error_feedback):
        super(self.__class__, self).__init__(params)
        self._hvd, self._process_set = hvd, process_set
        self._error_feedback = error_feedback
        self._residuals = {}  # id(p) -> fp32 residual of this rank (error feedback)
        self._sparse_as_dense = sparse_as_dense
        self._compression = compression
        self._bpps = backward_passes_per_step
        self._average = average
        self._tnq_step = 0
        all_params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        names = {}
        if named_parameters is not None:
            named_parameters = list(named_parameters)
            names = {id(p): n for n, p in named_parameters}
            missing = [i for i, p in enumerate(all_params) if id(p) not in names]
            if missing:
                raise ValueError(f"named_parameters must name every parameter of the optimizer; "
                                 f"{len(missing)} are missing (first: param_groups index {missing[0]})")
        self._params = all_params
        self._index = {id(p): i for i, p in enumerate(all_params)}
        self._names = {id(p): names.get(id(p), f"param.{i}") for i, p in enumerate(all_params)}
        self._passes = {id(p): 0 for p in all_params}
        self._pending = {}  # id(p) -> (handle, ctx)
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in all_params]

    def _world(self):
        ps = self._process_set
        if ps is not None and hasattr(ps, "size"):
            return ps.rank(), ps.size()
        return self._hvd.rank(), self._hvd.size()

    def _grad_ready(self, p):
        self._passes[id(p)] += 1
        if self._passes[id(p)] >= self._bpps:
            self._launch(p)

    def _launch(self, p):
        if id(p) in self._pending:
            raise RuntimeError(f"gradient of {self._names[id(p)]} computed twice before step(); raise "
                               f"backward_passes_per_step (now {self._bpps}) or call synchronize()")
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if grad.is_sparse and self._sparse_as_dense:
            grad = grad.to_dense()
        elif grad.is_sparse:
            raise ValueError(f"sparse gradient for {self._names[id(p)]}: pass sparse_as_dense=True "
                             f"(packed codes need a dense tensor)")
        rank, world = self._world()
        shape_dtype = (tuple(grad.shape), grad.dtype)
        if self._error_feedback:
            res = self._residuals.get(id(p))
            grad = grad.float() if res is None else grad.float() + res
        payload, ctx = self._compression.compress(
            grad, seed=derive_seed(self._compression.seed, rank, self._tnq_step, self._index[id(p)]),
            clients=world)
        if self._error_feedback:
            self._residuals[id(p)] = feedback_residual(grad, self._compression.decompress(payload, ctx))
            ctx = shape_dtype  # the mean is decoded in the gradient's own dtype
        kw = {} if self._process_set is None else {"process_set": self._process_set}
        handle = self._hvd.allgather_async(payload, name=f"tnq.{self._names[id(p)]}", **kw)
        self._pending[id(p)] = (handle, ctx)

    def synchronize(self):
        """Wait for every gradient's all-gather and replace each .grad with the decoded mean."""
        for p in self._params:  # every rank must submit every name, also for parameters without a gradient
            if id(p) not in self._pending:
                self._launch(p)
        _, world = self._world()
        for p in self._params:
            handle, ctx = self._pending.pop(id(p))
            gathered = self._hvd.synchronize(handle)
            g = p.grad
            if g is not None and g.is_contiguous() and (tuple(g.shape), g.dtype) == tuple(ctx):
                self._compression.decompress_mean(gathered, ctx, world, self._average, out=g)
            else:
                mean = self._compression.decompress_mean(gathered, ctx, world, self._average)
                if g is None:
                    p.grad = mean
                else:
                    g.copy_(mean)
            self._passes[id(p)] = 0
        self._tnq_step += 1

    def step(self, closure=None):
        self.synchronize()
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none: bool = True):
        if self._pending:
            raise RuntimeError("zero_grad() called with all-gathers still in flight; call step() or synchronize() "
                               "first")
        return super(self.__class__, self).zero_grad(set_to_none=set_to_none)


def DistributedOptimizer(optimizer, named_parameters=None, compression=None, backward_passes_per_step=1, op=None,
                         gradient_predivide_factor=1.0, num_groups=0, groups=None, sparse_as_dense=False,
                         process_set=None, *, error_feedback=False, rounding=None, hvd=None):
    """hvd.DistributedOptimizer's signature, moving TNQ payloads with hvd.allgather and averaging after decoding.

    ``compression``: a :class:`TNQCompressor` (default: 3 bits, block 2048, seed 0, codebook "rtnq", or "qsgd"
    with ``error_feedback``: tnq_kernels.feedback.default_codebook). ``op``: hvd.Average
    (default) or hvd.Sum; Adasum is not supported. ``gradient_predivide_factor``, ``num_groups`` and ``groups`` are
    accepted for compatibility and have no effect: the decode-sum divides each term in fp32 before adding (so fp16
    cannot overflow), and Horovod's tensor fusion already batches the all-gathers. ``error_feedback``: each rank
    adds its residual e to the gradient before compressing and keeps e ← (g + e) − decode(own payload) in fp32, per
    parameter (tnq_kernels.feedback; warns for a clipping codebook). ``rounding``: "stochastic" or "nearest" for
    the default compressor; with ``compression=`` given, None (its own) or the same value. ``hvd``: the Horovod
    module (default: ``import horovod.torch``); tests inject a stand-in.
    """
    hvd = hvd if hvd is not None else _import_horovod()
    if compression is None:
        compression = TNQCompressor(rank=hvd.rank(), codebook=default_codebook(None, bool(error_feedback)),
                                    rounding=api.DEFAULT_ROUNDING if rounding is None else rounding)
    if not isinstance(compression, TNQCompressor):
        raise ValueError(f"compression must be a tnq_kernels.horovod.TNQCompressor, got {compression!r} "
                         "(for other compressors use hvd.DistributedOptimizer itself)")
    if rounding is not None and rounding != compression.rounding:
        raise ValueError(f"rounding={rounding!r} contradicts compression.rounding={compression.rounding!r}; pass "
                         "one of them (TNQCompressor(..., rounding=...) or rounding= with the default compressor)")
    if isinstance(backward_passes_per_step, bool) or not isinstance(backward_passes_per_step, int) \
            or backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be an int >= 1, got {backward_passes_per_step!r}")
    check_error_feedback(compression.codebook, compression.bits, bool(error_feedback),
                         where="tnq_kernels.horovod.DistributedOptimizer")
    average_op, sum_op = getattr(hvd, "Average", "Average"), getattr(hvd, "Sum", "Sum")
    if op is not None and op not in (average_op, sum_op):
        raise ValueError(f"op must be hvd.Average or hvd.Sum (payloads are decoded, then averaged or summed), "
                         f"got {op!r}")
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               {k: v for k, v in vars(_Methods).items() if k not in ("__dict__", "__weakref__")})
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step,
               op is None or op == average_op, bool(sparse_as_dense), hvd, process_set, bool(error_feedback))
