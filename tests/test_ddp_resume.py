"""TNQState checkpoints: a 2-rank gloo run stopped and restored matches the uninterrupted run bit for bit."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.distributed as dist

from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import ops

import multiproc
from test_ddp import BUCKET_MB, Net, _data, _model

BACKEND = "reference" if ops.native_error is not None else None
SEED = 4321
TOTAL, STOP = 6, 3


def _state(**kw):
    kw = {"bits": 2, "block_size": 256, "seed": SEED, "min_bucket_numel": 0, "backend": BACKEND, **kw}
    return tnq_ddp.TNQState(**kw)


def _wrap(model, state):
    from torch.nn.parallel import DistributedDataParallel as DDP
    net = DDP(model, bucket_cap_mb=BUCKET_MB)
    net.register_comm_hook(state, tnq_ddp.tnq_hook)
    return net


def _loss(net):
    x, y = _data(dist.get_rank())
    return torch.nn.functional.mse_loss(net(x), y)


def _steps(net, opt, n):
    snaps = []
    for _ in range(n):
        opt.zero_grad()
        _loss(net).backward()
        opt.step()
        snaps.append(torch.cat([p.detach().reshape(-1).clone() for p in net.module.parameters()]))
    return snaps


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _checkpoint(model, opt, state):
    buf = io.BytesIO()  # through torch.save, as a real checkpoint goes
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "tnq": state.state_dict(model)}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _restore(ckpt):
    torch.manual_seed(99)  # another initialisation: everything must come from the checkpoint
    model = Net()
    model.load_state_dict(ckpt["model"])
    opt = _opt(model)
    opt.load_state_dict(ckpt["opt"])
    state = tnq_ddp.TNQState.from_state_dict(ckpt["tnq"], model, backend=BACKEND)
    return model, opt, state, _wrap(model, state)


def check_resume_bit_identical(stop=STOP, **kw):
    model = _model()
    full = _state(**kw)
    net, opt = _wrap(model, full), _opt(model)
    want = _steps(net, opt, TOTAL)

    model = _model()
    state = _state(**kw)
    net, opt = _wrap(model, state), _opt(model)
    _steps(net, opt, stop)
    ckpt = _checkpoint(model, opt, state)
    del net
    model, opt, state2, net = _restore(ckpt)
    assert state2.step == stop and state2.seed == SEED
    with state2.passthrough():  # DDP records the gradient order and rebuilds its buckets before the next step
        _loss(net).backward()
    opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout check must not fire after the pass
        got = _steps(net, opt, TOTAL - stop)
    for t, (a, b) in enumerate(zip(got, want[stop:])):
        assert torch.equal(a, b), f"step {stop + t}: resumed parameters differ (max |d| {float((a - b).abs().max())})"
    assert state2.stats() == full.stats()
    mine, theirs = state2.residuals(), full.residuals()
    assert mine.keys() == theirs.keys() and (mine or not state2.error_feedback)
    for i in mine:
        assert torch.equal(mine[i][1], theirs[i][1]), f"bucket {i}: residual differs"


def check_resume_without_pass_warns():
    model = _model()
    state = _state(error_feedback=True)
    net, opt = _wrap(model, state), _opt(model)
    _steps(net, opt, 2)
    ckpt = _checkpoint(model, opt, state)
    del net
    model, opt, state2, net = _restore(ckpt)
    with pytest.warns(UserWarning, match="passthrough"):
        _steps(net, opt, 1)


def check_refuses_other_configuration():
    model = _model()
    state = _state(error_feedback=True)
    net, opt = _wrap(model, state), _opt(model)
    _steps(net, opt, 1)
    sd = state.state_dict(net)  # through the DDP wrapper: names are the inner model's
    assert set(sd["residuals"]) == {n for n, _ in model.named_parameters()}
    cases = [(_state(bits=3, error_feedback=True), sd, "bits"),
             (_state(codebook="nqsgd", error_feedback=True), sd, "codebook"),
             (_state(block_size=512, error_feedback=True), sd, "block_size"),
             (_state(scheme="two_phase", error_feedback=True), sd, "scheme"),
             (_state(codebook="qsgd"), sd, "error_feedback"),
             (_state(error_feedback=True), {**sd, "world_size": 4}, "world_size"),
             (_state(error_feedback=True), {**sd, "rank": 1 - dist.get_rank()}, "rank"),
             (_state(error_feedback=True), {**sd, "version": 99}, "version"),
             (_state(error_feedback=True, rounding="nearest"), sd, "rounding")]
    for fresh, d, field in cases:
        with pytest.raises(ValueError, match=field) as e:
            fresh.load_state_dict(d, model)
        assert "saved" in str(e.value) or field == "version", str(e.value)
    # a state saved before `rounding` existed was stochastic
    before = {k: v for k, v in sd.items() if k != "rounding"}
    _state(error_feedback=True).load_state_dict(before, model)
    with pytest.raises(ValueError, match="rounding of the saved state is 'stochastic', this state has 'nearest'"):
        _state(error_feedback=True, rounding="nearest").load_state_dict(before, model)
    with pytest.raises(ValueError, match="module"):
        _state(error_feedback=True).load_state_dict(sd)
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="l1.weight|l2.weight|l3.weight"):
        _state(error_feedback=True).load_state_dict(sd, other)
    with pytest.raises(ValueError, match="module"):
        state.state_dict()


CHECKS = {
    "allgather_ef": lambda: check_resume_bit_identical(error_feedback=True, scheme="allgather"),
    "two_phase_ef_warmup": lambda: check_resume_bit_identical(error_feedback=True, scheme="two_phase",
                                                              warmup_steps=1),
    "allgather_no_ef": lambda: check_resume_bit_identical(scheme="allgather", bits=3),
    "allgather_ef_nearest": lambda: check_resume_bit_identical(error_feedback=True, scheme="allgather",
                                                               codebook="qsgd", rounding="nearest"),
    # saved after DDP's first (one-bucket) step: the layout check must not fire on the rebuilt buckets
    "allgather_ef_after_first_step": lambda: check_resume_bit_identical(stop=1, error_feedback=True,
                                                                        scheme="allgather"),
    "without_pass_warns": check_resume_without_pass_warns,
    "refuses": check_refuses_other_configuration,
}


@pytest.fixture(scope="module")
def group2():
    return multiproc.run_group(2, __name__, list(CHECKS))


@pytest.mark.parametrize("name", list(CHECKS))
def test_two_ranks(group2, name):
    multiproc.assert_ok(group2, name)


def test_load_needs_a_process_group():
    with pytest.raises(RuntimeError, match="not initialized"):
        tnq_ddp.TNQState().state_dict()
    with pytest.raises(ValueError, match="version"):
        tnq_ddp.TNQState().load_state_dict({"version": 0})
