"""nvcc half of the build: compiles csrc/cuda/*.cu into objects that setup.py links into the CppExtension.

Why not torch's CUDAExtension: the CPU wheel of torch (CI) has no CUDA_HOME, c10_cuda or torch_cuda, yet CI must
still compile every kernel. So the kernels take raw pointers and a cudaStream_t (csrc/cuda/kernels.h) and are
compiled here by nvcc alone; csrc/cuda/bindings.cpp, compiled by the host compiler with the extension, reaches
the stream and device guard through c10's generic interface; the CUDA runtime is linked statically
(libcudart_static.a), so the .so needs no CUDA library to import and the same build gives a working GPU op on a
machine whose torch has CUDA.

    nvcc_objects(build_temp) -> {objects, sources, define_macros, libraries, library_dirs, extra_link_args}

Environment (TNQ_ prefix only):
    TNQ_CUDA=0            skip the CUDA kernels (the extension is then CPU-only; CUDA tensors use Triton)
    TNQ_CUDA_ARCHS        real architectures, ";"/","/space separated, "+PTX" on one of them also embeds its PTX
                          for newer GPUs (default "80;90+PTX": sm_80, sm_90 and compute_90 PTX)
    TNQ_NVCC              the nvcc to use (default: $CUDA_HOME/bin/nvcc, then nvcc on PATH, then
                          /usr/local/cuda/bin/nvcc)
    TNQ_CUDA_JOBS         parallel nvcc processes (default: the number of CPUs, at most the number of .cu files)
    TNQ_DEBUG=1           -O0 -g -lineinfo device code instead of -O3
Never raises for lack of CUDA: when it skips, every list is empty and it prints what it skipped and why.
Objects are rebuilt only when a source, a header or the command line changed.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
DEFAULT_ARCHS = "80;90+PTX"
BINDINGS = "csrc/cuda/bindings.cpp"


def _empty() -> dict:
    return dict(objects=[], sources=[], define_macros=[], libraries=[], library_dirs=[], extra_link_args=[])


def _say(msg: str) -> None:
    print(f"tnq build (CUDA): {msg}", flush=True)


def flag(name: str) -> bool:
    """A TNQ_* build switch: unset, "", "0", "false" mean off."""
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def parse_archs(spec: str) -> list[tuple[int, bool]]:
    """"80;90+PTX" -> [(80, False), (90, True)]: (compute capability × 10, embed PTX). ValueError names the flag."""
    out = []
    for tok in spec.replace(",", ";").replace(" ", ";").split(";"):
        tok = tok.strip()
        if not tok:
            continue
        ptx = tok.upper().endswith("+PTX")
        num = tok[:-4] if ptx else tok
        num = num.replace("sm_", "").replace(".", "")
        if not num.isdigit() or int(num) < 70:
            raise ValueError(f"TNQ_CUDA_ARCHS: {tok!r} in {spec!r} is not an architecture; expected numbers >= 70 "
                             f"like '80;90+PTX' or '8.0 9.0' (+PTX also embeds PTX; __grid_constant__ needs sm_70+)")
        out.append((int(num), ptx))
    if not out:
        raise ValueError(f"TNQ_CUDA_ARCHS: {spec!r} names no architecture; expected e.g. '80;90+PTX'")
    return out


def gencode_flags(archs: list[tuple[int, bool]]) -> list[str]:
    flags = []
    for a, ptx in archs:
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{a},code=compute_{a}")
    return flags


def find_nvcc() -> str | None:
    if os.environ.get("TNQ_NVCC"):
        p = os.environ["TNQ_NVCC"]
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc" if os.path.isfile("/usr/local/cuda/bin/nvcc") else None


def cuda_home_of(nvcc: str) -> str:
    """The toolkit root of an nvcc. /usr/local/bin/nvcc may be a link or a wrapper script, so when no toolkit
    sits next to the resolved path, ask nvcc itself: its -dryrun prints the directory it runs from (_HERE_)."""
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if find_cudart_static(home) is not None:
        return home
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        r = subprocess.run([nvcc, "-dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")], capture_output=True,
                           text=True, cwd=tmp)
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            return os.path.dirname(os.path.realpath(line.split("=", 1)[1].strip()))
    return home


def find_cudart_static(home: str) -> str | None:
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        p = os.path.join(home, sub, "libcudart_static.a")
        if os.path.isfile(p):
            return p
    return None


def device_flags(archs: list[tuple[int, bool]]) -> list[str]:
    # --fmad=false on top of the explicit __f*_rn intrinsics: nothing may be contracted into an FMA (every backend
    # computes the reference's fp32 expressions bit for bit). No --use_fast_math (it flushes denormals and uses
    # approximate division). -fPIC: the objects go into a shared library.
    opt = ["-O0", "-g", "-lineinfo"] if flag("TNQ_DEBUG") else ["-O3"]
    return (["-std=c++17", "--fmad=false", "-Xcompiler", "-fPIC", "-Xcompiler", "-ffp-contract=off",
             f"-I{os.path.join(ROOT, 'csrc')}"] + opt + gencode_flags(archs))


def _digest(paths: list[str], cmd: list[str]) -> str:
    h = hashlib.sha256(" ".join(cmd).encode())
    for p in sorted(paths):
        with open(p, "rb") as f:
            h.update(p.encode() + b"\0" + f.read())
    return h.hexdigest()


def cu_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))


def _compile(nvcc: str, src: str, obj: str, flags: list[str], headers: list[str]) -> tuple[str, bool, str]:
    cmd = [nvcc, "-c", src, "-o", obj] + flags
    stamp = obj + ".sha256"
    digest = _digest([src] + headers, cmd)
    if os.path.isfile(obj) and os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == digest:
                return obj, False, ""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed on {os.path.relpath(src, ROOT)} (set TNQ_CUDA=0 to build without the "
                           f"CUDA kernels):\n{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    with open(stamp, "w") as f:
        f.write(digest)
    return obj, True, (r.stdout + r.stderr).strip()


def nvcc_objects(build_temp: str) -> dict:
    """Compile every csrc/cuda/*.cu for the requested architectures; the link inputs for setup.py's extension.

    Skips (empty lists, a printed reason) when TNQ_CUDA=0 or no nvcc / static CUDA runtime is found. An nvcc
    that is found but fails on our sources is an error: a broken kernel must not ship silently as a CPU build."""
    if os.environ.get("TNQ_CUDA", "1").strip() in ("0", "false", "False", "off", "OFF"):
        _say("skipped: TNQ_CUDA=0 (CUDA tensors will use the Triton backend)")
        return _empty()
    nvcc = find_nvcc()
    if nvcc is None:
        where = f"TNQ_NVCC={os.environ['TNQ_NVCC']!r} is not an executable" if os.environ.get("TNQ_NVCC") else \
            "no nvcc in $CUDA_HOME/bin, on PATH or in /usr/local/cuda/bin"
        _say(f"skipped: {where}; building the CPU-only extension (CUDA tensors will use the Triton backend)")
        return _empty()
    home = cuda_home_of(nvcc)
    cudart = find_cudart_static(home)
    if cudart is None:
        _say(f"skipped: {nvcc} found but no libcudart_static.a under {home}; building the CPU-only extension")
        return _empty()
    archs = parse_archs(os.environ.get("TNQ_CUDA_ARCHS", DEFAULT_ARCHS))
    flags = device_flags(archs)
    out_dir = os.path.join(os.path.abspath(build_temp), "tnq_cuda")
    os.makedirs(out_dir, exist_ok=True)
    headers = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cuh")) + glob.glob(os.path.join(CUDA_DIR, "*.h"))
                     + [os.path.join(ROOT, "csrc", "tnq_constants.h")])
    sources = cu_sources()
    jobs = int(os.environ.get("TNQ_CUDA_JOBS", "0") or 0) or min(len(sources), os.cpu_count() or 1)
    arch_names = ", ".join(f"sm_{a}" + (f" + compute_{a} PTX" if p else "") for a, p in archs)
    _say(f"{nvcc} -> {len(sources)} objects for {arch_names} ({jobs} parallel)")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = [pool.submit(_compile, nvcc, s, os.path.join(out_dir, os.path.basename(s)[:-3] + ".o"), flags,
                            headers) for s in sources]
        results = [f.result() for f in futs]
    for obj, rebuilt, log in results:
        if rebuilt and log:
            print(log, file=sys.stderr)
    _say(f"compiled {sum(r[1] for r in results)}, up to date {sum(not r[1] for r in results)}; "
         f"linking {os.path.relpath(cudart, home)} statically")
    return dict(
        objects=[r[0] for r in results],
        sources=[BINDINGS],
        define_macros=[("TNQ_WITH_CUDA", None)],
        libraries=[],
        library_dirs=[],
        # the static runtime's symbols stay private to our .so (--exclude-libs): torch's own libcudart keeps
        # its symbols, ours bind locally, and the two runtimes share the driver's primary context and streams.
        extra_link_args=[cudart, "-Wl,--exclude-libs,libcudart_static.a", "-ldl", "-lrt", "-lpthread"],
    )


if __name__ == "__main__":  # python build_cuda.py [build_temp]: compile the objects only, report what was built
    res = nvcc_objects(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "tnq_cuda_only"))
    for key, val in res.items():
        print(f"{key}: {val}")
