"""tnq_kernels.fsdp: the compressed reduce-scatter under real FSDP2 (fully_shard) on gloo, 2, 3 and 4 ranks.

Every rank runs the checks in order (tests/multiproc.py spawns each world size once). The ranks compress with the
default backend (C++ on CPU); the simulation that judges them runs on the pure-PyTorch reference from every rank's
gathered input, so a rank's gradient shard equal to it bit for bit ties FSDP2's real data path to the oracle.
"""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

import multiproc

import tnq_kernels as tnq
from tnq_kernels import fsdp as tnq_fsdp
from tnq_kernels import ops

BACKEND = "reference" if ops.native_error is not None else None
SEED = 4321
BLOCK = 64


class Net(nn.Module):
    """Sizes that divide by no world size (7, 3 rows), 1-D parameters (biases, LayerNorm, the root's own scale)."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 7)
        self.ln = nn.LayerNorm(7)
        self.l2 = nn.Linear(7, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.l2(torch.relu(self.ln(self.l1(x)))) * self.scale


def _shard(model, mp=None, mesh=None):
    from torch.distributed.fsdp import fully_shard
    kw = {"mp_policy": mp} if mp is not None else {}
    if mesh is not None:
        kw["mesh"] = mesh
    for m in (model.l1, model.ln, model.l2):
        fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


def _data(rank):
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)


class Recorder(tnq_fsdp._ReduceScatterBase):
    """Wraps a module's reduce-scatter (ours or FSDP2's own): keeps (call, input, op, output) of every call."""

    def __init__(self, comm):
        self.comm, self.seen = comm, []

    def allocate(self, size, *, dtype, device):
        return self.comm.allocate(size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
        rec = {"t": getattr(self.comm, "calls", len(self.seen)), "input": input_tensor.clone(), "op": op}
        self.comm(output_tensor, input_tensor, group, op)
        rec["output"] = output_tensor.clone()
        self.seen.append(rec)


def _install(model, **kw):
    kw.setdefault("block_size", BLOCK)
    kw.setdefault("seed", SEED)
    kw.setdefault("min_numel", 0)
    state = tnq_fsdp.compress_reduce_scatter(model, backend=BACKEND, **kw)
    recs = {}
    for name, m in model.named_modules():
        if name in state.comms:
            recs[name] = Recorder(state.comms[name])
            m.set_custom_reduce_scatter(recs[name])
    return state, recs


def _gather(t):
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def _train(model, steps, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = _data(dist.get_rank())
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt


def _grads_match_outputs(model, state, recs, post_divide=None):
    """FSDP2 took each parameter's gradient shard from the output of our reduce-scatter (padding skipped)."""
    for name, m in model.named_modules():
        if name not in state.comms:
            continue
        out = recs[name].seen[-1]["output"]
        if post_divide is not None:
            out = out / post_divide
        off = 0
        for fp in m._get_fsdp_state()._fsdp_param_groups[0].fsdp_params:
            g = fp.sharded_param.grad.to_local()
            want = out[off: off + g.numel()].view(g.shape).to(g.dtype)
            assert torch.equal(g, want), f"{name}: gradient shard differs from the reduce-scatter output"
            off += fp.padded_sharded_param_size.numel()


def _check_against_simulation(state, recs, residuals=None):
    cfg, rank = state.config, dist.get_rank()
    checked, sq_err, sq_ref, mismatches = 0, 0.0, 0.0, []
    for name, rec in recs.items():
        comm = state.comms[name]
        res = None
        if residuals is not None:
            res = residuals.setdefault(name, None)
        for call in rec.seen:
            inputs = _gather(call["input"])
            if residuals is not None and res is None:
                W, k = len(inputs), cfg.node_size
                res = [torch.zeros(W // k, inputs[0].numel() // W) for _ in range(W)]
                residuals[name] = res
            want = tnq_fsdp.simulate(inputs, call["op"], cfg, SEED, call["t"], comm.index, backend="reference",
                                     residuals=res)[rank]
            if not torch.equal(call["output"], want):  # collected, not raised: every rank must finish its gathers
                mismatches.append(f"{name} call {call['t']}")
            exact = torch.stack([x.float() for x in inputs]).sum(0).view(len(inputs), -1)[rank]
            exact = exact * tnq_fsdp.op_weight(call["op"], len(inputs))
            sq_err += float((call["output"].float() - exact).square().sum())
            sq_ref += float(exact.square().sum())
            checked += 1
    assert not mismatches, f"rank {rank} differs from the simulation: {mismatches}"
    assert checked >= 8, checked
    # a sanity bound independent of the simulation: 3-bit rtnq's aggregate stays near the exact reduce-scatter
    # (without feedback: with it, each output also carries the residuals of earlier steps, by design)
    if residuals is None:
        assert sq_err < 0.25 * sq_ref, f"relative squared error {sq_err / sq_ref:.3f} at 3 bits"


# ---- the checks every rank runs ----

def check_sim(node_size=None, mp=None, error_feedback=False, setup=None, steps=2, post_divide=None, **kw):
    model = _shard(_model(), mp)
    if setup is not None:
        setup(model)
    state, recs = _install(model, node_size=node_size, error_feedback=error_feedback, **kw)
    _train(model, steps)
    _check_against_simulation(state, recs, {} if error_feedback else None)
    _grads_match_outputs(model, state, recs, post_divide)
    ops_seen = {getattr(c["op"], "op", c["op"]) for r in recs.values() for c in r.seen}
    return state, ops_seen


def _model():
    torch.manual_seed(0)
    return Net()


def check_flat_fp32():
    _, ops_seen = check_sim()
    assert ops_seen == {dist.ReduceOp.AVG}, ops_seen


def check_flat_bf16():
    from torch.distributed.fsdp import MixedPrecisionPolicy
    check_sim(mp=MixedPrecisionPolicy(reduce_dtype=torch.bfloat16))


def check_flat_fp16_sum():
    from torch.distributed.fsdp import MixedPrecisionPolicy
    _, ops_seen = check_sim(mp=MixedPrecisionPolicy(reduce_dtype=torch.float16))
    assert ops_seen == {dist.ReduceOp.SUM}, ops_seen  # fp16: FSDP2 pre- and post-divides around a SUM


def _each_fsdp_module(fn):
    from torch.distributed.fsdp import FSDPModule
    return lambda model: [fn(m) for m in model.modules() if isinstance(m, FSDPModule)]


def check_flat_premul_sum():
    _, ops_seen = check_sim(setup=_each_fsdp_module(lambda m: m.set_gradient_divide_factor(2.5)))
    assert ops_seen == {dist.ReduceOp.PREMUL_SUM}, ops_seen


def check_flat_force_sum():
    # FSDP2 divides our SUM's output by W afterwards, in place
    _, ops_seen = check_sim(setup=_each_fsdp_module(lambda m: m.set_force_sum_reduction_for_comms(True)),
                            post_divide=dist.get_world_size())
    assert ops_seen == {dist.ReduceOp.SUM}, ops_seen


def check_flat_error_feedback():
    state, _ = check_sim(error_feedback=True, steps=3)  # no codebook named: the feedback default
    assert state.config.codebook == "qsgd" and state.stats()["residual_bytes"] > 0


def check_flat_nearest_error_feedback():
    # the simulation is recomputed from state.config: the ranks' payloads must have used its rounding
    state, _ = check_sim(error_feedback=True, steps=3, codebook="qsgd", rounding="nearest")
    assert state.config.rounding == "nearest" and state.state_dict()["rounding"] == "nearest"


def check_hier_fp32():
    state, _ = check_sim(node_size=2)
    assert state.stats()["bytes_intra"] > 0


def check_hier_bf16_ef():
    from torch.distributed.fsdp import MixedPrecisionPolicy
    check_sim(node_size=2, mp=MixedPrecisionPolicy(reduce_dtype=torch.bfloat16), error_feedback=True)


def check_bytes():
    """Flat: (W−1) payloads per call; hierarchical (k = 2): (W/k − 1) across nodes, k times fewer than the flat
    mode sends to other nodes ((W−k) payloads)."""
    W = dist.get_world_size()
    flat = _shard(_model())
    sf, rf = _install(flat)
    _train(flat, 1)
    hier = _shard(_model())
    sh, rh = _install(hier, node_size=2)
    _train(hier, 1)
    for name, comm in sf.comms.items():
        chunk = rf[name].seen[-1]["output"].numel()
        slot = tnq.payload_bytes(chunk, 3, BLOCK)
        assert comm.last_sent == (W - 1) * slot
        h = sh.comms[name]
        assert h.last_sent - h.last_intra == (W // 2 - 1) * slot
        assert 2 * (h.last_sent - h.last_intra) == (W - 2) * slot
        assert h.last_intra == (2 - 1) * (W // 2) * chunk * 4
        assert comm.last_fp32 == (W - 1) * chunk * 4
    st = sh.stats()
    assert st["bytes_inter"] == st["bytes_sent"] - st["bytes_intra"] > 0


def check_warmup_and_min_numel():
    """Plain reduce-scatter for the warm-up calls and for modules below min_numel: FSDP2's own result."""
    ref = _shard(_model())
    rec_plain = {}
    for name, m in ref.named_modules():
        if hasattr(m, "set_custom_reduce_scatter") and m._get_fsdp_state()._fsdp_param_groups:
            from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultReduceScatter
            rec_plain[name] = Recorder(DefaultReduceScatter())
            m.set_custom_reduce_scatter(rec_plain[name])
    _train(ref, 2)
    model = _shard(_model())
    state, recs = _install(model, warmup_steps=1, min_numel=40)
    _train(model, 2)
    for name, rec in recs.items():
        small = rec.seen[0]["input"].numel() < 40
        for i, call in enumerate(rec.seen):
            plain = small or i == 0
            if i == 0:
                assert torch.equal(call["output"], rec_plain[name].seen[0]["output"]), name
            if not plain:
                assert not torch.equal(call["output"], rec_plain[name].seen[i]["output"]), \
                    f"{name}: step {i} not compressed"
            elif i == 1 and small:
                assert call["input"].numel() < 40
    assert any(r.seen[0]["input"].numel() < 40 for r in recs.values())
    assert any(r.seen[0]["input"].numel() >= 40 for r in recs.values())


def check_transformer_trains():
    """The experiments' byte-level transformer on real text, FSDP2 on every block, 3-bit rtnq: the held-out loss
    falls like fp32's."""
    from torch.distributed.fsdp import fully_shard
    from experiments import text
    corpus = text.load_corpus()
    results = {}
    for mode in ("fp32", "rtnq"):
        model = text.build_model(0)
        for blk in model.blocks:
            fully_shard(blk)
        fully_shard(model)
        if mode == "rtnq":
            state = tnq_fsdp.compress_reduce_scatter(model, bits=3, seed=SEED, backend=BACKEND)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        data = corpus.train.long()
        gen = torch.Generator().manual_seed(dist.get_rank())
        for _ in range(40):
            start = torch.randint(0, data.numel() - text.CONTEXT - 1, (8,), generator=gen)
            w = data[start[:, None] + torch.arange(text.CONTEXT + 1)]
            opt.zero_grad()
            text.lm_loss(model(w[:, :-1]), w[:, 1:]).backward()
            opt.step()
        _, bpb = text.evaluate(model, corpus, windows=32)
        results[mode] = bpb
    assert state.compression_ratio > 9, state.stats()  # every block compressed (3 bits: ~10.6x)
    assert results["fp32"] < 5.0, results  # about 8 bits per byte at the start (seen: 4.64 after 40 steps)
    assert results["rtnq"] < 5.0 and abs(results["rtnq"] - results["fp32"]) < 0.1, results


def check_checkpoint_resume():
    """torch.distributed.checkpoint for the model and optimizer, the tnq state per rank: a resumed run continues
    bit for bit (error feedback on, so the residuals must come back too)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    path = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path)
    path = path[0]

    def fresh():
        model = _shard(_model())
        state = tnq_fsdp.compress_reduce_scatter(model, seed=SEED, block_size=BLOCK, min_numel=0,
                                                 error_feedback=True, backend=BACKEND)
        return model, state, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def steps(model, opt, n):
        x, y = _data(dist.get_rank())
        for _ in range(n):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    model, state, opt = fresh()
    steps(model, opt, 2)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=os.path.join(path, "ckpt"))
    torch.save(state.state_dict(), os.path.join(path, f"tnq.rank{dist.get_rank()}.pt"))
    steps(model, opt, 2)
    want = torch.cat([p.to_local().detach().reshape(-1) for p in model.parameters()])

    model, state, opt = fresh()
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=os.path.join(path, "ckpt"))
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])
    state.load_state_dict(torch.load(os.path.join(path, f"tnq.rank{dist.get_rank()}.pt")))
    assert state.step == 2
    steps(model, opt, 2)
    got = torch.cat([p.to_local().detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(got, want), (got - want).abs().max()


def _raises(fn, *words):
    try:
        fn()
    except ValueError as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return
    raise AssertionError(f"no ValueError mentioning {words}")


def check_bad_config():
    model = _shard(_model())
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model, bits=9), "bits")
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model, codebook="zstd"), "codebook")
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model, block_size=100), "block_size")
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model, node_size=dist.get_world_size() + 1), "node_size")
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(nn.Linear(2, 2)), "fully_shard")
    import warnings
    from tnq_kernels.feedback import FeedbackWarning
    for codebook, warns in (("rtnq", True), ("tnq", True), ("qsgd", False)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            tnq_fsdp.compress_reduce_scatter(_shard(_model()), codebook=codebook, error_feedback=True)
        got = [w for w in seen if issubclass(w.category, FeedbackWarning)]
        assert bool(got) == warns, (codebook, [str(w.message) for w in seen])
        assert not got or "compress_reduce_scatter" in str(got[0].message)
    state = tnq_fsdp.compress_reduce_scatter(model, min_numel=0)
    other = tnq_fsdp.compress_reduce_scatter(_shard(_model()), bits=2, min_numel=0)
    _raises(lambda: other.load_state_dict(state.state_dict()), "bits")
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model, rounding="up"), "rounding", "'up'", "'nearest'")
    nearest = tnq_fsdp.compress_reduce_scatter(_shard(_model()), min_numel=0, rounding="nearest")
    _raises(lambda: nearest.load_state_dict(state.state_dict()), "rounding")
    before = {k: v for k, v in state.state_dict().items() if k != "rounding"}  # saved before `rounding` existed
    _raises(lambda: nearest.load_state_dict(before), "rounding of the saved state is 'stochastic'")
    state.load_state_dict(before)


def check_hsdp_refused():
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (2, dist.get_world_size() // 2), mesh_dim_names=("replicate", "shard"))
    model = _shard(_model(), mesh=mesh)
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model), "HSDP", "node_size")


def check_param_groups_refused():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.fsdp._fully_shard._fsdp_common import FSDPMeshInfo, ShardPlacementResult
    from torch.distributed.tensor import Shard
    W = dist.get_world_size()
    other = init_device_mesh("cpu", (2, W // 2), mesh_dim_names=("a", "b"))
    info = FSDPMeshInfo(other["b"], shard_mesh_dim=0)
    model = _model()
    fully_shard(model.l1, shard_placement_fn=lambda p: ShardPlacementResult(Shard(0), info) if p.dim() == 1
                else None)
    fully_shard(model)
    _raises(lambda: tnq_fsdp.compress_reduce_scatter(model), "'l1'", "parameter groups")


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_") and name != "check_sim"}
CHECKS_2 = ["flat_fp32", "flat_bf16", "flat_fp16_sum", "flat_premul_sum", "flat_force_sum", "flat_error_feedback",
            "flat_nearest_error_feedback",
            "warmup_and_min_numel", "transformer_trains", "checkpoint_resume", "bad_config"]
CHECKS_3 = ["flat_fp32", "flat_bf16", "flat_error_feedback", "bad_config"]
CHECKS_4 = ["flat_fp32", "hier_fp32", "hier_bf16_ef", "bytes", "hsdp_refused", "param_groups_refused"]


@pytest.fixture(scope="module")
def groups():
    return {}


def _results(groups, world, names):
    if world not in groups:
        groups[world] = multiproc.run_group(world, __name__, names)
    return groups[world]


@pytest.mark.parametrize("world,name", [(2, n) for n in CHECKS_2] + [(3, n) for n in CHECKS_3]
                         + [(4, n) for n in CHECKS_4])
def test_fsdp(groups, world, name):
    names = {2: CHECKS_2, 3: CHECKS_3, 4: CHECKS_4}[world]
    multiproc.assert_ok(_results(groups, world, names), name)


# ---- single process ----

def test_op_weight():
    assert tnq_fsdp.op_weight(dist.ReduceOp.AVG, 4) == 0.25
    assert tnq_fsdp.op_weight(dist.ReduceOp.SUM, 4) == 1.0
    assert tnq_fsdp.op_weight(dist.ReduceOp.PREMUL_SUM(0.125), 4) == 0.125
    for op in (dist.ReduceOp.MAX, dist.ReduceOp.MIN, dist.ReduceOp.PRODUCT, dist.ReduceOp.BAND):
        with pytest.raises(ValueError, match="op must be"):
            tnq_fsdp.op_weight(op, 4)


@pytest.mark.parametrize("kwargs,field", [({"bits": 0}, "bits"), ({"codebook": "x"}, "codebook"),
                                          ({"node_size": 0}, "node_size"), ({"warmup_steps": -1}, "warmup_steps"),
                                          ({"min_numel": 1.5}, "min_numel"), ({"block_size": 33}, "block_size"),
                                          ({"rounding": "up"}, "rounding must be one of 'stochastic'.*got 'up'")])
def test_config_rejects(kwargs, field):
    args = dict(bits=3, block_size=2048, codebook="rtnq", node_size=None, error_feedback=False, warmup_steps=0,
                min_numel=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        tnq_fsdp.Config.checked(**args)


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("W", [2, 3])
def test_simulate_is_the_public_api(W, dtype, rounding):
    """simulate (flat) = compress each rank's row d with derive_seed(seed, r, t, m, d) for W clients, then
    decompress_sum with the op's weights: an independent recomputation with the public API."""
    chunk, t, m = 96, 5, 2
    inputs = [torch.randn(W * chunk, generator=torch.Generator().manual_seed(r)).to(dtype) for r in range(W)]
    cfg = tnq_fsdp.Config(block_size=32, rounding=rounding)
    got = tnq_fsdp.simulate(inputs, dist.ReduceOp.AVG, cfg, 7, t, m, backend="reference")
    for d in range(W):
        pays = [tnq.compress(x[d * chunk:(d + 1) * chunk], 3, 32, "rtnq", tnq.derive_seed(7, r, t, m, d),
                             backend="reference", clients=W, rounding=rounding) for r, x in enumerate(inputs)]
        want = tnq.decompress_sum(pays, [1.0 / W] * W, backend="reference")
        assert torch.equal(got[d], want)


def test_simulate_hierarchical_sums_nodes_first():
    """node_size k: the row destined for rank (b, l) is the fp32 sum of node a's k inputs, compressed for W/k
    clients with the sender's seed; node_size 1 is the flat mode."""
    W, k, chunk = 4, 2, 64
    inputs = [torch.randn(W * chunk, generator=torch.Generator().manual_seed(r)) for r in range(W)]
    cfg = tnq_fsdp.Config(block_size=32, node_size=k)
    got = tnq_fsdp.simulate(inputs, dist.ReduceOp.SUM, cfg, 3, 0, 0, backend="reference")
    for d in range(W):
        b, local = divmod(d, k)
        pays = []
        for a in range(W // k):
            row = sum(inputs[a * k + j][d * chunk:(d + 1) * chunk] for j in range(k))
            pays.append(tnq.compress(row, 3, 32, "rtnq", tnq.derive_seed(3, a * k + local, 0, 0, d),
                                     backend="reference", clients=W // k))
        assert torch.equal(got[d], tnq.decompress_sum(pays, [1.0] * (W // k), backend="reference"))
    flat = tnq_fsdp.simulate(inputs, dist.ReduceOp.SUM, tnq_fsdp.Config(block_size=32), 3, 0, 0, backend="reference")
    one = tnq_fsdp.simulate(inputs, dist.ReduceOp.SUM, tnq_fsdp.Config(block_size=32, node_size=1), 3, 0, 0,
                            backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(flat, one))


def test_flat_input_and_split_output():
    """FSDP2's layout: row j holds every gradient's j-th dim-0 chunk, dim 0 zero-padded to a multiple of W."""
    import torch.distributed.fsdp  # noqa: F401  (registers torch.ops.fsdp.chunk_cat)
    grads = [torch.arange(14.).view(7, 2), torch.arange(3.) + 100, torch.randn(4, 3, 2)]
    flat = tnq_fsdp.flat_input(grads, 2).view(2, -1)
    assert flat[0, :8].tolist() == list(range(8)) and flat[1, :8].tolist() == [8, 9, 10, 11, 12, 13, 0, 0]
    assert flat[0, 8:10].tolist() == [100, 101] and flat[1, 8:10].tolist() == [102, 0]
    for W in (1, 2, 3, 4):
        back = tnq_fsdp.split_output(tnq_fsdp.flat_input(grads, W).view(W, -1), [g.shape for g in grads], W)
        assert all(torch.equal(a, b) for a, b in zip(back, grads))


def test_example_script_runs():
    """examples/train_fsdp.py end to end (its own spawn of 2 ranks): per-step lines, 3-bit traffic, the summary."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TNQ_BACKEND=BACKEND or "auto")
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "train_fsdp.py"), "--nproc", "2",
                          "--steps", "3", "--width", "64", "--layers", "2"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: final loss" in out.stdout and "step    2" in out.stdout
    assert "x10." in out.stdout  # 3 bits: ~10.6x fewer bytes than FSDP2's fp32 reduce-scatter


def test_simulate_non_finite_stays_non_finite_and_residual_resets():
    """A NaN gradient entry makes its destination's shard non-finite (GradScaler must see the overflow); the
    error-feedback residual of that block resets to 0 instead of carrying NaN into later steps."""
    W, chunk = 2, 64
    inputs = [torch.randn(W * chunk, generator=torch.Generator().manual_seed(r)) for r in range(W)]
    inputs[0][chunk + 3] = float("nan")  # rank 0's row for rank 1
    cfg = tnq_fsdp.Config(block_size=32, error_feedback=True)
    res = [torch.zeros(W, chunk) for _ in range(W)]
    out = tnq_fsdp.simulate(inputs, dist.ReduceOp.AVG, cfg, 1, 0, 0, backend="reference", residuals=res)
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[1]).all()
    assert all(torch.isfinite(r).all() for r in res)
