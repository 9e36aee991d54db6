import math

import pytest

from tnq_kernels import codebooks as cb

# docs/format.md reference numbers.
SPEC_ALPHA = {2: 1.790729, 3: 3.199464, 4: 4.877400, 5: 6.733956}
SPEC_BOUND = {2: 0.6061, 3: 0.2370, 4: 0.07742, 5: 0.02246}


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_tnq_alpha_and_bound_match_spec(bits):
    assert cb.tnq_alpha(bits) == pytest.approx(SPEC_ALPHA[bits], abs=1e-6)
    assert cb.tnq_mse_bound(bits) == pytest.approx(SPEC_BOUND[bits], rel=1e-3)
    lv = cb.levels("tnq", bits)
    assert lv[-1] == pytest.approx(SPEC_ALPHA[bits], abs=1e-6) and lv[0] == -lv[-1]


def test_tnq_three_bit_levels_match_spec():
    expect = [0.295100, 0.989893, 1.895692, 3.199464]
    lv = cb.levels("tnq", 3)
    assert lv[4:] == pytest.approx(expect, abs=1e-6)
    assert lv[:4] == pytest.approx([-v for v in reversed(expect)], abs=1e-6)


@pytest.mark.parametrize("name", list(cb.CODEBOOK_IDS))
@pytest.mark.parametrize("bits", range(1, 9))
def test_levels_are_fp32_sorted_symmetric(name, bits):
    lv = cb.levels(name, bits)
    assert len(lv) == 2**bits
    assert all(a < b for a, b in zip(lv, lv[1:]))
    sym = lv[:-1] if name in ("qsgd_l2", "nuqsgd_l2") and bits > 1 else lv  # their spare top level: see the module
    assert all(a == -b for a, b in zip(sym, reversed(sym)))
    assert all(cb._f32(v) == v for v in lv)
    ig = cb.inv_gaps(name, bits)
    assert len(ig) == 2**bits - 1
    assert all(g == pytest.approx(1 / (b - a), rel=1e-6) for g, a, b in zip(ig, lv, lv[1:]))


def test_tnq_level_density_is_cube_root_of_laplace():
    # Levels are equally spaced in the CDF of a density ∝ exp(-|g|/3): the u-map of docs/format.md lands on integers.
    s, a = 15, cb.TNQ_A
    for k, c in enumerate(cb.levels("tnq", 4)):
        u = s / 2 + math.copysign(1, c) * (s + a) / 2 * (-math.expm1(-abs(c) / 3))
        assert u == pytest.approx(k, abs=1e-5)


def test_baselines():
    assert cb.levels("qsgd", 2) == pytest.approx((-1, -1 / 3, 1 / 3, 1))
    assert cb.levels("nqsgd", 3) == (-1, -0.5, -0.25, -0.125, 0.125, 0.25, 0.5, 1)
    w = cb.lambert_w0(49.0)
    assert w * math.exp(w) == pytest.approx(49.0, rel=1e-14)
    assert cb.levels("tqsgd", 3)[-1] == pytest.approx(w, rel=1e-7)
    assert cb.scale_rule("tnq") == cb.scale_rule("tqsgd") == cb.SCALE_MEAN_ABS
    assert cb.scale_rule("qsgd") == cb.scale_rule("nqsgd") == cb.SCALE_MAX_ABS


@pytest.mark.parametrize("bad", [0, 9, -1, 3.0, True, "3"])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        cb.check_bits(bad)


@pytest.mark.parametrize("bad", ["tnqq", 16, -1, None, True, "rtnq3"])
def test_bad_codebook(bad):
    with pytest.raises(ValueError, match="codebook"):
        cb.codebook_id(bad)
