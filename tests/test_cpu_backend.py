"""What only the C++ CPU build has: the portable (baseline-ISA) loops beside the AVX2 ones. The ops' contracts on
this backend are in the per-op files (test_compress.py, ... with backend "cpu")."""
import os
import subprocess
import sys

from conftest import ISA_ENVS


def ok_on_every_isa(code, timeout=600, **kw):
    """Runs `code`, which prints "ok", once per SIMD path of the C++ backend (each in its own process)."""
    for isa in ISA_ENVS.values():
        env = dict(os.environ, OMP_NUM_THREADS="1", **isa)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                             **kw)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (isa, out.stderr[-2000:])


def test_portable_path_matches_reference(native):
    # TNQ_NO_AVX2=1 forces the baseline-ISA loops that non-AVX2 machines run
    code = (
        "import torch, tnq_kernels\n"
        "from tnq_kernels import reference as ref\n"
        "for dt in (torch.float32, torch.float16, torch.bfloat16):\n"
        "  for bits in (1, 2, 3, 4, 5, 8):\n"
        "    x = torch.randn(4097).to(dt)\n"
        "    for block in (0, 96):\n"
        "      assert torch.equal(torch.ops.tnq.compress(x, bits, block, 0, 9), ref.compress(x, bits, block, 0, 9))\n"
        "print('ok')\n")
    env = dict(os.environ, TNQ_NO_AVX2="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_encode_at_past_2_33_every_isa(native):
    # the pair key changes at element 2^33 (SPEC v1.2): the AVX-512, AVX2 and portable loops each recompute it
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from test_compress import ENCODE_AT_GROUPS, check_encode_at\n"
            "for g in ENCODE_AT_GROUPS: check_encode_at(g)\n"
            "print('ok')\n")
    ok_on_every_isa(code, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_nearest_rounding_every_isa_matches_reference(native):
    # rounding="nearest" replaces U in each loop (AVX-512 with each bin layout, AVX2, portable): every codebook (their
    # bin tables differ; nqsgd has none and takes the AVX2 loop on AVX-512 machines), widths, dtypes and a short tail
    code = (
        "import torch\n"
        "from tnq_kernels import codebooks as cb, reference as ref\n"
        "x = torch.randn(4097, generator=torch.Generator().manual_seed(3))\n"
        "for dt in (torch.float32, torch.float16, torch.bfloat16):\n"
        "  for bits in (1, 2, 3, 4, 5, 8):\n"
        "    for c in cb.CODEBOOK_NAMES:\n"
        "      for block in (0, 96):\n"
        "        want = ref.compress(x.to(dt), bits, block, c, 9, 1)\n"
        "        assert torch.equal(torch.ops.tnq.compress(x.to(dt), bits, block, c, 9, 1), want), (dt, bits, c)\n"
        "        assert not torch.equal(want, ref.compress(x.to(dt), bits, block, c, 9, 0)), (dt, bits, c)\n"
        "print('ok')\n")
    ok_on_every_isa(code)


def test_tiny_gaps_every_isa_match_reference(native):
    # nqsgd and nuqsgd_l2 at 8 bits have gaps below 2^-112, so rho * 2^16 overflows (Tables::u16 is false) and the AVX2
    # loop tests U < p itself instead of m + 0.5 < p * 2^16: stochastic codes on every ISA, every dtype
    code = (
        "import torch\n"
        "from tnq_kernels import codebooks as cb, reference as ref\n"
        "x = torch.randn(4097, generator=torch.Generator().manual_seed(5)) * 1e-3\n"
        "for dt in (torch.float32, torch.float16, torch.bfloat16):\n"
        "  for c in (cb.codebook_id('nqsgd'), cb.codebook_id('nuqsgd_l2')):\n"
        "    for bits in (6, 7, 8):\n"
        "      for block in (0, 96):\n"
        "        want = ref.compress(x.to(dt), bits, block, c, 11)\n"
        "        assert torch.equal(torch.ops.tnq.compress(x.to(dt), bits, block, c, 11), want), (dt, c, bits)\n"
        "print('ok')\n")
    ok_on_every_isa(code)


def check_cells_at_level_edges():
    """z on every level, a few ulps either side, signed zeros, subnormals and a dense sweep past both ends, with scale 1
    (z = x exactly), against the searchsorted cell and the rounding rule of the reference: every codebook and width."""
    import torch
    from tnq_kernels import codebooks as cb, ops, reference as ref, rng
    seed = 0x5EED
    tiny = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38])
    for name in cb.CODEBOOK_NAMES.values():
        for bits in range(1, 9):
            c = torch.tensor(cb.levels(name, bits))
            near = [c]
            for _ in range(3):
                near = [torch.nextafter(near[0], torch.tensor(-float("inf")))] + near + \
                       [torch.nextafter(near[-1], torch.tensor(float("inf")))]
            span = float(c[-1] - c[0])
            sweep = torch.linspace(float(c[0]) - 0.1 * span, float(c[-1]) + 0.1 * span, 8192)
            x = torch.cat(near + [tiny, sweep])
            x = torch.cat([x, torch.zeros((-x.numel()) % 32)])
            got = ops._C.encode_at(x, 0, 1.0, bits, cb.codebook_id(name), seed)
            z = torch.clamp(x, c[0], c[-1])
            k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)
            u = rng.uniform_tensor(seed, torch.arange(x.numel()))
            gap = torch.tensor(cb.inv_gaps(name, bits))
            codes = (k + (u < (z - c[k]) * gap[k]).long()).to(torch.uint8)
            assert torch.equal(got, ref.pack(codes, bits)), (name, bits)


def test_cells_at_level_edges_every_isa(native):
    # the cell of z in each loop: the O(1) bin index of the AVX-512 encode (a bin from one rounded-down multiply-add,
    # then one or two compares), the AVX2 binary search over all levels, its search over the upper half of a
    # symmetric codebook (from 5 bits: z on a level and signed zeros must get the full search's codes), and the
    # portable loop
    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from test_cpu_backend import check_cells_at_level_edges\n"
            "check_cells_at_level_edges()\n"
            "print('ok')\n")
    ok_on_every_isa(code, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_simd_path_names_the_loops_that_run(native):
    # benchmark records name the vector loops (benchmarks/_helper.py): the environment switches must show in it
    code = "from tnq_kernels import ops; print(ops._C.simd_path())"
    seen = {}
    for name, isa in ISA_ENVS.items():
        env = dict(os.environ, **isa)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        seen[name] = out.stdout.strip()
    assert seen["portable"] == "portable"
    assert seen["avx2"] in ("avx2", "portable") and seen["best"] in ("avx512", "avx2", "portable")
    assert seen["avx2"] == ("avx2" if seen["best"] in ("avx512", "avx2") else "portable"), seen
