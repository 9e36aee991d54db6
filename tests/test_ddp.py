"""tnq_kernels.ddp: the DDP hook with real processes (gloo on 127.0.0.1, 2 and 4 ranks).

Spawning is the slow part (seconds per group on a 2-core machine), so each world size is spawned once per module:
every rank runs all checks in order and reports {check: error or None}; each test below reads one check. The
hook's output is compared bit-for-bit with an independent re-computation from the buckets' inputs (gathered from
all ranks) using only the public API, which is the single-process simulation the MNIST experiment relies on.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist

import multiproc

import tnq_kernels as tnq
from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import ops

# before the C++ backend is built the tests still run, on the oracle
BACKEND = "reference" if ops.native_error is not None else None
SEED = 1234
BLOCK = 256
BUCKET_MB = 0.008  # ~2k fp32 elements per bucket after DDP's rebuild: several buckets for the ~5.5k-parameter model


class Net(torch.nn.Module):
    """Layers registered out of their use order, so DDP's rebuilt buckets (gradient-ready order) differ from its
    initial ones on every torch version: the error-feedback state must follow parameters across the rebuild."""

    def __init__(self):
        super().__init__()
        self.l3 = torch.nn.Linear(64, 4)
        self.l1 = torch.nn.Linear(16, 64)
        self.l2 = torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def _data(rank: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(64, 16, generator=g)
    teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(7)) / 4
    return x.to(dtype), (x @ teacher).to(dtype)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return Net().to(dtype)


class Recorder:
    """Wraps tnq_hook: keeps (step, bucket index, input, params, output) of every bucket it sees."""

    def __init__(self, state):
        self.state, self.seen = state, []

    def hook(self, state, bucket):
        rec = {"step": state.step, "index": bucket.index(), "input": bucket.buffer().clone(),
               "params": list(bucket.parameters())}
        self.seen.append(rec)
        fut = tnq_ddp.tnq_hook(state, bucket)

        def keep(f):
            rec["output"] = f.value().clone()
            return f.value()
        return fut.then(keep)


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def _expected_allgather(inputs, step, index, dtype, bits, rounding="stochastic"):
    W = len(inputs)
    payloads = [tnq.compress(x, bits, BLOCK, "tnq", tnq.derive_seed(SEED, r, step, index), backend=BACKEND,
                             rounding=rounding) for r, x in enumerate(inputs)]
    return tnq.decompress_sum(payloads, [1.0 / W] * W, [inputs[0].numel()], dtype, backend=BACKEND)


def _expected_two_phase(inputs, step, index, dtype, bits, rounding="stochastic"):
    W, n = len(inputs), inputs[0].numel()
    chunk = (-(-n // W) + 31) // 32 * 32
    out = torch.empty(n, dtype=dtype)
    for j in range(W):
        lo, hi = min(j * chunk, n), min((j + 1) * chunk, n)
        parts = [tnq.compress(x[lo:hi], bits, BLOCK, "tnq", tnq.derive_seed(SEED, r, step, index, 1, j),
                              backend=BACKEND, rounding=rounding) for r, x in enumerate(inputs)]
        shard = tnq.decompress_sum(parts, [1.0 / W] * W, [hi - lo], torch.float32, backend=BACKEND)
        again = tnq.compress(shard, bits, BLOCK, "tnq", tnq.derive_seed(SEED, j, step, index, 2), backend=BACKEND,
                             rounding=rounding)
        out[lo:hi] = tnq.decompress(again, [hi - lo], dtype, backend=BACKEND)
    return out


def _ddp(model, state=None, hook=None):
    from torch.nn.parallel import DistributedDataParallel as DDP
    net = DDP(model, bucket_cap_mb=BUCKET_MB)
    if state is not None:
        net.register_comm_hook(state, hook or tnq_ddp.tnq_hook)
    return net


def _train(net, model, steps, dtype=torch.float32, lr=0.05):
    x, y = _data(dist.get_rank(), dtype)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        avg = loss.detach().float().reshape(1) / dist.get_world_size()
        dist.all_reduce(avg)
        losses.append(float(avg))
    return losses


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def _check_identical(model):
    mine = _flat_params(model)
    for r, other in enumerate(_gather(mine)):
        assert torch.equal(other, mine), f"replica of rank {r} differs from rank {dist.get_rank()}"


# ---- the checks every rank runs ----

def check_matches_simulation(scheme, dtype, steps=3, bits=3, rounding="stochastic"):
    state = tnq_ddp.TNQState(codebook="tnq", bits=bits, block_size=BLOCK, scheme=scheme, seed=SEED, min_bucket_numel=0,
                             backend=BACKEND, rounding=rounding)
    rec = Recorder(state)
    model = _model(dtype)
    net = _ddp(model, state, rec.hook)
    _train(net, model, steps, dtype)
    expect = _expected_two_phase if state.scheme_for(dist.get_world_size()) == "two_phase" else _expected_allgather
    assert len({r["step"] for r in rec.seen}) == steps
    for r in rec.seen:
        inputs = _gather(r["input"])
        want = expect(inputs, r["step"], r["index"], dtype, bits, rounding)
        if rounding != "stochastic":  # the hook's rounding reached compress: stochastic rounding differs
            assert not torch.equal(want, expect(inputs, r["step"], r["index"], dtype, bits))
        got = r["output"]
        assert got.dtype == dtype and got.shape == r["input"].shape
        assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           want.view(torch.int16 if dtype != torch.float32 else torch.int32)), \
            f"step {r['step']} bucket {r['index']}: hook output differs from the simulation"
    _check_identical(model)
    assert state.step == steps
    assert sum(n for _, n in state.last_bucket_layout) == sum(p.numel() for p in model.parameters())
    return state


def check_two_phase_traffic():
    W = dist.get_world_size()
    st_ag = check_matches_simulation("allgather", torch.float32, steps=1)
    st_tp = check_matches_simulation("two_phase", torch.float32, steps=1)
    n = sum(n for _, n in st_tp.last_bucket_layout)
    bound = sum(2 * tnq.payload_bytes(tnq_ddp.chunk_size(k, W), 3, BLOCK) * (W - 1) for _, k in st_tp.last_bucket_layout)
    assert st_tp.last_bytes_sent == bound
    assert st_tp.last_bytes_sent < st_tp.last_bytes_fp32 / 4, (st_tp.last_bytes_sent, st_tp.last_bytes_fp32)
    assert st_ag.last_bytes_sent == sum((W - 1) * tnq.payload_bytes(k, 3, BLOCK) for _, k in st_ag.last_bucket_layout)
    assert st_tp.last_bytes_fp32 == 2 * (W - 1) * 4 * n // W or len(st_tp.last_bucket_layout) > 1
    if W > 2:  # all-gather traffic grows with W, two-phase traffic does not
        assert st_tp.last_bytes_sent < st_ag.last_bytes_sent


def check_bits8_tracks_uncompressed():
    steps = 15
    plain = _model()
    ref_losses = _train(_ddp(plain), plain, steps)
    model = _model()
    state = tnq_ddp.TNQState(codebook="tnq", bits=8, block_size=BLOCK, scheme="allgather", seed=SEED, min_bucket_numel=0,
                             backend=BACKEND)
    losses = _train(_ddp(model, state), model, steps)
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= 0.02 * b, (losses, ref_losses)
    a, b = _flat_params(model), _flat_params(plain)
    assert (a - b).norm() <= 1e-2 * b.norm(), float((a - b).norm() / b.norm())


def check_loss_decreases(scheme):
    model = _model()
    state = tnq_ddp.TNQState(codebook="tnq", bits=3, block_size=BLOCK, scheme=scheme, seed=SEED, min_bucket_numel=0,
                             backend=BACKEND)
    losses = _train(_ddp(model, state), model, 30, lr=0.5)
    assert losses[-1] < 0.5 * losses[0], losses
    _check_identical(model)


def check_error_feedback_rebuild(scheme):
    W = dist.get_world_size()
    state = tnq_ddp.TNQState(codebook="tnq", bits=2, block_size=BLOCK, scheme=scheme, seed=SEED, min_bucket_numel=0,
                             error_feedback=True, backend=BACKEND)
    rec = Recorder(state)
    model = _model()
    net = _ddp(model, state, rec.hook)
    _train(net, model, 1)
    layout0 = list(state.last_bucket_layout)
    per_param = {}
    for params, res in state.residuals().values():
        off = 0
        for p in params:
            per_param[id(p)] = res[off: off + p.numel()].clone()
            off += p.numel()
    assert len(per_param) == len(list(model.parameters()))
    assert all(v.abs().sum() > 0 for v in per_param.values()), "2-bit residuals should not vanish"
    # the residual's memory: one fp32 copy of the gradients per rank
    assert state.stats()["residual_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    _train(net, model, 1)
    assert state.last_bucket_layout != layout0, f"DDP did not rebuild its buckets: {layout0}"
    expect = _expected_two_phase if state.scheme_for(W) == "two_phase" else _expected_allgather
    for r in rec.seen[len(layout0):]:
        carried = torch.cat([per_param[id(p)] for p in r["params"]])
        inputs = _gather(r["input"].float() + carried)
        want = expect(inputs, r["step"], r["index"], torch.float32, 2)
        assert torch.equal(r["output"], want), f"bucket {r['index']}: residual not carried across the rebuild"
    _check_identical(model)


def check_nan_reaches_every_rank(scheme):
    model = _model()
    state = tnq_ddp.TNQState(codebook="tnq", bits=3, block_size=BLOCK, scheme=scheme, seed=SEED, min_bucket_numel=0,
                             backend=BACKEND)
    net = _ddp(model, state)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    x, y = _data(dist.get_rank())
    if dist.get_rank() == dist.get_world_size() - 1:
        model.l2.weight.register_hook(lambda g: g.index_fill(1, torch.tensor([3]), float("nan")))
    before = _flat_params(model)
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(net(x), y)).backward()
    assert not torch.isfinite(model.l2.weight.grad).all(), "NaN of the last rank did not arrive here"
    # a NaN poisons its whole scale block, which may straddle a neighbouring parameter, but nothing further
    bad = sum(int((~torch.isfinite(p.grad)).sum()) for p in model.parameters())
    assert bad <= model.l2.weight.numel() + 2 * BLOCK, bad
    scaler.step(opt)
    scaler.update()
    assert torch.equal(_flat_params(model), before), "GradScaler should have skipped the step"
    assert scaler.get_scale() < 2.0 ** 8


def check_small_bucket_and_warmup():
    W = dist.get_world_size()
    state = tnq_ddp.TNQState(codebook="tnq", bits=3, block_size=BLOCK, scheme="allgather", seed=SEED, warmup_steps=1,
                             min_bucket_numel=2000, backend=BACKEND)
    rec = Recorder(state)
    model = _model()
    net = _ddp(model, state, rec.hook)
    _train(net, model, 3)
    n_total = sum(p.numel() for p in model.parameters())
    small = big = 0
    for r in rec.seen:
        inputs = _gather(r["input"])
        exact = r["step"] == 0 or r["input"].numel() < 2000
        if exact:  # plain all-reduce of the pre-divided bucket; W = 2 sums two terms: exact in any order
            want = sum(torch.div(x, W) for x in inputs)
            small += r["step"] > 0
            close = torch.equal(r["output"], want) if W == 2 else torch.allclose(r["output"], want, rtol=1e-6, atol=0)
            assert close, f"step {r['step']} bucket {r['index']}: not the plain average"
        else:
            big += 1
            assert torch.equal(r["output"], _expected_allgather(inputs, r["step"], r["index"], torch.float32, 3))
    assert small > 0 and big > 0, "the model should have buckets on both sides of min_bucket_numel"
    fp32 = 2 * (W - 1) * 4 * n_total // W
    assert abs(state.bytes_fp32 - 3 * fp32) <= 3 * len(state.last_bucket_layout)  # per-bucket floor division
    assert state.bytes_sent < state.bytes_fp32
    _check_identical(model)


CHECKS = {
    "sim_allgather_fp32": lambda: check_matches_simulation("allgather", torch.float32),
    "sim_allgather_fp16": lambda: check_matches_simulation("allgather", torch.float16),
    "sim_allgather_bf16": lambda: check_matches_simulation("allgather", torch.bfloat16),
    "sim_two_phase_fp32": lambda: check_matches_simulation("two_phase", torch.float32),
    "sim_two_phase_bf16": lambda: check_matches_simulation("two_phase", torch.bfloat16),
    "sim_allgather_nearest": lambda: check_matches_simulation("allgather", torch.float32, rounding="nearest"),
    "sim_two_phase_nearest": lambda: check_matches_simulation("two_phase", torch.bfloat16, bits=2,
                                                              rounding="nearest"),
    "traffic": check_two_phase_traffic,
    "bits8_tracks": check_bits8_tracks_uncompressed,
    "loss_allgather": lambda: check_loss_decreases("allgather"),
    "loss_two_phase": lambda: check_loss_decreases("two_phase"),
    "ef_rebuild_allgather": lambda: check_error_feedback_rebuild("allgather"),
    "ef_rebuild_two_phase": lambda: check_error_feedback_rebuild("two_phase"),
    "nan_allgather": lambda: check_nan_reaches_every_rank("allgather"),
    "nan_two_phase": lambda: check_nan_reaches_every_rank("two_phase"),
    "small_bucket_warmup": check_small_bucket_and_warmup,
}
#: the 4-rank group runs the checks whose behaviour depends on W (chunking, traffic, NaN routing)
CHECKS_4 = ["sim_allgather_fp32", "sim_two_phase_fp32", "traffic", "ef_rebuild_two_phase", "nan_two_phase",
            "loss_two_phase"]


@pytest.fixture(scope="module")
def group2():
    return multiproc.run_group(2, __name__, list(CHECKS))


@pytest.fixture(scope="module")
def group4():
    return multiproc.run_group(4, __name__, CHECKS_4)


@pytest.mark.parametrize("name", list(CHECKS))
def test_two_ranks(group2, name):
    multiproc.assert_ok(group2, name)


@pytest.mark.parametrize("name", CHECKS_4)
def test_four_ranks(group4, name):
    multiproc.assert_ok(group4, name)


# ---- no processes needed ----

@pytest.mark.parametrize("kwargs, field", [
    ({"scheme": "ring"}, "scheme"), ({"bits": 9}, "bits"), ({"block_size": 100}, "block_size"),
    ({"codebook": "fp8"}, "codebook"), ({"warmup_steps": -1}, "warmup_steps"),
    ({"min_bucket_numel": 1.5}, "min_bucket_numel"), ({"seed": "x"}, "seed"), ({"backend": "tpu"}, "backend"),
    ({"rounding": "down"}, "rounding must be one of 'stochastic' \\(0\\), 'nearest' \\(1\\), got 'down'"),
])
def test_state_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tnq_ddp.TNQState(**kwargs)


@pytest.mark.parametrize("n, w, chunk", [(0, 4, 0), (1, 4, 32), (33, 2, 32), (4097, 4, 1056), (64, 3, 32)])
def test_chunk_size(n, w, chunk):
    assert tnq_ddp.chunk_size(n, w) == chunk
    assert chunk * w >= n and chunk % 32 == 0


def test_auto_scheme_by_world_size():
    s = tnq_ddp.TNQState()
    assert [s.scheme_for(w) for w in (1, 2, 3, 8)] == ["allgather", "allgather", "two_phase", "two_phase"]
    assert tnq_ddp.TNQState(codebook="tnq", scheme="allgather").scheme_for(8) == "allgather"


@pytest.mark.parametrize("compressor", ["tnq"])
def test_example_script_runs(compressor):
    """examples/train_ddp.py end to end (its own spawn of 2 ranks): per-step lines and the summary."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TNQ_BACKEND=BACKEND or "auto")
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "train_ddp.py"), "--nproc", "2",
                          "--steps", "3", "--width", "32", "--depth", "2", "--threads", "1", "--compressor",
                          compressor, "--scheme", "two_phase"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: final loss" in out.stdout and "step     2" in out.stdout  # tqdm.write prints to stdout
