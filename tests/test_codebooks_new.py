"""The codebooks added after the first four: the papers' L2-scaled QSGD / NUQSGD (ids 4, 5), the bias-aware robust
TNQ family rtnq{N} (ids 6-14) and tnq_max (15, for error feedback). Tables and their derivation (docs/codebooks.md), scale rules, unbiasedness and the error of the
N-client average on Laplace data against the numbers the derivation predicts, on the reference (the oracle)."""
import math

import pytest
import torch

from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref
import tnq_kernels as tnq

from conftest import laplace

NEW = ["qsgd_l2", "nuqsgd_l2"] + [f"rtnq{n}" for n in cb.RTNQ_CLIENTS] + ["tnq_max"]
FAST_BITS = [2, 3, 4, 5]


# ---- tables ----

def test_ids_are_new_and_contiguous():
    assert [cb.CODEBOOK_IDS[k] for k in ("tnq", "tqsgd", "nqsgd", "qsgd")] == [0, 1, 2, 3]
    assert sorted(cb.CODEBOOK_IDS.values()) == list(range(cb.NUM_CODEBOOKS))
    assert [cb.CODEBOOK_IDS[k] for k in NEW] == list(range(4, 16))
    from tnq_kernels import format as fmt
    assert fmt.NUM_CODEBOOKS == cb.NUM_CODEBOOKS


@pytest.mark.parametrize("bits", range(1, 9))
def test_rtnq1_is_tnq_and_alpha_grows_with_clients(bits):
    assert cb.levels("rtnq1", bits) == cb.levels("tnq", bits)
    tops = [cb.levels(f"rtnq{n}", bits)[-1] for n in cb.RTNQ_CLIENTS]
    assert all(a < b for a, b in zip(tops, tops[1:]))
    for n, top in zip(cb.RTNQ_CLIENTS, tops):
        assert top == pytest.approx(cb.rtnq_alpha(bits, n), rel=1e-6)


@pytest.mark.parametrize("clients", cb.RTNQ_CLIENTS)
def test_rtnq_levels_have_cube_root_laplace_density_on_their_range(clients):
    # equally spaced in the CDF of ∝ exp(-|g|/3) on [-α_N, α_N]: the u-map with a_N lands on integers
    s, a = 15, cb.rtnq_a(clients)
    for k, c in enumerate(cb.levels(f"rtnq{clients}", 4)):
        u = s / 2 + math.copysign(1, c) * (s + a) / 2 * (-math.expm1(-abs(c) / 3))
        assert u == pytest.approx(k, abs=1e-5)


@pytest.mark.parametrize("bits", range(1, 9))
def test_tnq_max_is_tnq_density_over_the_expected_block_max(bits):
    # H_n = E[max of n Exp(1)] (Rényi): the range α, in units of the Laplace scale, of a block of TNQ_MAX_BLOCK draws
    assert cb.TNQ_MAX_ALPHA == math.fsum(1 / i for i in range(1, cb.TNQ_MAX_BLOCK + 1))
    c = cb.levels("tnq_max", bits)
    assert c[0] == -1.0 and c[-1] == 1.0 and c == tuple(-v for v in reversed(c))
    # equally spaced in the CDF of ∝ exp(-|g|/3) on [-α, α] once the levels are scaled back by α
    s, alpha = (1 << bits) - 1, cb.TNQ_MAX_ALPHA
    a = s / math.expm1(alpha / 3)
    for k, v in enumerate(c):
        u = s / 2 + math.copysign(1, v) * (s + a) / 2 * (-math.expm1(-abs(v) * alpha / 3))
        assert u == pytest.approx(k, abs=1e-5)
    assert cb.scale_rule("tnq_max") == cb.SCALE_MAX_ABS


@pytest.mark.parametrize("bits", range(2, 9))
def test_l2_baselines_are_the_papers_level_sets(bits):
    m = 2 ** (bits - 1) - 1  # the papers' s
    q, nu = cb.levels("qsgd_l2", bits), cb.levels("nuqsgd_l2", bits)
    assert q[:-1] == pytest.approx([j / m for j in range(-m, m + 1)], abs=1e-7)
    mags = [0.0] + [2.0 ** (j - m) for j in range(1, m + 1)]
    assert nu[:-1] == tuple(cb._f32(v) for v in [-v for v in reversed(mags[1:])] + mags)
    assert q[-1] > 1 and nu[-1] > 1  # the spare level is out of reach of |g|/‖g‖₂ <= 1
    assert cb.scale_rule("qsgd_l2") == cb.scale_rule("nuqsgd_l2") == cb.SCALE_L2


def test_one_bit_l2_baselines():
    assert cb.levels("qsgd_l2", 1) == cb.levels("nuqsgd_l2", 1) == (-1.0, 1.0)


@pytest.mark.parametrize("n, cls", [(1, 1), (2, 2), (3, 4), (5, 4), (6, 8), (8, 8), (11, 8), (12, 16),
                                    (181, 128), (182, 256), (10**6, 256)])
def test_client_classes_round_in_log_scale(n, cls):
    assert cb.rtnq_class(n) == cls
    assert cb.codebook_id("rtnq", clients=n) == cb.CODEBOOK_IDS[f"rtnq{cls}"]
    assert cb.rtnq_clients(cb.codebook_id("rtnq", clients=n)) == cls


def test_rtnq_family_defaults_and_errors():
    assert cb.codebook_id("rtnq") == cb.CODEBOOK_IDS["rtnq1"]
    assert cb.codebook_id("tnq", clients=8) == 0  # ignored by the other codebooks
    assert cb.rtnq_clients("tnq") is None
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="clients"):
            cb.codebook_id("rtnq", clients=bad)


# ---- the derivation (docs/codebooks.md §2) ----

def _model_error(alpha, bits, clients):
    """bias² + variance/N per element, Laplace γ = 1, levels ∝ p^(1/3) on [-α, α], the paper's Δ²/4 bound."""
    s = 2 ** bits - 1
    t = math.exp(-alpha / 3)
    return 2 * t ** 3 + 27 * (1 - t) ** 3 / (clients * s * s)


@pytest.mark.parametrize("bits", FAST_BITS)
@pytest.mark.parametrize("clients", [1, 2, 8, 64, 256])
def test_alpha_n_minimises_the_model(bits, clients):
    lo, hi = 0.1, 40.0  # golden-section search: the model is unimodal in α
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _model_error(a, bits, clients) < _model_error(b, bits, clients):
            hi = b
        else:
            lo = a
    assert lo == pytest.approx(cb.rtnq_alpha(bits, clients), rel=1e-6)
    assert _model_error(lo, bits, clients) == pytest.approx(cb.rtnq_mse_bound(bits, clients), rel=1e-9)


def laplace_error(levels, clients, sigma=1.0, xmax=60.0, n=400001):
    """Exact E[bias²] and E[rounding variance] per element for Laplace(γ = 1) data under a table scaled by sigma
    (numerical integration): returns (bias², variance); the N-client average's error is bias² + variance/N."""
    x = torch.linspace(0.0, xmax, n, dtype=torch.float64)
    w = torch.exp(-x) * (x[1] - x[0])
    w[0] *= 0.5
    w[-1] *= 0.5  # trapezoid on the one-sided density e^{-x} (the table is symmetric up to the spare level)
    c = torch.tensor(levels, dtype=torch.float64) * sigma
    top = c[-1] if c[-1] == -c[0] else c[-2]
    z = torch.clamp(x, max=float(top))
    k = torch.clamp(torch.searchsorted(c, z, right=True) - 1, 0, len(levels) - 2)
    var = (z - c[k]) * (c[k + 1] - z)
    return float((w * (x - z) ** 2).sum()), float((w * var).sum())


@pytest.mark.parametrize("bits", FAST_BITS)
def test_rtnq_beats_tnq_on_the_average_it_was_derived_for(bits):
    # the exact Laplace error of the 8-client average (not the bound the derivation minimised)
    b8, v8 = laplace_error(cb.levels("rtnq8", bits), 8)
    b1, v1 = laplace_error(cb.levels("tnq", bits), 8)
    assert b8 + v8 / 8 < 0.75 * (b1 + v1 / 8)
    assert b8 < b1 and v8 > v1  # it trades rounding noise (which averages out) for less truncation bias
    # and for one client, tnq (= rtnq1) is the better of the two
    assert b1 + v1 < b8 + v8


# ---- scale rules (reference) ----

def test_l2_scale_is_the_block_norm():
    x = laplace(5000, seed=1)
    for block in (0, 2048, 32):
        s = ref.block_scales(x, block, cb.CODEBOOK_IDS["qsgd_l2"])
        want = x.double().norm() if block == 0 else torch.stack(
            [x[i:i + block].double().norm() for i in range(0, 5000, block)])
        assert torch.equal(s, want.reshape(-1).float())


def test_m2_m1_scale_is_laplace_gamma_and_blind_to_zeros():
    x = laplace(2 ** 20, scale=0.37, seed=2)
    rid = cb.CODEBOOK_IDS["rtnq8"]
    s = ref.block_scales(x, 0, rid)
    assert float(s) == pytest.approx(0.37, rel=0.01)  # sd of the estimator ≈ 1.9/√n
    # exact zeros (dead ReLU rows) leave both sums unchanged: the same fp32 scale bit for bit
    xz = torch.cat([x, torch.zeros(2 ** 19)])[torch.randperm(3 * 2 ** 19, generator=torch.Generator().manual_seed(0))]
    assert torch.equal(ref.block_scales(xz, 0, rid), s)
    assert float(ref.block_scales(xz, 0, 0)) < 0.7 * 0.37  # while mean|g| shrinks by the zero fraction


def test_m2_m1_scale_grows_with_the_tail():
    # Laplace scale mixture (heavier tail): mean g² / mean|g|² > 2 and the scale exceeds mean|g| by half that ratio
    gen = torch.Generator().manual_seed(3)
    theta = torch.exp(0.8 * torch.randn(2 ** 20, generator=gen, dtype=torch.float64))
    x = (laplace(2 ** 20, seed=4).double() * theta).float()
    m1, m2 = float(x.double().abs().mean()), float(x.double().pow(2).mean())
    s = float(ref.block_scales(x, 0, cb.CODEBOOK_IDS["rtnq1"]))
    assert s == pytest.approx(m2 / (2 * m1), rel=1e-6)
    assert m2 / m1 ** 2 > 3 and s > 1.5 * m1


@pytest.mark.parametrize("codebook", ["qsgd_l2", "nuqsgd_l2", "rtnq8"])
def test_edge_blocks(codebook):
    cid = cb.CODEBOOK_IDS[codebook]
    x = torch.zeros(96)
    x[40] = float("nan")
    x[70] = float("inf")
    x[64:68] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    s = ref.block_scales(x, 32, cid)
    assert s[0] == 0 and not torch.isfinite(s[1]) and not torch.isfinite(s[2])
    y = ref.decompress(ref.compress(x, 3, 32, cid, 5), (96,), torch.float32)
    assert torch.equal(y[:32], torch.zeros(32)) and not torch.isfinite(y[32:]).any()


# ---- unbiasedness and the error of the average (reference, Monte Carlo) ----

def _expectations(x, bits, block, cid):
    """Exact E[ĝ] and E[(ĝ − E ĝ)²] per element given the stored scales (stochastic rounding on the table)."""
    scales, z = ref.scale_truncate(x, bits, block, cid)
    c = torch.tensor(cb.levels(cid, bits), dtype=torch.float64)
    zz = z.double()
    k = torch.clamp(torch.searchsorted(c[1:-1].contiguous(), zz, right=True), 0, len(c) - 2)
    sb = scales.double()[ref._block_ids(x.numel(), block, x.device)]
    return sb * zz, sb ** 2 * (zz - c[k]) * (c[k + 1] - zz)


@pytest.mark.parametrize("codebook", NEW)
def test_unbiased_wrt_its_truncated_value(codebook):
    cid, bits, n, reps = cb.CODEBOOK_IDS[codebook], 3, 4096, 256
    x = laplace(n, seed=5)
    mean, var = _expectations(x, bits, 1024, cid)
    acc = torch.zeros(n, dtype=torch.float64)
    for r in range(reps):
        acc += ref.decompress(ref.compress(x, bits, 1024, cid, 1000 + r), (n,), torch.float32).double()
    err = (acc / reps - mean) / torch.sqrt(var / reps + 1e-30)
    # per-element z-scores of an unbiased estimator: the mean over 4096 of them is ~N(0, 1/64)
    assert abs(float(err[var > 0].mean())) < 5 / math.sqrt(int((var > 0).sum()))
    assert float((err[var > 0] ** 2).mean()) == pytest.approx(1.0, abs=0.15)
    if codebook.endswith("_l2") or codebook == "tnq_max":  # nothing is clipped: E[ĝ] = g up to the fp32 rounding of z = g·r
        assert torch.allclose(mean, x.double(), rtol=1e-6, atol=1e-9)


# Laplace per-element error of the N-client average, one scale for 2^17 elements: (bias², variance) from the
# numerical integral above (at the stored scale) must match the implementation's Monte Carlo.
@pytest.mark.parametrize("bits", FAST_BITS)
@pytest.mark.parametrize("clients", [1, 8])
def test_laplace_error_of_the_average_matches_the_derivation(bits, clients):
    cid = cb.codebook_id("rtnq", clients=clients)
    n, block = 2 ** 17, 0
    x = laplace(n, seed=6 + bits)
    mean, var = _expectations(x, bits, block, cid)
    bias2 = float(((mean - x.double()) ** 2).mean())
    v = float(var.mean())
    sigma = float(ref.block_scales(x, block, cid))
    want_b, want_v = laplace_error(cb.levels(cid, bits), clients, sigma=sigma)
    # bias² is a tail average: for Laplace E(|g|-α)₊² = 2e^{-α} and E(|g|-α)₊⁴ = 24e^{-α}, so its relative sd
    # over n samples is √(6e^α/n)
    alpha = cb.levels(cid, bits)[-1] * sigma
    assert bias2 == pytest.approx(want_b, rel=4 * math.sqrt(6 * math.exp(alpha) / n))
    assert v == pytest.approx(want_v, rel=0.02)
    # and the implementation's average over N clients realises bias² + variance/N (Monte Carlo over 4 repeats)
    errs = []
    for r in range(4):
        avg = sum(ref.decompress(ref.compress(x, bits, block, cid, 7919 * r + c), (n,), torch.float32).double()
                  for c in range(clients)) / clients
        errs.append(float(((avg - x.double()) ** 2).mean()))
    assert sum(errs) / 4 == pytest.approx(bias2 + v / clients, rel=0.03)


# ---- public API ----

def test_api_clients_picks_the_member_and_decodes_without_it():
    x = laplace(3000, seed=8)
    p = tnq.compress(x, 3, 2048, "rtnq", seed=1, backend="reference", clients=6)
    assert tnq.read_header(p).codebook == cb.CODEBOOK_IDS["rtnq8"]
    assert torch.equal(p, tnq.compress(x, 3, 2048, "rtnq8", seed=1, backend="reference"))
    y = tnq.decompress(p, backend="reference")
    assert y.shape == x.shape and torch.isfinite(y).all()
    s, z = tnq.scale_truncate(x, 3, 2048, "rtnq", backend="reference", clients=6)
    assert float(z.max()) <= cb.levels("rtnq8", 3)[-1]


def test_horovod_optimizer_passes_its_world_size():
    from test_horovod import FakeHvd, Hub
    from tnq_kernels import horovod as tnq_hvd
    hub, W = Hub(4), 4
    models = [torch.nn.Linear(8, 3) for _ in range(W)]
    opts = [tnq_hvd.DistributedOptimizer(
        torch.optim.SGD(m.parameters(), lr=0.1), named_parameters=m.named_parameters(),
        compression=tnq_hvd.TNQCompressor(codebook="rtnq", block_size=32, backend="reference"),
        hvd=FakeHvd(hub, r)) for r, m in enumerate(models)]
    for r in range(W):
        models[r](torch.randn(5, 8)).pow(2).mean().backward()
    for o in opts:
        o.step()
    ids = {tnq.read_header(t).codebook for parts in hub.sent.values() for t in parts.values()}
    assert ids == {cb.CODEBOOK_IDS["rtnq4"]}


# ---- fast backends: the same codes as the reference at equal seed ----

def _heavy(n, seed, dtype=torch.float32):
    """Laplace with a log-normal scale and 1/7 exact zeros: heavier-tailed than Laplace, as real gradients."""
    gen = torch.Generator().manual_seed(seed)
    x = laplace(n, seed=seed).double() * torch.exp(0.8 * torch.randn(n, generator=gen, dtype=torch.float64))
    x[::7] = 0
    return x.to(dtype)


def _payload_equal(got, want):
    diff = (got.cpu() != want).nonzero().flatten()
    assert diff.numel() == 0, f"payload bytes differ at {diff[:8].tolist()}"


@pytest.mark.parametrize("codebook", NEW)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_cpu_codes_equal_reference(native, codebook, bits):
    cid = cb.CODEBOOK_IDS[codebook]
    for n, block, dtype in [(0, 0, torch.float32), (1, 32, torch.float16), (33, 0, torch.bfloat16),
                            (4097, 96, torch.float32), (70_001, 0, torch.float32), (70_001, 2048, torch.bfloat16),
                            (40_000, 32768, torch.float32)]:
        x = _heavy(n, seed=n + bits, dtype=dtype)
        _payload_equal(torch.ops.tnq.compress(x, bits, block, cid, 99), ref.compress(x, bits, block, cid, 99))
        s1, z1 = torch.ops.tnq.scale_truncate(x, bits, block, cid)
        s2, z2 = ref.scale_truncate(x, bits, block, cid)
        assert torch.equal(s1, s2) and torch.equal(z1, z2), (n, block, dtype)
        assert torch.equal(torch.ops.tnq.quantize(z2, bits, cid, 5), ref.quantize(z2, bits, cid, 5))


@pytest.mark.parametrize("codebook", ["qsgd_l2", "nuqsgd_l2", "rtnq8"])
def test_cpu_edge_blocks_equal_reference(native, codebook):
    cid = cb.CODEBOOK_IDS[codebook]
    x = torch.zeros(256)
    x[40], x[70], x[100] = float("nan"), float("inf"), -float("inf")
    x[200:] = laplace(56, seed=1) * 1e-42  # subnormal values: the L2 norm and Σg²/(2Σ|g|) need fp64 sums
    for block in (0, 32, 64):
        _payload_equal(torch.ops.tnq.compress(x, 3, block, cid, 7), ref.compress(x, 3, block, cid, 7))


@pytest.mark.parametrize("codebook", NEW)
def test_triton_interpreter_codes_equal_reference(codebook):
    T = pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")
    cid = cb.CODEBOOK_IDS[codebook]
    # B = 0 (partials), 96 (blocks in registers), 8192 (tiled blocks); bf16 input; 3 bits
    for n, block, dtype in [(33, 0, torch.float32), (5000, 96, torch.bfloat16), (20_000, 8192, torch.float32)]:
        x = _heavy(n, seed=n, dtype=dtype)
        _payload_equal(T.compress(x, 3, block, cid, 99), ref.compress(x, 3, block, cid, 99))
        s1, z1 = T.scale_truncate(x, 3, block, cid)
        s2, z2 = ref.scale_truncate(x, 3, block, cid)
        assert torch.equal(s1, s2) and torch.equal(z1, z2), (n, block, dtype)
    p = ref.compress(x, 3, 8192, cid, 99)
    assert torch.equal(T.decompress(p, (n,), torch.float32), ref.decompress(p, (n,), torch.float32))


@pytest.mark.parametrize("codebook", ["qsgd_l2", "rtnq8"])
def test_opcheck_new_codebooks(native, codebook):
    cid = cb.CODEBOOK_IDS[codebook]
    x = _heavy(300, seed=3).view(10, 30)
    torch.library.opcheck(torch.ops.tnq.compress.default, (x, 3, 96, cid, 7))
    torch.library.opcheck(torch.ops.tnq.scale_truncate.default, (x, 3, 0, cid))
    p = torch.ops.tnq.compress(x, 3, 96, cid, 7)
    torch.library.opcheck(torch.ops.tnq.decompress.default, (p, [10, 30], torch.float32))
    T = pytest.importorskip("tnq_kernels.triton", reason="triton is not installed")
    from tnq_kernels.triton import _common as C
    torch.library.opcheck(torch.ops.tnq.triton_compress, (x, C.table(cid, 3, x.device), 3, 96, cid, 7))
