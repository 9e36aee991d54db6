"""The per-element device functions of the CUDA encode, executed on the host (no GPU needed): nvcc compiles
tests/cuda_host_check.cu, which calls the __host__ __device__ functions of csrc/cuda/common.cuh, csrc/bin_index.h
and csrc/tnq_constants.h that encode_range calls, and the results are compared with the reference:

- the code of z (the O(1) bin index, its one-compare fix-up and the rounding decision U·2^16 < p·2^16, with z not
  clamped first) against reference.quantize of the clamped z, for every codebook at b = 2..5 with a bin table, on
  random z in and beyond [c_0, c_s], every level and its neighbouring floats, ±0, ±inf; NaN (a non-finite block)
  gives code 0;
- the 16 random bits m the encode loop draws (range keys, pair hash, halves) against rng.bits16_tensor, on a range
  that crosses a change of the pair key (element 2^33);
- the staging layout and bit-plane pack of a 1024-element chunk (16-byte vectors of 4 and 8 elements) against
  reference.pack.
Skipped (with the reason) where nvcc is absent; it is present in CI and on the development machine.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tnq_kernels import codebooks as cb
from tnq_kernels import reference, rng

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import build_cuda  # noqa: E402

SEED = 0x0123456789ABCDEF


@pytest.fixture(scope="module")
def host_check(tmp_path_factory):
    nvcc = build_cuda.find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine: the CUDA device functions cannot be compiled for the host")
    exe = tmp_path_factory.mktemp("cuda_host") / "cuda_host_check"
    # -ffp-contract=off: the host compiler must not fuse (z - c)·ρ either (the kernels use __fsub_rn/__fmul_rn)
    cmd = [nvcc, "-std=c++17", "-O1", f"-I{ROOT / 'csrc'}", "-Xcompiler", "-ffp-contract=off", "--fmad=false",
           str(ROOT / "tests" / "cuda_host_check.cu"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    def run(text: str) -> list[str]:
        out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
        return out.stdout.split("\n")

    return run


def _hex(values) -> str:
    return " ".join(f"{v:x}" for v in np.asarray(values, dtype=np.float32).view(np.uint32).tolist())


def _z_values(c: np.ndarray, gen: torch.Generator) -> np.ndarray:
    lo, hi = float(c[0]), float(c[-1])
    span = hi - lo
    edges = np.concatenate([c, np.nextafter(c, np.float32(-np.inf)), np.nextafter(c, np.float32(np.inf))])
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, np.inf, -np.inf, 3e38, -3e38], np.float32)
    uniform = (torch.rand(3000, generator=gen, dtype=torch.float64) * (span + 2.0) + (lo - 1.0)).float().numpy()
    laplace = (torch.distributions.Laplace(0.0, 1.0).sample((3000,)) * 1.0).float().numpy()
    return np.concatenate([edges.astype(np.float32), special, uniform, laplace]).astype(np.float32)


def test_codes_and_random_bits_match_the_reference(host_check):
    gen = torch.Generator().manual_seed(5)
    cases, text = [], []
    for cid in range(cb.NUM_CODEBOOKS):
        for bits in (2, 3, 4, 5):
            c = np.array(cb.levels(cid, bits), np.float32)
            r = np.array(cb.inv_gaps(cid, bits), np.float32)
            z = _z_values(c, gen)
            z_nan = np.concatenate([z, np.array([np.nan], np.float32)])
            text.append(f"codes {bits} {SEED} 0 {z_nan.size} {_hex(c)} {_hex(r)} {_hex(z_nan)}")
            cases.append((cid, bits, c, z))
    # the random bits on a range that crosses element 2^33 (a change of the pair key), from an odd start
    start, n_m = (1 << 33) - 1001, 2000
    c3 = np.array(cb.levels(0, 3), np.float32)
    text.append(f"codes 3 {SEED} {start} {n_m} {_hex(c3)} {_hex(np.array(cb.inv_gaps(0, 3), np.float32))} "
                + _hex(np.zeros(n_m, np.float32)))
    out = host_check("\n".join(text) + "\n")
    pos, slow = 0, set()
    for cid, bits, c, z in cases:
        bins = int(out[pos])
        rows = out[pos + 1: pos + 2 + z.size]
        pos += 2 + z.size
        code = np.array([int(x.split()[0], 16) for x in rows], np.int64)
        near = np.array([int(x.split()[2], 16) for x in rows], np.int64)
        m = np.array([int(x.split()[1], 16) for x in rows], np.int64)
        idx = torch.arange(z.size + 1, dtype=torch.int64)
        assert np.array_equal(m, rng.bits16_tensor(SEED, idx).numpy()), (cid, bits)
        if bins == 0:  # no O(1) index for this table: the kernels take the binary search (BITS = 0) instead
            assert (code == 0xFFFFFFFF).all() and (near == 0xFFFFFFFF).all()
            slow.add((cb.codebook_name(cid), bits))
            continue
        zc = torch.from_numpy(np.clip(z, c[0], c[-1]))
        want = reference.quantize(torch.cat([zc, torch.zeros(1)]), bits, cid, SEED).numpy().astype(np.int64)
        want[-1] = 0  # NaN: a non-finite block, code 0
        bad = np.nonzero(code != want)[0]
        assert bad.size == 0, (cb.codebook_name(cid), bits, [(float(np.r_[z, np.nan][i]), int(code[i]),
                                                              int(want[i])) for i in bad[:5]])
        want_near = reference.quantize(torch.cat([zc, torch.zeros(1)]), bits, cid, SEED,
                                       rng.NEAREST).numpy().astype(np.int64)
        want_near[-1] = 0
        bad = np.nonzero(near != want_near)[0]
        assert bad.size == 0, ("nearest", cb.codebook_name(cid), bits,
                               [(float(np.r_[z, np.nan][i]), int(near[i]), int(want_near[i])) for i in bad[:5]])
    # the tables without an O(1) index of at most 128 bins (their levels crowd towards 0): the kernels search them
    assert slow == {("nqsgd", 4), ("nqsgd", 5), ("nuqsgd_l2", 4), ("nuqsgd_l2", 5), ("rtnq64", 5), ("rtnq128", 5),
                    ("rtnq256", 5)}, slow
    bins = int(out[pos])
    m = np.array([int(x.split()[1], 16) for x in out[pos + 1: pos + 1 + n_m]], np.int64)
    want_m = rng.bits16_tensor(SEED, torch.arange(start, start + n_m, dtype=torch.int64)).numpy()
    assert bins > 0 and np.array_equal(m, want_m)


@pytest.mark.parametrize("v", [4, 8])
def test_staged_pack_matches_the_reference(host_check, v):
    gen = torch.Generator().manual_seed(v)
    text, cases = [], []
    for bits in (1, 2, 3, 4, 5, 8):
        codes = torch.randint(0, 1 << bits, (1024,), generator=gen, dtype=torch.int64)
        text.append(f"pack {v} {bits} " + " ".join(f"{x:x}" for x in codes.tolist()))
        cases.append((bits, codes))
    out = host_check("\n".join(text) + "\n")
    pos = 0
    for bits, codes in cases:
        got = np.array([int(x, 16) for x in out[pos: pos + 32 * bits]], np.int64)
        pos += 32 * bits
        want = reference.pack(codes.to(torch.uint8), bits).numpy().astype(np.int64) & 0xFFFFFFFF
        assert np.array_equal(got, want), (v, bits)
