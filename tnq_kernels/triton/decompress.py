"""Decode (SPEC §2): packed codes + scales → values ĝ = scale·c_code (one fp32 multiply), cast to the output dtype.

kernel helpers → kernels → launchers (decode_into, decompress_into) → registered op (`tnq::triton_decompress`) →
public function.

The op is a plain torch.library.custom_op, not a triton_op: it must read and validate the 32-byte header on the
host before it launches anything (a corrupted payload never reads out of bounds), and a triton_op's body is also
run on fake tensors while tracing, where no data can be read. Opaque to Inductor, it still never breaks a graph.

While a CUDA graph is being captured no host read is allowed (it would synchronise). There the launchers take
bits, codebook and block size from the header in device memory (checked_kernel): the kernel validates the header
itself against n (from `shape`) and the payload's length, and decodes an invalid payload to NaN without reading
past its header, since no exception can be raised from inside a graph. Warm up once before capturing (it compiles
the kernels and builds the device-side tables).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .. import format as fmt
from .. import checks
from . import _common as C
from .pack import unpack_planes

CHUNK = 2048
MAGIC = tl.constexpr(C.i32(C.MAGIC_WORD))
#: codebook ids the device-side header check accepts (as format.parse_header)
NUM_CODEBOOKS = tl.constexpr(fmt.NUM_CODEBOOKS)
#: how a tile finds its scales: the tensor's one scale, one scale per tile, or a gather per element
SCALE_WHOLE, SCALE_PER_TILE, SCALE_PER_ELEMENT = 0, 1, 2


@triton.jit
def decode_tile(in_ptr, e0, n, block_size, codes_w0, table_ptr, BITS: tl.constexpr, CHUNK: tl.constexpr,
                SCALE_MODE: tl.constexpr, EXACT: tl.constexpr):
    """in: int32 view of a payload; e0: first element (int64, multiple of CHUNK) → fp32 values [CHUNK]."""
    code = unpack_planes(in_ptr + codes_w0, e0 // 32, tl.cdiv(n - e0, 32), CHUNK, BITS)
    c = tl.load(table_ptr + code)
    if SCALE_MODE == 0:
        s = tl.load(in_ptr + 8).to(tl.float32, bitcast=True)
    elif SCALE_MODE == 1:
        s = tl.load(in_ptr + 8 + e0 // block_size).to(tl.float32, bitcast=True)
    else:
        # int32 division per element (the block index of the tile's first element is done once in int64)
        local = (e0 % block_size).to(tl.int32) + tl.arange(0, CHUNK)
        s = tl.load(in_ptr + 8 + e0 // block_size + local // block_size, mask=e0 + tl.arange(0, CHUNK) < n,
                    other=0).to(tl.float32, bitcast=True)
    return s * c


@triton.jit
def checked_header(in_ptr, n, nbytes):
    """Parse and validate a payload's header in device memory (as format.parse_header, against numel n and the
    payload length nbytes) → (valid, bits, codebook, block_size, codes_w0), all scalars, sizes in int64."""
    w1 = tl.load(in_ptr + 1)
    bits = (w1 >> 8) & 0xFF
    codebook = (w1 >> 16) & 0xFF
    B = tl.load(in_ptr + 2).to(tl.int64)
    numel = (tl.load(in_ptr + 4).to(tl.uint32, bitcast=True).to(tl.int64)
             | (tl.load(in_ptr + 5).to(tl.int64) << 32))
    n64 = tl.cast(n, tl.int64)
    nblocks = tl.where(B == 0, 1, (n64 + B - 1) // tl.maximum(B, 1))
    codes_w0 = (32 + (4 * nblocks + 15) // 16 * 16) // 4
    need = 4 * codes_w0 + 4 * bits.to(tl.int64) * ((n64 + 31) // 32)
    valid = ((tl.load(in_ptr) == MAGIC) & ((w1 & 0xFF) == 1) & (bits >= 1) & (bits <= 8) & (codebook < NUM_CODEBOOKS)
             & (((w1 >> 24) & 0xFF) <= 2) & (B >= 0) & (B <= (1 << 30)) & (B % 32 == 0)
             & ((tl.load(in_ptr + 3) & ~1) == 0) & (tl.load(in_ptr + 6) == 0) & (tl.load(in_ptr + 7) == 0)
             & (numel == n64) & (need == tl.cast(nbytes, tl.int64)))
    return valid, tl.where(valid, bits, 1), tl.where(valid, codebook, 0), B, codes_w0


@triton.jit
def checked_tile(in_ptr, e0, n, valid, bits, codebook, B, codes_w0, levels_ptr, CHUNK: tl.constexpr):
    """decode_tile with bits, codebook and block size known only at run time → fp32 [CHUNK]; NaN if not valid.
    Every load is masked by `valid`: an invalid header reads nothing past itself."""
    gi = tl.arange(0, CHUNK // 32)
    gm = valid & (gi < tl.cdiv(n - e0, 32))
    lane = tl.arange(0, 32)[None, :]
    code = tl.zeros([CHUNK // 32, 32], tl.int32)
    base = in_ptr + codes_w0 + (e0 // 32 + gi) * bits
    for p in tl.static_range(8):
        w = tl.load(base + p, mask=gm & (p < bits), other=0)
        code = code | (((w[:, None] >> lane) & 1) << p)
    code = tl.reshape(code, [CHUNK])
    idx = e0 + tl.arange(0, CHUNK)
    m = valid & (idx < n)
    c = tl.load(levels_ptr + (codebook * 8 + bits - 1) * 256 + code, mask=m, other=0.0)
    blk = tl.where(B == 0, 0, idx // tl.maximum(B, 1))
    s = tl.load(in_ptr + 8 + blk, mask=m, other=0).to(tl.float32, bitcast=True)
    return tl.where(valid, s * c, float("nan"))


@triton.jit
def checked_kernel(in_ptr, acc_ptr, out_ptr, levels_ptr, n, nbytes, weight, ACC_IN: tl.constexpr,
                   WEIGHTED: tl.constexpr, CHUNK: tl.constexpr, EXACT: tl.constexpr):
    """One payload term, header read on the device: out = [acc +] [weight ·] decode(payload) (fp32 accumulation,
    the reference's order and roundings; launched without FMA contraction)."""
    e0 = tl.program_id(0).to(tl.int64) * CHUNK
    valid, bits, codebook, B, codes_w0 = checked_header(in_ptr, n, nbytes)
    v = checked_tile(in_ptr, e0, n, valid, bits, codebook, B, codes_w0, levels_ptr, CHUNK)
    if WEIGHTED:
        v = v * weight
    idx = e0 + tl.arange(0, CHUNK)
    m = idx < n
    if ACC_IN:
        v = tl.load(acc_ptr + idx, mask=m, other=0.0) + v
    tl.store(out_ptr + idx, C.to_output(v, out_ptr.dtype.element_ty, EXACT), mask=m)


@triton.jit
def decompress_kernel(in_ptr, out_ptr, table_ptr, n, block_size, codes_w0, BITS: tl.constexpr, CHUNK: tl.constexpr,
                      SCALE_MODE: tl.constexpr, EXACT: tl.constexpr):
    e0 = tl.program_id(0).to(tl.int64) * CHUNK
    v = decode_tile(in_ptr, e0, n, block_size, codes_w0, table_ptr, BITS, CHUNK, SCALE_MODE, EXACT)
    idx = e0 + tl.arange(0, CHUNK)
    tl.store(out_ptr + idx, C.to_output(v, out_ptr.dtype.element_ty, EXACT), mask=idx < n)


def scale_mode(block_size: int) -> int:
    if block_size == 0:
        return SCALE_WHOLE
    return SCALE_PER_TILE if block_size % CHUNK == 0 else SCALE_PER_ELEMENT


def words_of(payload: torch.Tensor) -> torch.Tensor:
    """The payload as int32 words (its length is a multiple of 4 bytes: 16-aligned scales + 4-byte words)."""
    return payload.contiguous().view(torch.int32)


def check_shape(h: fmt.Header, shape: Sequence[int], dtype: torch.dtype, name: str) -> None:
    checks.check_shape(h, shape, name)
    check_dtype(dtype, "dtype")


def check_dtype(dtype: torch.dtype, name: str) -> None:
    if dtype not in checks.SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {dtype}")


def check_out(out: torch.Tensor, device: torch.device) -> None:
    """decompress_into's destination: contiguous, on the payloads' device, an output dtype (numel is checked
    against the header where one is read, and by the kernel otherwise)."""
    check_dtype(out.dtype, "out.dtype")
    if not out.is_contiguous():
        raise ValueError(f"out must be contiguous, got strides {tuple(out.stride())} for shape {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the payload is on {device}")


def decode_into(payload: torch.Tensor, out: torch.Tensor, h: fmt.Header) -> None:
    """Launcher: decode a payload whose header `h` was validated on the host into contiguous `out` (numel h.numel)."""
    if h.numel == 0:
        return
    C.all_levels(payload.device)  # an eager decode prepares the capture path's table (see checked_kernel)
    with C.device_guard(payload.device):
        decompress_kernel[(triton.cdiv(h.numel, CHUNK),)](
            words_of(payload), out, C.table(h.codebook, h.bits, payload.device), h.numel, h.block_size,
            h.codes_offset // 4, BITS=h.bits, CHUNK=CHUNK, SCALE_MODE=scale_mode(h.block_size), EXACT=C.EXACT,
            num_warps=C.warps_for(CHUNK), **C.NO_FMA)


def checked_term(payload: torch.Tensor, out: torch.Tensor, acc: torch.Tensor | None, weight: float | None) -> None:
    """Launcher of checked_kernel (no host read): out = [acc +] [weight ·] decode(payload), out.numel() elements."""
    n = out.numel()
    if n == 0:
        return
    with C.device_guard(payload.device):
        checked_kernel[(triton.cdiv(n, CHUNK),)](
            words_of(payload), out if acc is None else acc, out, C.all_levels(payload.device), n, payload.numel(),
            1.0 if weight is None else float(weight), ACC_IN=acc is not None, WEIGHTED=weight is not None,
            CHUNK=CHUNK, EXACT=C.EXACT, num_warps=C.warps_for(CHUNK), **C.NO_FMA)


def decode_to(payload: torch.Tensor, out: torch.Tensor, shape: Sequence[int], name: str) -> None:
    """The one decode path of decompress and decompress_into: `out` contiguous with prod(shape) elements."""
    if C.capturing(payload.device):
        checked_term(payload, out, None, None)
        return
    h = checks.read_header(payload, name)
    check_shape(h, shape, out.dtype, name)
    decode_into(payload, out.view(-1), h)


def decompress_into(payload: torch.Tensor, out: torch.Tensor) -> None:
    """Decode `payload` into the existing contiguous tensor `out` (numel = the payload's, dtype = output dtype)."""
    check_out(out, payload.device)
    decode_to(payload, out, [out.numel()], "payload")


def triton_decompress(payload: torch.Tensor, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """uint8 payload → tensor of `shape` and `dtype` (header validated on the host first, or on the device
    while a CUDA graph is captured)."""
    check_dtype(dtype, "dtype")
    out = torch.empty(shape, dtype=dtype, device=payload.device)
    decode_to(payload, out, shape, "payload")
    return out



def decompress(payload: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """uint8 payload → tensor of ``shape`` and ``dtype`` (reference signature)."""
    return torch.ops.tnq.triton_decompress(payload, list(shape), dtype)
