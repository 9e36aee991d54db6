"""The `tnq` op registry: every schema and fake kernel is defined here, once (STYLE rule 2).

Backends attach to these schemas per dispatch key:
  CPU   C++ in csrc/cpu (TORCH_LIBRARY_IMPL(tnq, CPU)), loaded from tnq_kernels._C at import;
  CUDA  C++/CUDA in csrc/cuda when built in (TORCH_LIBRARY_IMPL(tnq, CUDA) in the same _C).
The Triton kernels (tnq_kernels.triton) and the pure-PyTorch oracle (reference.py) have the same signatures; which of
them runs is decided in one place, `kernel(op, backend, device_type)`, from the public API's ``backend=`` argument
or TNQ_BACKEND — never silently. If a native backend is missing, import still succeeds; calling an op on that device
raises BackendUnavailable with the command that builds it.
"""
from __future__ import annotations

import importlib
import os

import torch

from . import format as fmt

NAMESPACE = "tnq"
BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` (or `make build`) from the repository root, "
              "or pass backend='reference' / set TNQ_BACKEND=reference to use the pure-PyTorch oracle")

SCHEMAS = {
    "compress": "compress(Tensor x, int bits, int block_size, int codebook, int seed, int rounding=0) -> Tensor",
    "decompress": "decompress(Tensor payload, SymInt[] shape, ScalarType dtype) -> Tensor",
    "decompress_sum": ("decompress_sum(Tensor[] payloads, float[]? weights, SymInt[] shape, ScalarType dtype)"
                       " -> Tensor"),
    # decode into an existing contiguous tensor (e.g. a DDP bucket): out's numel must equal the payload's, its
    # dtype sets the output dtype; nothing is allocated, so the page faults of a fresh output are avoided
    "decompress_into": "decompress_into(Tensor payload, Tensor(a!) out) -> ()",
    "decompress_sum_into": "decompress_sum_into(Tensor[] payloads, float[]? weights, Tensor(a!) out) -> ()",
    "scale_truncate": "scale_truncate(Tensor x, int bits, int block_size, int codebook) -> (Tensor, Tensor)",
    "quantize": "quantize(Tensor z, int bits, int codebook, int seed, int rounding=0) -> Tensor",
    "pack": "pack(Tensor codes, int bits) -> Tensor",
    "unpack": "unpack(Tensor words, int bits, SymInt n) -> Tensor",
}


class BackendUnavailable(RuntimeError):
    """A native backend needed for this device was not built or failed to load."""


_lib = torch.library.Library(NAMESPACE, "DEF")
for _schema in SCHEMAS.values():
    _lib.define(_schema)


# ---- fake (meta) kernels: shapes only, no data; payload size is a pure function of (n, b, B) ----

@torch.library.register_fake("tnq::compress")
def _compress_fake(x, bits, block_size, codebook, seed, rounding=0):
    return x.new_empty(fmt.payload_bytes(x.numel(), bits, block_size), dtype=torch.uint8)


@torch.library.register_fake("tnq::decompress")
def _decompress_fake(payload, shape, dtype):
    return payload.new_empty(shape, dtype=dtype)


@torch.library.register_fake("tnq::decompress_sum")
def _decompress_sum_fake(payloads, weights, shape, dtype):
    torch._check(len(payloads) > 0, lambda: "payloads must hold at least one payload")
    return payloads[0].new_empty(shape, dtype=dtype)


def _check_out_device(out, payloads):
    # a meta `out` next to real payloads dispatches here, not to a backend that would reject it (checks.check_out's
    # wording; its other checks need data pointers, which fake tensors lack)
    for w, p in enumerate(payloads):
        if out.device != p.device:
            raise ValueError(f"out is on {out.device} but payload {w} is on {p.device}")


@torch.library.register_fake("tnq::decompress_into")
def _decompress_into_fake(payload, out):
    _check_out_device(out, [payload])
    return None


@torch.library.register_fake("tnq::decompress_sum_into")
def _decompress_sum_into_fake(payloads, weights, out):
    torch._check(len(payloads) > 0, lambda: "payloads must hold at least one payload")
    _check_out_device(out, payloads)
    return None


@torch.library.register_fake("tnq::scale_truncate")
def _scale_truncate_fake(x, bits, block_size, codebook):
    n = x.numel()
    return (x.new_empty(fmt.num_blocks(n, block_size), dtype=torch.float32),
            x.new_empty(n, dtype=torch.float32))


@torch.library.register_fake("tnq::quantize")
def _quantize_fake(z, bits, codebook, seed, rounding=0):
    return z.new_empty(z.numel(), dtype=torch.uint8)


@torch.library.register_fake("tnq::pack")
def _pack_fake(codes, bits):
    return codes.new_empty(fmt.num_words(codes.numel(), bits), dtype=torch.int32)


@torch.library.register_fake("tnq::unpack")
def _unpack_fake(words, bits, n):
    return words.new_empty(n, dtype=torch.uint8)


# ---- the Triton ops: triton_op wrappers of the launchers in tnq_kernels/triton, so Inductor sees the kernels ----

#: tnq::<name> → (module of tnq_kernels.triton, launcher). A launcher takes the codebook's table tensor in place of
#: the codebook id (the table is cached per device, so no launch copies it from the host); otherwise the
#: signatures match SCHEMAS, and the module's adapter of the same name as the public op builds that table.
TRITON_OPS = {
    "triton_compress": ("compress", "triton_compress"),
    "triton_scale_truncate": ("scale_truncate", "triton_scale_truncate"),
    "triton_quantize": ("quantize", "triton_quantize"),
    "triton_pack": ("pack", "triton_pack"),
    "triton_unpack": ("pack", "triton_unpack"),
    # The decoders read and validate the 32-byte header on the host before any launch (a corrupted payload never
    # reads out of bounds); a triton_op's body is also traced with fake tensors, where no data can be read, so
    # these two are opaque custom ops with the fakes below: still no graph break.
    "triton_decompress": ("decompress", "triton_decompress"),
    "triton_decompress_sum": ("decompress_sum", "triton_decompress_sum"),
    "triton_decompress_into": ("decompress", "triton_decompress_into"),
    "triton_decompress_sum_into": ("decompress_sum", "triton_decompress_sum_into"),
}
_OPAQUE = {"triton_decompress": _decompress_fake, "triton_decompress_sum": _decompress_sum_fake,
           "triton_decompress_into": _decompress_into_fake, "triton_decompress_sum_into": _decompress_sum_into_fake}


def register_triton(interpret: bool) -> None:
    """Register TRITON_OPS (called once, by tnq_kernels/triton/__init__.py after it imported the launchers).

    On GPUs a launcher becomes a torch.library.triton_op: torch.compile decomposes it into its wrap_triton kernel
    calls. Under TRITON_INTERPRET=1, wrap_triton hands back the interpreted function itself, which would run on fake
    tensors while tracing; there the launcher is an opaque custom_op whose fake is the launcher with its launches
    skipped (tnq_kernels.triton._common.launches)."""
    mods = {m: importlib.import_module(f"{__package__}.triton.{m}") for m, _ in TRITON_OPS.values()}
    for name, (mod, fn_name) in TRITON_OPS.items():
        fn = getattr(mods[mod], fn_name)
        qualname = f"{NAMESPACE}::{name}"
        if name in _OPAQUE:
            op = torch.library.custom_op(qualname, fn, mutates_args=("out",) if name.endswith("_into") else ())
            op.register_fake(_OPAQUE[name])
        elif not interpret:
            torch.library.triton_op(qualname, fn, mutates_args=())
        else:
            op = torch.library.custom_op(qualname, fn, mutates_args=())
            op.register_fake(fn)


# ---- native backends ----

native_error: BaseException | None = None
try:  # registers the C++ CPU (and, when compiled in, CUDA) kernels
    _C = importlib.import_module("tnq_kernels._C")
except (ImportError, OSError) as e:  # never fail import for a missing backend (STYLE rule 5)
    _C = None
    native_error = e


def has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


#: ops whose CUDA kernel the C++ extension registered (csrc/cuda/bindings.cpp).
NATIVE_CUDA_OPS = frozenset(op for op in SCHEMAS if has_kernel(op, "CUDA"))


def _raiser(op: str, device: str, why: str):
    def kernel(*args, **kwargs):
        raise BackendUnavailable(f"tnq::{op} has no {device} kernel: {why}; {BUILD_HINT}")
    return kernel


for _op in SCHEMAS:
    if not has_kernel(_op, "CPU"):
        _lib.impl(_op, _raiser(_op, "CPU", f"the C++ extension tnq_kernels._C did not load ({native_error})"), "CPU")
    if not has_kernel(_op, "CUDA"):
        # One path from the API to a kernel: the public API sends CUDA tensors to Triton itself (see `kernel`), so
        # the dispatcher never forwards; a direct torch.ops.tnq call on a CUDA tensor says what to do instead.
        _lib.impl(_op, _raiser(_op, "CUDA", "this build has no C++ CUDA kernels (built without nvcc or with "
                                            f"TNQ_CUDA=0); call tnq_kernels.{_op}(..., backend='triton')"), "CUDA")


# ---- backend choice: the one place where a call is routed to a kernel ----

#: "auto": C++ on CPU tensors; on CUDA tensors DEFAULT_CUDA_BACKEND. "reference": the pure-PyTorch oracle.
#: "triton": the Triton kernels (on CPU tensors only under TRITON_INTERPRET=1). "cuda": the C++ CUDA kernels.
BACKENDS = ("auto", "reference", "triton", "cuda")
#: What "auto" runs on CUDA tensors when the C++ CUDA kernels are built (Triton otherwise). Not yet chosen by a GPU
#: measurement: `make gpu-check` prints the side-by-side verdict that should set it.
DEFAULT_CUDA_BACKEND = "cuda"


def backend_name(op: str, backend: str | None, device_type: str) -> str:
    """Resolve the ``backend=`` argument (or TNQ_BACKEND) for ``op`` on a tensor of ``device_type``:
    "native" (the dispatcher's C++ kernel for that device), "reference" or "triton"."""
    name = backend if backend is not None else os.environ.get("TNQ_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (argument or TNQ_BACKEND), got {name!r}")
    if name == "auto":
        if device_type != "cuda":
            return "native"
        return "native" if DEFAULT_CUDA_BACKEND == "cuda" and op in NATIVE_CUDA_OPS else "triton"
    if name == "cuda":
        if device_type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got a tensor on {device_type}; use "
                             f"backend='auto' (or None) for {device_type} tensors")
        if op not in NATIVE_CUDA_OPS:
            raise BackendUnavailable(
                f"backend='cuda': tnq::{op} has no C++ CUDA kernel in this build (the extension was built without "
                f"nvcc or with TNQ_CUDA=0); rebuild with nvcc on PATH, or use backend='triton' / 'auto'")
        return "native"
    return name


def kernel(op: str, backend: str | None, device_type: str):
    """The function that runs ``op`` (signature of the `tnq` schema) for this backend and device."""
    name = backend_name(op, backend, device_type)
    if name == "reference":
        from . import reference
        return getattr(reference, op)
    if name == "triton":
        try:
            from . import triton as tnq_triton
        except ImportError as e:
            raise BackendUnavailable(f"tnq::{op}: the Triton backend failed to import ({e}); install triton") from e
        return getattr(tnq_triton, op)
    return getattr(torch.ops.tnq, op)
