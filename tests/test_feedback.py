"""tnq_kernels.feedback: error feedback's shared pieces, and the warning for error feedback with a clipping codebook.

The warning's reason is tested as behaviour, not only as a message: under error feedback a coordinate whose
gradient keeps its sign winds up its residual with a mean-scaled codebook (tnq, tqsgd), and does not with a
max-scaled one (qsgd, nqsgd).
"""
import warnings

import pytest
import torch

from tnq_kernels import codebooks as cb
from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import feedback
from tnq_kernels import reference as ref

CLIPPING = ("tnq", "tqsgd", "rtnq", "rtnq8", cb.codebook_id("rtnq1"))
NOT_CLIPPING = ("qsgd", "nqsgd", "qsgd_l2", "nuqsgd_l2", cb.codebook_id("qsgd"))


@pytest.mark.parametrize("codebook", CLIPPING)
@pytest.mark.parametrize("bits", [2, 3, 5])
def test_clipping_codebook_with_feedback_warns_naming_what_to_use(codebook, bits):
    with pytest.warns(feedback.FeedbackWarning, match=r"error_feedback=True.*codebook='qsgd' or 'nqsgd'"):
        assert feedback.check_error_feedback(codebook, bits) is True


@pytest.mark.parametrize("codebook", NOT_CLIPPING)
def test_max_and_l2_scaled_codebooks_do_not_warn(codebook):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert feedback.check_error_feedback(codebook, 2) is False
        assert not feedback.clips(codebook)


@pytest.mark.parametrize("codebook", CLIPPING)
def test_no_warning_without_feedback(codebook):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert feedback.check_error_feedback(codebook, 2, error_feedback=False) is False


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="codebook"):
        feedback.check_error_feedback("lloyd", 2)
    with pytest.raises(ValueError, match="bits"):
        feedback.check_error_feedback("qsgd", 9)


def test_tnq_state_warns_at_construction_and_points_at_the_caller():
    with pytest.warns(feedback.FeedbackWarning, match="TNQState") as rec:
        state = tnq_ddp.TNQState(bits=2, error_feedback=True)  # the default codebook, rtnq, clips
    assert state.error_feedback and state.codebook == "rtnq"
    assert rec[0].filename == __file__  # stacklevel: the user's line, not the library's
    with pytest.warns(feedback.FeedbackWarning, match="'tnq'"):
        tnq_ddp.TNQState(codebook="tnq", bits=3, error_feedback=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tnq_ddp.TNQState(codebook="qsgd", bits=2, error_feedback=True)
        tnq_ddp.TNQState(bits=2)


def test_ddp_keeps_the_residual_helpers():
    assert tnq_ddp.feedback_residual is feedback.feedback_residual
    assert tnq_ddp.gather_residual is feedback.gather_residual
    assert tnq_ddp.split_residual is feedback.split_residual


def test_residual_helpers_round_trip_and_reset_non_finite():
    pieces = [torch.arange(3.0), None, torch.full((2,), -1.0)]
    flat = feedback.gather_residual(pieces, [3, 4, 2], "cpu")
    assert flat.tolist() == [0, 1, 2, 0, 0, 0, 0, -1, -1]
    back = feedback.split_residual(flat, [3, 4, 2])
    assert [t.numel() for t in back] == [3, 4, 2] and torch.equal(back[0], pieces[0])
    res = feedback.feedback_residual(torch.tensor([1.0, float("inf"), 2.0]), torch.tensor([0.5, 1.0, float("nan")]))
    assert res.tolist() == [0.5, 0.0, 0.0]


def _feedback_run(codebook: str, bits: int, steps: int, spike: float = 20.0):
    """One client under error feedback with the reference codec (block 2048): the gradient is Laplace(1) noise with
    coordinate 0 held at a constant ``spike``. Returns (|residual of coordinate 0| per step, max ‖e‖∞, max ‖g‖∞)."""
    gen = torch.Generator().manual_seed(0)
    cid = cb.codebook_id(codebook, 8)
    e = torch.zeros(2048)
    out, e_inf, g_inf = [], 0.0, 0.0
    for t in range(steps):
        u = torch.rand(2048, generator=gen) - 0.5
        g = -torch.sign(u) * torch.log1p(-2 * u.abs())
        g[0] = spike
        x = g + e
        e = feedback.feedback_residual(x, ref.decompress(ref.compress(x, bits, 2048, cid, t), (2048,), torch.float32))
        out.append(abs(float(e[0])))
        e_inf, g_inf = max(e_inf, float(e.abs().max())), max(g_inf, float(g.abs().max()))
    return out, e_inf, g_inf


@pytest.mark.parametrize("codebook", ["tnq", "tqsgd"])
@pytest.mark.parametrize("bits", [2, 3])
def test_mean_scaled_codebook_winds_up_a_persistent_coordinate(codebook, bits):
    r, _, _ = _feedback_run(codebook, bits, 40)
    # each step sends at most the clip level (a few times mean|x|), so the rest accumulates: after 40 steps the
    # residual exceeds 10 gradients and is still growing
    assert r[-1] > 10 * 20.0 and r[-1] > r[19] > r[9], r[::10]


@pytest.mark.parametrize("codebook, bits", [("qsgd", 2), ("qsgd", 3), ("nqsgd", 3), ("nqsgd", 4)])
def test_max_scaled_codebook_bounds_every_residual(codebook, bits):
    """Nothing is clipped and a stochastic rounding errs by less than its cell: |e_i| < ρ·‖g + e‖∞ with ρ the widest
    gap of the table (units of max|x|), so by induction ‖e‖∞ ≤ ρ/(1 − ρ)·max‖g‖∞ (docs/codebooks.md §5)."""
    lv = cb.levels(codebook, bits)
    rho = max(b - a for a, b in zip(lv, lv[1:]))
    assert rho < 1  # nqsgd at 2 bits has a middle cell of width 1: no such bound
    r, e_inf, g_inf = _feedback_run(codebook, bits, 40)
    assert e_inf <= rho / (1 - rho) * g_inf * (1 + 1e-5), (e_inf, g_inf, rho)
    assert max(r) <= rho / (1 - rho) * 20.0 * (1 + 1e-5)
