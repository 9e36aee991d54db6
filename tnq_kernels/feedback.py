"""Error feedback, shared by every integration (the DDP hook, the Horovod wrapper, the FSDP path).

With error feedback a rank adds its residual e to the gradient before compressing and keeps
e ← (g + e) − decode(own payload) in fp32 (:func:`feedback_residual`); :func:`gather_residual` and
:func:`split_residual` move residuals between one flat tensor and per-parameter pieces.

**Clipping codebooks and error feedback** (:func:`check_error_feedback`). The truncating codebooks put their top level
at a fixed multiple of a mean-type scale of the block (``tnq``, ``tqsgd``: mean|x|; ``rtnq``: Σx²/(2Σ|x|)). Under
error feedback the clipped tail goes into the residual and comes back on the next step; one coordinate barely moves a
mean over 2048, so a coordinate whose gradient keeps its sign stays above the threshold and its residual grows step
after step (integrator wind-up), and once the gradient turns, the wound-up residual keeps pushing the old way for many
steps. The max-scaled ``qsgd``, ``nqsgd`` and ``tnq_max`` clip nothing, so their residual stays within one level gap
of the block's largest entry (docs/codebooks.md §5). Measured in this project's simulator (experiments/results/ef_grid/,
8 clients, the fp32-chosen learning rates, 3 paired seeds): with feedback at 2 bits, ``tnq`` falls from 0.948 to
0.537 MNIST-MLP accuracy and diverges on the byte-level transformer, ``rtnq`` ends at 4.2 bpb or NaN on the
transformer (2.68 without), while ``qsgd`` gains 0.21 bpb there and is within noise of fp32 on the MLP, the CNN and
the transformer with momentum SGD. So error feedback with a clipping codebook warns (:class:`FeedbackWarning`,
naming ``qsgd``), and :func:`default_codebook` picks ``qsgd`` when feedback is on and no codebook is named. It is not
refused: the harm runs from −0.2 points (``rtnq`` on the MLP) to divergence, the studies must still run these
configurations, and ``warnings.simplefilter("error", FeedbackWarning)`` makes it an error
for whoever wants one.
"""
from __future__ import annotations

import warnings

import torch

from . import codebooks as cb
from .api import DEFAULT_CODEBOOK

#: scale rules whose top level is a fixed multiple of a mean-type statistic: entries above it are clipped
CLIPPING_SCALE_RULES = (cb.SCALE_MEAN_ABS, cb.SCALE_M2_M1)
#: the codebook an integration uses with error feedback when the caller names none: in the issue-20 grid
#: (experiments/results/ef_grid/), qsgd with feedback and stochastic rounding is within seed noise of fp32 at 2 bits
#: with momentum SGD on all three models, with no seed near chance accuracy
FEEDBACK_CODEBOOK = "qsgd"


def default_codebook(codebook: str | int | None, error_feedback: bool) -> str | int:
    """``codebook`` as given, or for None the integrations' default: FEEDBACK_CODEBOOK with error feedback, else
    the library's default (``"rtnq"``)."""
    if codebook is not None:
        return codebook
    return FEEDBACK_CODEBOOK if error_feedback else DEFAULT_CODEBOOK


class FeedbackWarning(UserWarning):
    """Error feedback is on with a codebook that clips: measured to degrade training (module docstring)."""


def clips(codebook: str | int) -> bool:
    """True when ``codebook`` (a name, "rtnq", or an id) truncates entries above a mean-type threshold."""
    return cb.scale_rule(codebook) in CLIPPING_SCALE_RULES


def check_error_feedback(codebook: str | int, bits: int, error_feedback: bool = True, where: str = "error_feedback",
                         stacklevel: int = 3) -> bool:
    """Warn (:class:`FeedbackWarning`) when ``error_feedback`` is on with a clipping codebook; return whether it did.

    Every integration calls this once when it is configured (``where`` names the caller in the message;
    ``stacklevel`` points the warning at the user's line). Raises ValueError, as the integrations do, for an
    unknown codebook or bits.
    """
    name = cb.codebook_name(codebook)
    cb.check_bits(bits)
    if not error_feedback or not clips(name):
        return False
    warnings.warn(
        f"{where}: error_feedback=True with codebook={name!r} at {bits} bits clips entries above a multiple of a "
        f"mean-type scale, so a clipped coordinate's residual can grow step after step; measured to degrade training "
        f"(2 bits, momentum SGD: tnq fell from 0.95 to 0.54 MNIST-MLP accuracy and diverged on a transformer, rtnq "
        f"diverged or lost 1.5 bpb there). Use codebook='qsgd' with error feedback (max-scaled, nothing clipped; "
        f"what the integrations pick when no codebook is given), or error_feedback=False with {name!r} "
        f"(docs/integrations.md, 'Error feedback')", FeedbackWarning, stacklevel=stacklevel)
    return True


def feedback_residual(corrected: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """Error feedback's residual e = corrected − decoded (fp32). Entries of a non-finite block are reset to 0: a step
    that GradScaler skips for an overflow must not poison every later step."""
    res = corrected - decoded
    return torch.where(torch.isfinite(res), res, torch.zeros((), dtype=res.dtype, device=res.device))


def gather_residual(pieces, numels, device) -> torch.Tensor:
    """One flat fp32 residual from per-parameter pieces (None: no residual yet, zeros)."""
    value = torch.zeros(sum(numels), dtype=torch.float32, device=device)
    off = 0
    for piece, n in zip(pieces, numels):
        if piece is not None:
            value[off: off + n].copy_(piece)
        off += n
    return value


def split_residual(value: torch.Tensor, numels) -> list:
    """The inverse of gather_residual: per-parameter views of a flat residual."""
    return list(value.split(list(numels)))
