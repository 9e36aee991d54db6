"""tnq_kernels.feedback: error feedback's shared pieces, and the warning for error feedback with a clipping codebook.

The warning's reason is tested as behaviour, not only as a message: under error feedback a coordinate whose
gradient keeps its sign winds up its residual with a mean-scaled codebook (tnq, tqsgd), and does not with a
max-scaled one (qsgd, nqsgd).
"""
import types
import warnings

import pytest
import torch

import tnq_kernels as tnq
from tnq_kernels import codebooks as cb
from tnq_kernels import ddp as tnq_ddp
from tnq_kernels import feedback
from tnq_kernels import horovod as tnq_hvd
from tnq_kernels import reference as ref

CLIPPING = ("tnq", "tqsgd", "rtnq", "rtnq8", cb.codebook_id("rtnq1"))
NOT_CLIPPING = ("qsgd", "nqsgd", "qsgd_l2", "nuqsgd_l2", "tnq_max", cb.codebook_id("qsgd"))


@pytest.mark.parametrize("codebook", CLIPPING)
@pytest.mark.parametrize("bits", [2, 3, 5])
def test_clipping_codebook_with_feedback_warns_naming_what_to_use(codebook, bits):
    with pytest.warns(feedback.FeedbackWarning, match=r"error_feedback=True.*Use codebook='qsgd'"):
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
        state = tnq_ddp.TNQState(codebook="rtnq", bits=2, error_feedback=True)  # rtnq clips
    assert state.error_feedback and state.codebook == "rtnq"
    assert rec[0].filename == __file__  # stacklevel: the user's line, not the library's
    with pytest.warns(feedback.FeedbackWarning, match="'tnq'"):
        tnq_ddp.TNQState(codebook="tnq", bits=3, error_feedback=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tnq_ddp.TNQState(codebook="qsgd", bits=2, error_feedback=True)
        tnq_ddp.TNQState(bits=2)


def test_integrations_pick_the_feedback_codebook_when_none_is_given():
    """No codebook named: rtnq, or with error feedback the measured FEEDBACK_CODEBOOK (no warning); a named one is
    kept (and warned about if it clips)."""
    assert feedback.default_codebook(None, False) == tnq.api.DEFAULT_CODEBOOK == "rtnq"
    assert feedback.default_codebook(None, True) == feedback.FEEDBACK_CODEBOOK == "qsgd"
    assert feedback.default_codebook("tnq", True) == "tnq" and feedback.default_codebook(0, False) == 0
    assert not feedback.clips(feedback.FEEDBACK_CODEBOOK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tnq_ddp.TNQState(bits=2, error_feedback=True).codebook == "qsgd"
        assert tnq_ddp.TNQState(bits=2).codebook == "rtnq"
        fake = types.SimpleNamespace(rank=lambda: 0, size=lambda: 2, Average="Average", Sum="Sum")
        opt = tnq_hvd.DistributedOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1),
                                           error_feedback=True, hvd=fake)
        assert opt._compression.codebook == "qsgd"


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


@pytest.mark.parametrize("codebook, bits", [("qsgd", 2), ("qsgd", 3), ("nqsgd", 3), ("nqsgd", 4), ("tnq_max", 2),
                                            ("tnq_max", 3)])
def test_max_scaled_codebook_bounds_every_residual(codebook, bits):
    """Nothing is clipped and a stochastic rounding errs by less than its cell: |e_i| < ρ·‖g + e‖∞ with ρ the widest
    gap of the table (units of max|x|), so by induction ‖e‖∞ ≤ ρ/(1 − ρ)·max‖g‖∞ (docs/codebooks.md §5)."""
    lv = cb.levels(codebook, bits)
    rho = max(b - a for a, b in zip(lv, lv[1:]))
    assert rho < 1  # nqsgd at 2 bits has a middle cell of width 1: no such bound
    r, e_inf, g_inf = _feedback_run(codebook, bits, 40)
    assert e_inf <= rho / (1 - rho) * g_inf * (1 + 1e-5), (e_inf, g_inf, rho)
    assert max(r) <= rho / (1 - rho) * 20.0 * (1 + 1e-5)


# ---- the derivation under error feedback (docs/codebooks.md §5, experiments/codebook_math.py) ----

BITS = [2, 3, 4, 5]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_ef_alpha_minimises_one_clients_model_error(bits, rounding):
    from experiments import codebook_math as cm
    lo = cm.golden(lambda a: cm.ef_model_error(a, bits, rounding), 0.1, 40.0, it=200)
    assert lo == pytest.approx(cm.ef_alpha(bits, rounding), rel=1e-6)
    assert cm.ef_model_error(lo, bits, rounding) == pytest.approx(cm.ef_error_bound(bits, rounding), rel=1e-9)


@pytest.mark.parametrize("bits", BITS)
def test_one_clients_optimum_with_stochastic_rounding_is_tnqs_threshold(bits):
    from experiments import codebook_math as cm
    assert cm.ef_alpha(bits, "stochastic") == pytest.approx(cb.tnq_alpha(bits), rel=1e-12)
    assert cm.ef_alpha(bits, "stochastic") < cb.rtnq_alpha(bits, 8)  # feedback wants less range than rtnq8


@pytest.fixture(scope="module")
def laplace_grid():
    """|g| ~ Laplace(1) on codebook_math's grid with 20k points (the study uses 200k: slower, same conclusions)."""
    from experiments import codebook_math as cm
    x = cm._grid(80.0, 20_001)
    return x, cm._weights(x, torch.exp(-x))


@pytest.mark.parametrize("bits", BITS)
def test_nearest_rounding_has_the_lower_per_client_error(bits, laplace_grid):
    """Exact integration: at each rounding's own optimal α (p^(1/3) tables), one client's error with rounding to the
    nearest level is below stochastic rounding's, and each closed form is within 5% of its exact optimum."""
    from experiments import codebook_math as cm
    x, w = laplace_grid
    best = {}
    for rounding in ("stochastic", "nearest"):
        def f(al):
            b2, v = cm.errors(cm.tnq_shape(bits, al), 1.0, x, w, rounding)
            return b2 + v
        alpha = cm.ef_alpha(bits, rounding)
        best[rounding] = f(cm.golden(f, 0.3 * alpha, 3 * alpha, it=40))
        assert f(alpha) <= 1.05 * best[rounding]
    assert best["nearest"] < 0.8 * best["stochastic"], best


def test_panter_dite_rounding_error_ratio_on_a_fine_table(laplace_grid):
    """On a fine table the nearest level errs by Δ²/12 per cell and stochastic rounding by Δ²/6: ratio 2."""
    from experiments import codebook_math as cm
    x, w = laplace_grid
    lv = cm.tnq_shape(8, cm.ef_alpha(8))
    _, v_sr = cm.errors(lv, 1.0, x, w, "stochastic")
    _, v_rn = cm.errors(lv, 1.0, x, w, "nearest")
    assert v_sr / v_rn == pytest.approx(2.0, rel=0.02)


#: docs/codebooks.md §5, table "one client's error, stochastic vs nearest rounding": 'exact at α' of the stochastic
#: rows, whose α is TNQ's α* (the "tnq" codebook's table)
DOC_TNQ_STOCHASTIC = {2: 0.52162, 3: 0.18673, 4: 0.05699, 5: 0.01581}
#: docs/codebooks.md §5, "The option": rounding="nearest" on the same table (4 decimals)
DOC_TNQ_NEAREST = {2: 0.4283, 3: 0.1339, 4: 0.0360, 5: 0.0091}


@pytest.mark.parametrize("bits", BITS)
def test_codec_nearest_rounding_error_on_laplace_data(bits, laplace_grid):
    """The codec itself (reference; codebook "tnq", block 2048, the scale estimated per block) on 2^21 Laplace(γ = 1)
    draws: the per-element MSE of rounding="nearest" is below "stochastic"'s, and each matches its exact value on the
    same table (α*): stochastic the docs' table, nearest by numerical integration (the docs' "The option" table).

    Tolerance: 4 Monte-Carlo standard errors of the mean (sd of the per-element squared error / √n, 0.3-0.8% here),
    computed in the test; the per-block scale estimate (mean|g| of 2048 draws, ±2.2%) moves the MSE far less than
    one standard error (measured: every MC value within 0.7 se of its exact one at 2-5 bits)."""
    import math

    from conftest import laplace
    from experiments import codebook_math as cm
    from tnq_kernels import rng
    x, w = laplace_grid
    exact = {r: sum(cm.errors(cb.levels("tnq", bits), 1.0, x, w, r)) for r in rng.ROUNDING_IDS}
    assert exact["stochastic"] == pytest.approx(DOC_TNQ_STOCHASTIC[bits], abs=1e-5)
    assert exact["nearest"] == pytest.approx(DOC_TNQ_NEAREST[bits], abs=5e-5)
    n = 1 << 21
    g = laplace(n, seed=11)
    mse = {}
    for r, rid in rng.ROUNDING_IDS.items():
        e = (ref.decompress(ref.compress(g, bits, 2048, "tnq", 5, rid), [n], torch.float32).double() - g.double()) ** 2
        mse[r] = e.mean().item()
        assert abs(mse[r] - exact[r]) < 4 * e.std().item() / math.sqrt(n), (r, mse[r], exact[r])
    assert mse["nearest"] < mse["stochastic"] and exact["nearest"] < 0.85 * exact["stochastic"], (mse, exact)


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_tnq_max_is_the_max_scaled_table_with_the_lowest_error(bits, rounding):
    """With the scale at the block maximum (no wind-up), levels ∝ p^(1/3) over the expected maximum H_n cut one
    client's Laplace error well below qsgd's and nqsgd's, within 6% of the best α for that construction (2 bits,
    nearest: 5%; elsewhere under 1%), and the codec's error is the model's (docs/codebooks.md §5)."""
    from experiments import codebook_math as cm
    x = cm.laplace_sample(16 * 2048, 3)
    err = {c: cm.max_scaled_error(cb.levels(c, bits), x, 2048, rounding) for c in ("qsgd", "nqsgd", "tnq_max")}
    assert err["tnq_max"] < 0.5 * min(err["qsgd"], err["nqsgd"]), err

    def f(al):
        t = cm.tnq_shape(bits, al)
        return cm.max_scaled_error([v / t[-1] for v in t], x, 2048, rounding)
    best = f(cm.golden(f, 2.0, 20.0, it=30))
    assert best <= err["tnq_max"] < 1.06 * best
    codec = cm.codec_error("tnq_max", bits, x, 2048, rounding, 2)
    assert codec == pytest.approx(err["tnq_max"], rel=0.02 if rounding == "stochastic" else 1e-3)


@pytest.mark.parametrize("codebook", ["tnq", "rtnq8", "qsgd"])
def test_windup_point_is_where_clipping_stops_the_residual(codebook):
    """Clipping only (other entries fixed and sent exactly): iterate x_0 ← g + e_0, e_0 ← x_0 − min(x_0, t(x)) with
    the codebook's scale rule and top level until it settles; it settles at windup_point."""
    from experiments import codebook_math as cm
    n, g = 64, 5.0
    others = torch.linspace(0.05, 1.5, n - 1, dtype=torch.float64)
    s1, s2 = float(others.sum()), float((others ** 2).sum())
    rule, top = cb.scale_rule(codebook), cb.levels(codebook, 2)[-1]
    e = 0.0
    for _ in range(20000):
        x0 = g + e
        if rule == cb.SCALE_MEAN_ABS:
            t = top * (x0 + s1) / n
        elif rule == cb.SCALE_M2_M1:
            t = top * (x0 * x0 + s2) / (2 * (x0 + s1))
        else:
            t = top * max(x0, float(others.max()))
        e = x0 - min(x0, t)
    assert g + e == pytest.approx(cm.windup_point(rule, g, n, top, s1, s2), rel=1e-6)
