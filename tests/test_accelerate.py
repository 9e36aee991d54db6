"""HF Accelerate (the real package) with the TNQ hook on 2 CPU processes over gloo.

Accelerate's ``DistributedDataParallelKwargs(comm_hook=...)`` takes only its DDPCommunicationHookType enum (fp16,
bf16, PowerSGD), not a callable, so the recipe registers the hook on the DDP model that ``prepare`` returns.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import ops

import multiproc

BACKEND = "reference" if ops.native_error is not None else None
HAVE_ACCELERATE = importlib.util.find_spec("accelerate") is not None
NO_ACCELERATE = "accelerate is not installed (`pip install accelerate`)"
STEPS = 20


def check_prepared_model_takes_the_hook():
    from accelerate import Accelerator
    from test_ddp import Net

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.state
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(256, 16, generator=g)
    y = x @ (torch.randn(16, 4, generator=torch.Generator().manual_seed(7)) / 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model, opt, data = accelerator.prepare(model, opt, data)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel), type(model)
    state = tnq_ddp.TNQState(bits=3, block_size=256, seed=1, min_bucket_numel=0, backend=BACKEND)
    model.register_comm_hook(state, tnq_ddp.tnq_hook)
    losses, step = [], 0
    while step < STEPS:
        for xb, yb in data:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step == STEPS:
                break
    assert state.step == STEPS, f"the hook ran {state.step} steps of {STEPS}"
    assert state.compression_ratio > 5, state.stats()
    multiproc.assert_replicas_identical(model)
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses


CHECKS = {"prepared_model_takes_the_hook": check_prepared_model_takes_the_hook}


@pytest.fixture(scope="module")
def group2():
    if not HAVE_ACCELERATE:
        pytest.skip(NO_ACCELERATE)
    return multiproc.run_group(2, __name__, list(CHECKS))


@pytest.mark.parametrize("name", list(CHECKS))
def test_two_ranks(group2, name):
    multiproc.assert_ok(group2, name)


@pytest.mark.skipif(not HAVE_ACCELERATE, reason=NO_ACCELERATE)
def test_kwargs_handler_takes_no_callable():
    """Why the recipe registers the hook itself: Accelerate maps comm_hook through a fixed enum."""
    from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs
    assert {h.value for h in DDPCommunicationHookType} == {"no", "fp16", "bf16", "power_sgd", "batched_power_sgd"}
    with pytest.raises(ValueError):
        DDPCommunicationHookType(tnq_ddp.tnq_hook)
    assert DistributedDataParallelKwargs().comm_hook == DDPCommunicationHookType.NO
