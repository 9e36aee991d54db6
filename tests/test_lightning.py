"""PyTorch Lightning (the real package) trains with the TNQ hook on 2 CPU processes over gloo."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.distributed as dist

from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import ops

import multiproc

BACKEND = "reference" if ops.native_error is not None else None
HAVE_PL = importlib.util.find_spec("pytorch_lightning") is not None
NO_PL = "pytorch-lightning is not installed (requirements.txt pins it; `pip install pytorch-lightning`)"
STEPS = 20


def _module_and_data():
    import pytorch_lightning as pl
    from test_ddp import Net

    class Regress(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = Net()
            self.losses = []

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    g = torch.Generator().manual_seed(5)
    x = torch.randn(256, 16, generator=g)
    y = x @ (torch.randn(16, 4, generator=torch.Generator().manual_seed(7)) / 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)
    return Regress(), data


def _fit(strategy, steps=STEPS):
    import pytorch_lightning as pl
    model, data = _module_and_data()
    trainer = pl.Trainer(accelerator="cpu", devices=2, num_nodes=1, strategy=strategy, max_steps=steps,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, data)
    assert trainer.world_size == dist.get_world_size() == 2
    return model


def check_tnq_strategy_trains():
    from tnq_kernels.lightning import TNQDDPStrategy
    state = tnq_ddp.TNQState(bits=3, block_size=256, seed=1, min_bucket_numel=0, backend=BACKEND)
    model = _fit(TNQDDPStrategy(state, process_group_backend="gloo"))
    assert state.step == STEPS, f"the hook ran {state.step} steps, the trainer {STEPS}"
    assert state.compression_ratio > 5, state.stats()
    multiproc.assert_replicas_identical(model)
    first, last = sum(model.losses[:3]) / 3, sum(model.losses[-3:]) / 3
    assert last < 0.6 * first, model.losses


def check_plain_recipe_is_cuda_only():
    """Lightning 2.6.6 skips ddp_comm_hook off CUDA: if this starts failing, Lightning registers it on CPU now and
    docs/integrations.md (and TNQDDPStrategy's reason to exist) must be updated."""
    from pytorch_lightning.strategies import DDPStrategy
    state = tnq_ddp.TNQState(bits=3, block_size=256, min_bucket_numel=0, backend=BACKEND)
    strategy = DDPStrategy(process_group_backend="gloo", ddp_comm_state=state, ddp_comm_hook=tnq_ddp.tnq_hook)
    _fit(strategy, steps=2)
    assert state.step == 0, "Lightning ran the comm hook on CPU"


CHECKS = {"tnq_strategy_trains": check_tnq_strategy_trains, "plain_recipe_is_cuda_only": check_plain_recipe_is_cuda_only}


@pytest.fixture(scope="module")
def group2():
    if not HAVE_PL:
        pytest.skip(NO_PL)
    return multiproc.run_group(2, __name__, list(CHECKS))


@pytest.mark.parametrize("name", list(CHECKS))
def test_two_ranks(group2, name):
    multiproc.assert_ok(group2, name)


@pytest.mark.skipif(not HAVE_PL, reason=NO_PL)
def test_strategy_rejects_bad_arguments():
    from tnq_kernels.lightning import TNQDDPStrategy
    with pytest.raises(ValueError, match="state"):
        TNQDDPStrategy(object())
    with pytest.raises(ValueError, match="ddp_comm_hook"):
        TNQDDPStrategy(tnq_ddp.TNQState(), ddp_comm_hook=tnq_ddp.tnq_hook)
