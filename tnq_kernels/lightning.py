"""PyTorch Lightning: a DDPStrategy that registers the TNQ hook on every device.

    from tnq_kernels.lightning import TNQDDPStrategy
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=TNQDDPStrategy(TNQState(bits=3)))

On CUDA, Lightning's own ``DDPStrategy(ddp_comm_state=state, ddp_comm_hook=tnq_hook)`` is enough. On other devices
Lightning (2.6.6, ``DDPStrategy._register_ddp_hooks``) silently skips ``ddp_comm_hook``, so gradients would be
all-reduced uncompressed; this subclass registers the hook itself there. Other keyword arguments go to DDPStrategy.

Checkpoints: Lightning saves rank 0's checkpoint only, while error-feedback residuals differ per rank; save each
rank's ``state.state_dict(model)`` yourself when error feedback is on (docs/integrations.md).
"""
from __future__ import annotations

try:  # the standalone package first, then the unified one; Trainer and strategy must come from the same one
    from pytorch_lightning.strategies import DDPStrategy
except ImportError:  # pragma: no cover - depends on which package is installed
    try:
        from lightning.pytorch.strategies import DDPStrategy
    except ImportError as e:
        raise ImportError(f"tnq_kernels.lightning needs PyTorch Lightning (`pip install pytorch-lightning`): {e}") \
            from e

from .ddp import TNQState, tnq_hook

__all__ = ["TNQDDPStrategy"]


class TNQDDPStrategy(DDPStrategy):
    """``DDPStrategy(ddp_comm_state=state, ddp_comm_hook=tnq_hook, **kwargs)``, with the hook registered on CPU too."""

    def __init__(self, state: TNQState, **kwargs):
        if not isinstance(state, TNQState):
            raise ValueError(f"state must be a tnq_kernels.ddp.TNQState, got {state!r}")
        for k in ("ddp_comm_state", "ddp_comm_hook"):
            if k in kwargs:
                raise ValueError(f"{k} is set by TNQDDPStrategy; got {k}={kwargs[k]!r}")
        super().__init__(ddp_comm_state=state, ddp_comm_hook=tnq_hook, **kwargs)
        self.tnq_state = state

    def configure_ddp(self) -> None:
        super().configure_ddp()
        # DDP allows one comm hook; Lightning has registered ours already where it supports hooks (CUDA)
        if not getattr(self.model, "_comm_hooks", None):
            self.model.register_comm_hook(self.tnq_state, tnq_hook)
