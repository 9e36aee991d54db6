"""Build of tnq_kernels._C: the C++ CPU kernels, plus the CUDA kernels when build_cuda.py provides them.

    pip install --no-build-isolation -e .      # editable: the .so lands in tnq_kernels/

Environment flags (TNQ_ prefix only):
    TNQ_CUDA=0        skip the CUDA kernels even where nvcc is present (read by build_cuda.py)
    TNQ_DEBUG=1       -O0 -g instead of -O3
    TNQ_NO_AVX2=1     baseline-ISA code only: no AVX2 kernels, no AVX2 clones of the portable loops
                      (at run time, the environment variable TNQ_NO_AVX2 makes an AVX2 build take the portable loops)
Never fails for lack of CUDA: when build_cuda.py skips (no nvcc, TNQ_CUDA=0), the extension is CPU-only.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
import build_cuda  # noqa: E402  (the nvcc half of the build, beside this file)

_flag = build_cuda.flag


# -ffp-contract=off: no FMA contraction anywhere, so every backend computes the same fp32 expressions bit for bit.
# No -ffast-math (it would reorder and flush what the reference defines) and no -march=native (portable binary;
# the hot loops get an AVX2 clone chosen at load time instead).
CXX_FLAGS = ["-std=c++17", "-ffp-contract=off", "-fno-math-errno"]
CXX_FLAGS += ["-O0", "-g"] if _flag("TNQ_DEBUG") else ["-O3"]
# at::parallel_for is a header template that expands to `#pragma omp parallel` in *our* objects: without
# -fopenmp it silently runs on one thread. torch ships libgomp.so.1 and has it loaded before we are.
LINK_FLAGS: list[str] = []
if sys.platform.startswith("linux"):
    CXX_FLAGS.append("-fopenmp")
    LINK_FLAGS.append("-fopenmp")
DEFINES: list[tuple[str, str | None]] = []
if _flag("TNQ_NO_AVX2"):
    DEFINES.append(("TNQ_NO_AVX2", None))


class TnqBuildExt(BuildExtension):
    """Compiles the CUDA objects (build_cuda.nvcc_objects) before the extension is compiled and linked."""

    def build_extensions(self):
        extra = build_cuda.nvcc_objects(self.build_temp)  # empty lists when it skips (no nvcc, TNQ_CUDA=0)
        for ext in self.extensions:
            ext.extra_objects = list(ext.extra_objects or []) + list(extra.get("objects", []))
            ext.sources = list(ext.sources) + [os.path.relpath(s, ROOT) if os.path.isabs(s) else s
                                               for s in extra.get("sources", [])]
            ext.define_macros = list(ext.define_macros or []) + list(extra.get("define_macros", []))
            ext.libraries = list(ext.libraries or []) + list(extra.get("libraries", []))
            ext.library_dirs = list(ext.library_dirs or []) + list(extra.get("library_dirs", []))
            ext.extra_link_args = list(ext.extra_link_args or []) + list(extra.get("extra_link_args", []))
        super().build_extensions()


SOURCES = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))

setup(
    packages=find_packages(include=["tnq_kernels", "tnq_kernels.*"]),
    ext_modules=[
        CppExtension(
            name="tnq_kernels._C",
            sources=SOURCES,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=DEFINES,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    ],
    cmdclass={"build_ext": TnqBuildExt.with_options(no_python_abi_suffix=False)},
    zip_safe=False,
)
