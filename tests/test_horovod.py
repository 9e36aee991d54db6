"""tnq_kernels.horovod: the Compressor codec, and the DistributedOptimizer wrapper against a stand-in for Horovod
(two simulated ranks sharing one all-gather hub) and, where Horovod is installed, against Horovod itself.

The ``with_horovod`` tests run in every process of a Horovod job: ``make horovod`` builds Horovod 0.28.1 (patched to
C++17) and runs them with ``horovodrun -np 2`` and ``-np 4`` over gloo; under plain pytest they run as a 1-process job.
"""
import importlib.util
import warnings

import pytest
import torch

import tnq_kernels as tnq
from tnq_kernels import horovod as tnq_hvd
from tnq_kernels import ops

from conftest import DTYPES, SIZES, laplace

BACKEND = "reference" if ops.native_error is not None else None
HAVE_HOROVOD = importlib.util.find_spec("horovod") is not None
NO_HOROVOD = ("Horovod is not installed (0.28.1 as released does not build against torch 2.13: its PyTorch plugin "
              "compiles with C++14); `make horovod` builds it patched and runs these tests with 2 and 4 processes")


def _view_bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


# ---- the Compressor interface ----

@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES + [5000])
def test_compressor_round_trip(bits, dtype, n):
    x = laplace(n, dtype=dtype)
    c = tnq_hvd.TNQCompressor(codebook="tnq", bits=bits, block_size=1024, seed=5, rank=1, backend=BACKEND)
    payload, ctx = c.compress(x)
    assert payload.dtype == torch.uint8 and payload.numel() == tnq.payload_bytes(n, bits, 1024)
    y = c.decompress(payload, ctx)
    assert y.shape == x.shape and y.dtype == dtype
    # call 0 of rank 1 uses derive_seed(seed, rank, 0): the same bits as the public API at that seed
    want = tnq.decompress(tnq.compress(x, bits, 1024, "tnq", tnq.derive_seed(5, 1, 0), backend=BACKEND),
                          x.shape, dtype, backend=BACKEND)
    assert torch.equal(_view_bits(y), _view_bits(want))
    if n >= 4096:  # lossy, with the error budget of docs/format.md (γ̂ ≈ mean|x| = 1 for unit Laplace data)
        mse = float(((y.double() - x.double()) ** 2).mean())
        assert mse <= 1.2 * tnq.tnq_mse_bound(bits), (mse, tnq.tnq_mse_bound(bits))


def test_compressor_non_contiguous_and_shape():
    x = laplace(64 * 33).view(64, 33).t()
    c = tnq_hvd.TNQCompressor(backend=BACKEND)  # the library's default codebook on both sides
    payload, ctx = c.compress(x, seed=9)
    assert ctx == ((33, 64), torch.float32)
    y = c.decompress(payload, ctx)
    want = tnq.decompress(tnq.compress(x.contiguous(), seed=9, backend=BACKEND), (33, 64), torch.float32,
                          backend=BACKEND)
    assert torch.equal(y, want)


def test_compressor_draws_a_new_seed_per_call():
    x = laplace(4096)
    c = tnq_hvd.TNQCompressor(codebook="tnq", backend=BACKEND)
    assert not torch.equal(c.compress(x)[0], c.compress(x)[0])


@pytest.mark.parametrize("kwargs, field", [({"bits": 0}, "bits"), ({"block_size": 33}, "block_size"),
                                           ({"codebook": "int8"}, "codebook"), ({"seed": 1.0}, "seed"),
                                           ({"rounding": "floor"}, "rounding must be one of .*got 'floor'")])
def test_compressor_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tnq_hvd.TNQCompressor(**kwargs)


# ---- the optimizer wrapper, with a stand-in Horovod ----

class Hub:
    """What hvd.allgather does across ranks: concatenate every rank's tensor of the same name, in rank order."""

    def __init__(self, size):
        self.size, self.sent = size, {}


class FakeHvd:
    Average, Sum, Adasum = "Average", "Sum", "Adasum"

    def __init__(self, hub, rank):
        self.hub, self._rank = hub, rank

    def rank(self):
        return self._rank

    def size(self):
        return self.hub.size

    def allgather_async(self, tensor, name=None):
        self.hub.sent.setdefault(name, {})[self._rank] = tensor.clone()
        return name

    def synchronize(self, handle):
        parts = self.hub.sent[handle]
        assert sorted(parts) == list(range(self.hub.size)), f"{handle}: not every rank submitted"
        return torch.cat([parts[r] for r in range(self.hub.size)])


def _net(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3)).to(dtype)


def _backward(model, rank, dtype):
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(16, 12, generator=g).to(dtype)
    model(x).float().pow(2).mean().backward()


@pytest.mark.parametrize("bits", [2, 3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codebook, error_feedback, rounding", [
    ("tnq", False, "stochastic"), ("qsgd", True, "stochastic"), ("qsgd", True, "nearest")])
def test_optimizer_averages_decoded_payloads(bits, dtype, codebook, error_feedback, rounding):
    """Each .grad is decompress_sum of the ranks' payloads, checked against the public API step by step. With
    error_feedback=True rank r compresses g + e (fp32) and keeps e ← (g + e) − decode(own payload) per parameter; the
    mean is decoded in the gradient's dtype."""
    hub, W, steps = Hub(2), 2, 3
    models = [_net(dtype) for _ in range(W)]
    opts = [tnq_hvd.DistributedOptimizer(
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), named_parameters=m.named_parameters(),
        compression=tnq_hvd.TNQCompressor(codebook=codebook, bits=bits, block_size=256, seed=3, backend=BACKEND,
                                          rounding=rounding),
        error_feedback=error_feedback, rounding=rounding, hvd=FakeHvd(hub, r)) for r, m in enumerate(models)]
    assert isinstance(opts[0], torch.optim.SGD)
    res = [[torch.zeros(p.numel()) for p in models[0].parameters()] for _ in range(W)]
    for t in range(steps):
        for r in range(W):
            opts[r].zero_grad()
            _backward(models[r], r, dtype)
        local = [[p.grad.clone() for p in m.parameters()] for m in models]
        for o in opts:
            o.step()
        for i, ps in enumerate(zip(*(m.parameters() for m in models))):
            payloads = []
            for r in range(W):
                x = local[r][i].float() + res[r][i].view(local[r][i].shape) if error_feedback else local[r][i]
                payloads.append(tnq.compress(x, bits, 256, codebook, tnq.derive_seed(3, r, t, i), backend=BACKEND,
                                             rounding=rounding))
                if error_feedback:
                    res[r][i] = (x - tnq.decompress(payloads[-1], x.shape, torch.float32, backend=BACKEND)).reshape(-1)
            want = tnq.decompress_sum(payloads, [0.5, 0.5], ps[0].shape, dtype, backend=BACKEND)
            for r in range(W):
                assert ps[r].grad.dtype == dtype
                assert torch.equal(_view_bits(ps[r].grad), _view_bits(want)), f"step {t} param {i} rank {r}"
        for a, b in zip(*(m.parameters() for m in models)):
            assert torch.equal(a, b), "replicas diverged"
    assert all(float(e.abs().sum()) > 0 for e in res[0]) == error_feedback, "residuals should not vanish"


def test_optimizer_error_feedback_warns_for_a_clipping_codebook():
    from tnq_kernels.feedback import FeedbackWarning
    model = _net(torch.float32)

    def make(codebook, ef):
        return tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), error_feedback=ef,
                                            compression=tnq_hvd.TNQCompressor(codebook=codebook, bits=2),
                                            hvd=FakeHvd(Hub(1), 0))
    with pytest.warns(FeedbackWarning, match="horovod.DistributedOptimizer.*'rtnq'") as rec:
        make("rtnq", True)
    assert rec[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make("qsgd", True)
        make("rtnq", False)


def test_optimizer_backward_passes_per_step():
    hub = Hub(1)
    model = _net(torch.float32)
    opt = tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), backward_passes_per_step=2,
                                       compression=tnq_hvd.TNQCompressor(codebook="tnq", backend=BACKEND), hvd=FakeHvd(hub, 0))
    _backward(model, 0, torch.float32)
    assert not hub.sent, "sent after the first of two backward passes"
    _backward(model, 1, torch.float32)
    assert len(hub.sent) == 4
    with pytest.raises(RuntimeError, match="zero_grad"):
        opt.zero_grad()
    opt.step()
    opt.zero_grad()


def test_optimizer_sum_and_unused_parameter():
    hub = Hub(1)
    model = _net(torch.float32)
    extra = torch.nn.Parameter(torch.ones(5))  # never receives a gradient: still all-gathered (as zeros)
    opt = tnq_hvd.DistributedOptimizer(torch.optim.SGD(list(model.parameters()) + [extra], lr=0.1),
                                       compression=tnq_hvd.TNQCompressor(codebook="tnq", backend=BACKEND), op=FakeHvd.Sum,
                                       hvd=FakeHvd(hub, 0))
    _backward(model, 0, torch.float32)
    opt.step()
    assert "tnq.param.4" in hub.sent and torch.equal(extra.grad, torch.zeros(5))


@pytest.mark.parametrize("kwargs, field", [
    ({"op": "Adasum"}, "op"), ({"backward_passes_per_step": 0}, "backward_passes_per_step"),
    ({"compression": object()}, "compression"),
])
def test_optimizer_rejects_bad_arguments(kwargs, field):
    model = _net(torch.float32)
    with pytest.raises(ValueError, match=field):
        tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), hvd=FakeHvd(Hub(1), 0), **kwargs)


def test_optimizer_rounding_reaches_the_default_compressor():
    model = _net(torch.float32)
    opt = tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), rounding="nearest",
                                       hvd=FakeHvd(Hub(1), 0))
    assert opt._compression.rounding == "nearest"
    x = laplace(3000)
    got, _ = opt._compression.compress(x, seed=4)
    assert torch.equal(got, tnq.compress(x, seed=4, rounding="nearest", backend=opt._compression.backend))
    assert not torch.equal(got, tnq.compress(x, seed=4, backend=opt._compression.backend))
    with pytest.raises(ValueError, match="rounding='stochastic' contradicts compression.rounding='nearest'"):
        tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), rounding="stochastic",
                                     compression=tnq_hvd.TNQCompressor(rounding="nearest"), hvd=FakeHvd(Hub(1), 0))


def test_optimizer_needs_every_parameter_named():
    model = _net(torch.float32)
    with pytest.raises(ValueError, match="named_parameters"):
        tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                     named_parameters=list(model.named_parameters())[:2], hvd=FakeHvd(Hub(1), 0))


@pytest.mark.skipif(HAVE_HOROVOD, reason="Horovod is installed: the missing-Horovod error cannot be observed")
def test_missing_horovod_raises_at_call_not_import():
    model = _net(torch.float32)
    with pytest.raises(ImportError, match="make horovod"):
        tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))


def test_compress_refuses_horovods_allreduce_paths():
    """Horovod calls compression.compress only on its way to an allreduce; the call site's module is horovod.*."""
    c = tnq_hvd.TNQCompressor(codebook="tnq", backend=BACKEND)
    scope = {"__name__": "horovod.torch.optimizer", "c": c, "x": laplace(4096)}
    with pytest.raises(RuntimeError, match="allreduce.*DistributedOptimizer"):
        exec("c.compress(x)", scope)  # noqa: S102  (a call made from a module of that name)
    c.compress(laplace(4096))  # a user's own call is fine


# ---- against Horovod itself ----

@pytest.mark.skipif(not HAVE_HOROVOD, reason=NO_HOROVOD)
def test_with_horovod_single_process():
    hvd = pytest.importorskip("horovod.torch", reason=NO_HOROVOD)
    hvd.init()
    model = _net(torch.float32)
    opt = tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                       named_parameters=model.named_parameters(),
                                       compression=tnq_hvd.TNQCompressor(codebook="tnq", seed=1, backend=BACKEND))
    _backward(model, 0, torch.float32)
    local = [p.grad.clone() for p in model.parameters()]
    opt.step()
    r, W = hvd.rank(), hvd.size()
    for i, (p, g) in enumerate(zip(model.parameters(), local)):
        if W == 1:
            want = tnq.decompress(tnq.compress(g, seed=tnq.derive_seed(1, r, 0, i), backend=BACKEND), g.shape,
                                  g.dtype, backend=BACKEND)
            assert torch.equal(p.grad, want)
        assert torch.isfinite(p.grad).all()


def _hvd():
    hvd = pytest.importorskip("horovod.torch", reason=NO_HOROVOD)
    hvd.init()
    return hvd


def _identical_across_ranks(hvd, t):
    rows = hvd.allgather(t.detach().reshape(1, -1).contiguous(), name="tnq.test.replicas")
    return all(torch.equal(rows[r], rows[0]) for r in range(hvd.size()))


@pytest.mark.skipif(not HAVE_HOROVOD, reason=NO_HOROVOD)
@pytest.mark.parametrize("dtype", DTYPES)
def test_with_horovod_matches_simulation(dtype):
    """Every rank's averaged gradient is, bit for bit, decompress_sum of all ranks' payloads at the derived seeds."""
    hvd = _hvd()
    r, W, bits, steps = hvd.rank(), hvd.size(), 3, 3
    model = _net(dtype)
    opt = tnq_hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), named_parameters=model.named_parameters(),
        compression=tnq_hvd.TNQCompressor(codebook="tnq", bits=bits, block_size=256, seed=3, backend=BACKEND))
    for t in range(steps):
        opt.zero_grad()
        _backward(model, r, dtype)
        local = [p.grad.clone() for p in model.parameters()]
        opt.step()
        for i, (p, g) in enumerate(zip(model.parameters(), local)):
            # gathered as integers: Horovod's CPU ops have no bfloat16
            every = hvd.allgather(_view_bits(g).reshape(1, -1).contiguous(), name=f"tnq.test.grad.{t}.{i}")
            every = every.view(dtype)
            payloads = [tnq.compress(every[k].view(g.shape), bits, 256, "tnq", tnq.derive_seed(3, k, t, i),
                                     backend=BACKEND) for k in range(W)]
            want = tnq.decompress_sum(payloads, [1.0 / W] * W, g.shape, dtype, backend=BACKEND)
            assert torch.equal(_view_bits(p.grad), _view_bits(want)), f"rank {r} step {t} param {i}"
        flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
        assert _identical_across_ranks(hvd, flat), f"replicas diverged at step {t}"


@pytest.mark.skipif(not HAVE_HOROVOD, reason=NO_HOROVOD)
def test_with_horovod_trains():
    hvd = _hvd()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = tnq_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.2),
                                       named_parameters=model.named_parameters(),
                                       compression=tnq_hvd.TNQCompressor(codebook="tnq", bits=3, block_size=256, backend=BACKEND))
    g = torch.Generator().manual_seed(100 + hvd.rank())
    x = torch.randn(64, 16, generator=g)
    y = x @ (torch.randn(16, 4, generator=torch.Generator().manual_seed(7)) / 4)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(hvd.allreduce(loss.detach(), name="tnq.test.loss")))
    assert losses[-1] < 0.5 * losses[0], losses
    assert _identical_across_ranks(hvd, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))


@pytest.mark.skipif(not HAVE_HOROVOD, reason=NO_HOROVOD)
def test_with_horovod_refuses_payload_in_allreduce():
    hvd = _hvd()
    model = _net(torch.float32)
    wrong = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                     named_parameters=model.named_parameters(),
                                     compression=tnq_hvd.TNQCompressor(codebook="tnq", backend=BACKEND))
    if hvd.size() > 1:  # in a 1-process job hvd.DistributedOptimizer registers no hooks and reduces nothing
        with pytest.raises(RuntimeError, match="tnq_kernels.horovod.DistributedOptimizer"):
            _backward(model, hvd.rank(), torch.float32)
    with pytest.raises(RuntimeError, match="allreduce"):
        hvd.allreduce(laplace(1024), compression=tnq_hvd.TNQCompressor(codebook="tnq", backend=BACKEND), name="tnq.test.wrong")
    del wrong
