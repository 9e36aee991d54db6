"""The CUDA build, checked without a GPU (issue 4, part 3): the nvcc half of setup.py (build_cuda.py), the CUDA
dispatch registrations of the built extension, the architectures embedded in it, and that it imports on a machine
without CUDA libraries. Nothing here compiles what the build already compiled: the built library is inspected; only
when the build skipped CUDA but nvcc is present does a test compile each .cu once per architecture itself.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import build_cuda  # noqa: E402

from tnq_kernels import ops  # noqa: E402

CU_FILES = sorted(Path(p).name for p in glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
REQUIRED_ARCHS = (80, 90)


def _build_would_compile_cuda() -> str | None:
    """None when build_cuda.py, run now, would compile the kernels; otherwise why it would skip."""
    if os.environ.get("TNQ_CUDA", "1").strip() in ("0", "false", "False", "off", "OFF"):
        return "TNQ_CUDA=0: the build skips the CUDA kernels on purpose"
    nvcc = build_cuda.find_nvcc()
    if nvcc is None:
        return "no nvcc on this machine: the build is CPU-only here"
    if build_cuda.find_cudart_static(build_cuda.cuda_home_of(nvcc)) is None:
        return f"{nvcc} has no libcudart_static.a: the build is CPU-only here"
    return None


def _extension_path() -> Path:
    if ops._C is None:
        pytest.fail(f"C++ extension not built ({ops.native_error}); run `make build` first")
    return Path(ops._C.__file__)


def _cuobjdump() -> str | None:
    """cuobjdump from the toolkit, PATH, or the copy Triton ships (present on CI through the triton wheel)."""
    cands = [shutil.which("cuobjdump")]
    nvcc = build_cuda.find_nvcc()
    if nvcc:
        cands.append(os.path.join(build_cuda.cuda_home_of(nvcc), "bin", "cuobjdump"))
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


# ---- build_cuda.py: flags and skipping ----

EMPTY_KEYS = {"objects", "sources", "define_macros", "libraries", "library_dirs", "extra_link_args"}


def test_skip_when_disabled(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TNQ_CUDA", "0")
    res = build_cuda.nvcc_objects(str(tmp_path))
    assert set(res) == EMPTY_KEYS and all(v == [] for v in res.values())
    assert "skipped: TNQ_CUDA=0" in capsys.readouterr().out


def test_skip_without_nvcc(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("TNQ_CUDA", raising=False)
    monkeypatch.setenv("TNQ_NVCC", str(tmp_path / "no-such-nvcc"))
    res = build_cuda.nvcc_objects(str(tmp_path))
    assert set(res) == EMPTY_KEYS and all(v == [] for v in res.values())
    out = capsys.readouterr().out
    assert "skipped" in out and "no-such-nvcc" in out


def test_parse_archs():
    assert build_cuda.parse_archs(build_cuda.DEFAULT_ARCHS) == [(80, False), (90, True)]
    assert build_cuda.parse_archs("8.0 9.0+PTX") == [(80, False), (90, True)]
    assert build_cuda.parse_archs("sm_90,100") == [(90, False), (100, False)]
    flags = build_cuda.gencode_flags([(80, False), (90, True)])
    assert flags == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                     "-gencode=arch=compute_90,code=compute_90"]
    for bad in ("", "ampere", "60", "80;x"):
        with pytest.raises(ValueError, match="TNQ_CUDA_ARCHS"):
            build_cuda.parse_archs(bad)


def test_device_flags_forbid_contraction_and_fast_math():
    flags = build_cuda.device_flags([(80, False)])
    assert "--fmad=false" in flags
    assert not any("fast" in f for f in flags)


# ---- the built extension ----

def _needs_cuda_build():
    why = _build_would_compile_cuda()
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("op", sorted(ops.SCHEMAS))
def test_cuda_kernel_registered_by_extension(op):
    _needs_cuda_build()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tnq::{op}", "CUDA")
    assert op in ops.NATIVE_CUDA_OPS, "the CUDA kernel is ops.py's raiser, not the extension's"
    line = next(ln for ln in torch._C._dispatch_dump(f"tnq::{op}").splitlines() if ln.startswith("CUDA"))
    assert "bindings.cpp" in line, line


def _fatbin_listing(so: Path) -> tuple[list[str], list[str]]:
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or the triton wheel) to list the embedded GPU code")
    elf = subprocess.run([tool, "--list-elf", str(so)], capture_output=True, text=True)
    ptx = subprocess.run([tool, "--list-ptx", str(so)], capture_output=True, text=True)
    assert elf.returncode == 0, elf.stderr
    assert ptx.returncode == 0, ptx.stderr
    return elf.stdout.splitlines(), ptx.stdout.splitlines()


def test_extension_embeds_sm80_sm90_and_ptx_for_every_cu_file():
    """Each .cu object contributes one fatbin; every one must hold sm_80 and sm_90 machine code (and the
    compute_90 PTX of the default TNQ_CUDA_ARCHS), so a kernel that fails to compile for an arch cannot hide."""
    _needs_cuda_build()
    elfs, ptxs = _fatbin_listing(_extension_path())
    for a in REQUIRED_ARCHS:
        n = sum(1 for ln in elfs if re.search(rf"\.sm_{a}\.cubin", ln))
        assert n == len(CU_FILES), f"sm_{a}: {n} cubins for {len(CU_FILES)} .cu files\n" + "\n".join(elfs)
    if os.environ.get("TNQ_CUDA_ARCHS", build_cuda.DEFAULT_ARCHS) == build_cuda.DEFAULT_ARCHS:
        n = sum(1 for ln in ptxs if re.search(r"\.sm_90\.ptx", ln))
        assert n == len(CU_FILES), "\n".join(ptxs)


def _elf_needed(so: Path) -> list[str]:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf to list the library's dependencies")
    out = subprocess.run([readelf, "-d", str(so)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_extension_needs_no_cuda_library():
    """cudart is linked statically: the .so must not depend on libcudart/libcuda, so it loads without them."""
    _needs_cuda_build()
    needed = _elf_needed(_extension_path())
    assert needed, "readelf listed no dependencies at all"
    bad = [n for n in needed if n.startswith(("libcudart", "libcuda.", "libc10_cuda", "libtorch_cuda"))]
    assert not bad, f"the extension links {bad} dynamically: {needed}"


def test_import_in_a_clean_process_without_gpus():
    """Import in a fresh interpreter with no GPU visible and no CUDA library path: the CPU op works and the CUDA
    registrations are present (they cost nothing until a CUDA tensor arrives)."""
    code = ("import torch, tnq_kernels\n"
            "from tnq_kernels import ops\n"
            "assert ops.native_error is None, ops.native_error\n"
            "p = tnq_kernels.compress(torch.ones(100), 3, 32, seed=1)\n"
            "assert tnq_kernels.decompress(p).shape == (100,)\n"
            "print(sorted(ops.NATIVE_CUDA_OPS))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    if _build_would_compile_cuda() is None:
        assert r.stdout.strip() == str(sorted(ops.SCHEMAS)), r.stdout


def test_backend_cuda_is_strict():
    """backend="cuda" never falls back: without the C++ CUDA kernels it raises BackendUnavailable, and it refuses
    CPU tensors (the dispatcher would otherwise run the CPU kernel under the name "cuda")."""
    import tnq_kernels
    x = torch.ones(64)
    if ops.NATIVE_CUDA_OPS:
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors, got a tensor on cpu"):
            tnq_kernels.compress(x, backend="cuda")
        p = tnq_kernels.compress(x, seed=1)
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
            tnq_kernels.decompress_sum([p, p], backend="cuda")
    else:
        with pytest.raises(ops.BackendUnavailable, match="no C.. CUDA kernel"):
            tnq_kernels.compress(x, backend="cuda")


def test_compile_each_cu_when_the_build_skipped(tmp_path):
    """The fallback of part 3: when the extension was built without CUDA but nvcc exists, compile each .cu once
    per architecture here, so no kernel goes unchecked."""
    if ops.NATIVE_CUDA_OPS:
        pytest.skip("the build compiled every .cu (see test_extension_embeds_sm80_sm90_and_ptx_for_every_cu_file)")
    nvcc = build_cuda.find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine: nothing can compile the kernels")
    for a in REQUIRED_ARCHS:
        flags = [f for f in build_cuda.device_flags([(a, False)]) if not f.startswith("-gencode")]
        for name in CU_FILES:
            cmd = [nvcc, "-cubin", f"-arch=sm_{a}", str(ROOT / "csrc" / "cuda" / name),
                   "-o", str(tmp_path / f"{name}.sm_{a}.cubin")] + flags
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, f"{name} sm_{a}:\n{r.stdout}{r.stderr}"


def test_bench_side_by_side_picks_the_faster_backend():
    """The verdict gpu_check.py prints to set the default CUDA backend: geometric mean over n >= 2^24 only."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_gpu

    def row(impl, n, gbps, op="compress"):
        return {"op": op, "impl": impl, "dtype": "float32", "bits": 3, "n": n, "gbps": gbps, "pct_copy": ""}
    rows = [{"op": "copy", "impl": "torch", "dtype": "float32", "bits": "", "n": n, "gbps": 3000.0}
            for n in (1 << 20, 1 << 24)]
    rows += [row("triton", 1 << 20, 900.0), row("cuda", 1 << 20, 100.0),     # small n: ignored by the verdict
             row("triton", 1 << 24, 2000.0), row("cuda", 1 << 24, 2500.0),
             row("triton", 1 << 24, 2000.0, "decompress"), row("cuda", 1 << 24, "nan", "decompress")]
    text = bench_gpu.side_by_side(rows)
    assert "# compress: cuda is faster over n >= 2^24 (time triton/cuda = 1.250" in text
    assert "# decompress:" not in text  # the CUDA run failed (nan): no verdict without both
    assert "| compress | float32 | 3 | 2^20 |" in text
