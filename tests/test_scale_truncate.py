"""tnq::scale_truncate (job 1: per-block scale, then z = clamp(x·r), r = fp32(1/scale)) on every backend against the
oracle: scales and z identical bits, NaN blocks included; non-finite blocks truncate to c_0; opcheck. (Argument
errors: test_compress.py, which checks compress and scale_truncate together.)"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DTYPES, ISA_ENVS, SIZES, assert_same_values, grid, laplace, matrix, opcheck
from tnq_kernels import codebooks as cb
from tnq_kernels import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

CODEBOOKS = sorted(cb.CODEBOOK_IDS.values())
BLOCKS = [0, 32, 96, 2048]


ALL = tuple(CODEBOOKS)


@matrix("dtype,n,block,bits,codebooks",
        cpu=grid(DTYPES, SIZES, BLOCKS, [3], [ALL]) + grid([torch.bfloat16], [4097], [96], [2, 5], [ALL]),
        triton=grid([torch.bfloat16], [4097], [0, 96, 2048], [2, 3, 4, 5], [(0,), (2,)]),
        cuda=grid(DTYPES, SIZES + [1_000_000], BLOCKS + [32768], [3], [ALL])
        + grid([torch.bfloat16], [4097], [0, 96, 2048], [2, 4, 5], [ALL]))
def test_scale_truncate_matches_reference(backend, dtype, n, block, bits, codebooks):
    x = laplace(n, scale=0.01, seed=bits, dtype=dtype)
    if n > 40:
        x[37] = float("nan")  # a NaN block: scale NaN, z = c_0
    for codebook in codebooks:
        _same_stage_one(backend, x, bits, block, codebook)


def _same_stage_one(backend, x, bits, block, codebook):
    s, z = backend.scale_truncate(x, bits, block, codebook)
    rs, rz = ref.scale_truncate(x, bits, block, codebook)
    assert_same_values(backend, s, rs)
    assert_same_values(backend, z, rz)
    if backend.name != "cuda":  # a NaN scale's bits too (CUDA's NaN differs: conftest.assert_same_payload)
        assert torch.equal(s.cpu().view(torch.int32), rs.view(torch.int32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_scale_truncate_non_finite_block(backend, bad):
    x = laplace(4096, seed=3)
    x[2100] = bad
    for block, codebook in ((0, 0), (2048, 0), (2048, max(CODEBOOKS))):
        lo = 2048 if block else 0
        scales, z = backend.scale_truncate(x, 3, block, codebook)
        assert not torch.isfinite(scales[-1]).item()
        assert torch.equal(z[lo:].cpu(), torch.full((4096 - lo,), cb.levels(codebook, 3)[0]))
        assert torch.isfinite(z[:lo]).all().item()


def test_opcheck_scale_truncate(backend):
    opcheck(backend, "scale_truncate")


def _lane_sum(a, lanes):
    """The C++ CPU block sum in fp64: lane j adds the elements i = j (mod lanes) in index order (the tail into lane
    0), then a balanced pairwise tree over the lanes."""
    acc = [0.0] * lanes
    full = len(a) // lanes * lanes
    for i, v in enumerate(a):
        acc[i % lanes if i < full else 0] += float(v)
    while len(acc) > 1:
        acc = [acc[2 * j] + acc[2 * j + 1] for j in range(len(acc) // 2)]
    return acc[0]


@pytest.mark.parametrize("isa", sorted(ISA_ENVS))
def test_block_sum_order_is_one_on_every_simd_path(isa, native):
    """One 2048-element block whose fp32 mean|g| depends on the fp64 summation order: 2^60 + 2^36 lies halfway
    between two fp32 neighbours (after the exact division by 2048), and the 4.0s at i = 16 (mod 32) push it above
    only where they are not added one by one to 2^60 (each is below half an fp64 ulp there). Every SIMD path must
    give the 32-lane order's scale (docs/benchmarks-cpu.md), which this input tells from the 16-lane one."""
    x = np.zeros(2048, dtype=np.float32)
    x[0], x[1], x[16::32] = 2.0 ** 60, 2.0 ** 36, 4.0
    want = np.float32(_lane_sum(x, 32) / 2048)
    assert want != np.float32(_lane_sum(x, 16) / 2048)  # the input does tell the two orders apart
    cid = cb.codebook_id("tnq")  # mean|g|
    code = (f"import torch, tnq_kernels\nx = torch.tensor({x.tolist()!r})\n"
            f"print(torch.ops.tnq.scale_truncate(x, 3, 2048, {cid})[0].item())\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", **ISA_ENVS[isa])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip()) == float(want)
