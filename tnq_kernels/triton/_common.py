"""Shared pieces of the Triton backend: the counter-based hash of SPEC v1.2 (docs/RNG.md), exact fp32 arithmetic helpers,
the codebook table cache and small host-side helpers.

Numerics contract (see tnq_kernels/reference.py): every expression is evaluated in the same IEEE fp32 operations
as the oracle. The only place where LLVM could fuse a multiply into a following add (FMA contraction) is the
accumulation of decompress_sum; its launches pass enable_fp_fusion=False (tests/test_triton_aot.py checks the PTX
has no fma there, nor flush-to-zero anywhere; libdevice's mul_rn/add_rn would avoid the FMA too, but Triton links
libdevice with FTZ on, which flushes subnormal products). The interpreter evaluates each operation separately.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .. import codebooks as cb
from .. import format as fmt
from .. import rng

#: True when @triton.jit kernels run on CPU tensors through the numpy interpreter (read at kernel definition).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: constexpr handed to decode kernels: False selects the interpreter's bf16 rounding fix-up (see to_output).
EXACT = not INTERPRET
#: launch option for kernels whose fp32 mul + add must stay two roundings (ignored by the interpreter).
NO_FMA = {} if INTERPRET else {"enable_fp_fusion": False}

#: the magic bytes as a little-endian uint32 (payload word 0).
MAGIC_WORD = int.from_bytes(fmt.MAGIC, "little")
#: int32 word offsets in a payload, as constexprs the kernels can read: the first scale and the flags word.
SCALE_WORD0 = tl.constexpr(fmt.HEADER_BYTES // 4)
#: U of every element under rounding="nearest" (rng.NEAREST_U): code = k + [0.5 < p]
NEAREST_U = tl.constexpr(rng.NEAREST_U)
FLAGS_WORD = tl.constexpr(fmt.FLAGS_OFFSET // 4)

# Elements one program keeps in registers: a whole default-size block (2048) is read once and reused for the
# scale, the rounding and the packing. Larger blocks loop over chunks of this size (a second, L2-warm read).
MAX_CHUNK = 4096
#: elements per program when several small blocks share one (B < 2048): ROWS = ROWS_TARGET // next_pow2(B).
ROWS_TARGET = 2048
# B = 0 (one scale per tensor): elements per program of the quantize pass, and the cap on partial-sum programs
# (each quantize program re-reduces all partials from L2, so fewer partials keep that overhead small).
SEGMENT_B0 = 16384
MAX_PARTIALS = 1024
#: elements per program for blocks longer than MAX_CHUNK (the tiled path, like the CUDA kernels' kTile)
TILE = 16384


@triton.jit
def fmix32(x):
    """MurmurHash3's 32-bit finaliser on uint32 (multiplies wrap mod 2^32, >> is logical on unsigned)."""
    x ^= x >> 16
    x *= 0x85EBCA6B
    x ^= x >> 13
    x *= 0xC2B2AE35
    x ^= x >> 16
    return x


@triton.jit
def pair_key(key0, key1, j_hi):
    """K = fmix32(key0 ^ fmix32(j_hi ^ key1)): the key of every pair whose index has high half j_hi (uint32)."""
    return fmix32(key0 ^ fmix32(j_hi ^ key1))


@triton.jit
def uniform16(idx, i_first, key0, key1):
    """U = (m + 0.5) · 2^-16 of SPEC v1.2 (docs/RNG.md): idx int64 global element indices, keys uint32 → fp32
    (exact). i_first: an int64 scalar ≤ every idx and less than 2^33 below all of them (the program's first
    element), so the pair keys are computed once per program, for its j_hi and the next; each element picks its
    own. m is the low (even idx) or high (odd idx) half of the hash of the pair idx >> 1."""
    hi0 = i_first >> 33
    ka = pair_key(key0, key1, hi0.to(tl.uint32))
    kb = pair_key(key0, key1, (hi0 + 1).to(tl.uint32))
    k = tl.where((idx >> 33) == hi0, ka, kb)
    h = fmix32((idx >> 1).to(tl.uint32) ^ k)
    m = tl.where((idx & 1) == 0, h & 0xFFFF, h >> 16)
    return (m.to(tl.float32) + 0.5) * (1.0 / 65536.0)


@triton.jit
def to_output(v, DTYPE: tl.constexpr, EXACT: tl.constexpr):
    """fp32 → the output dtype with round-to-nearest-even, as torch's .to(). The interpreter's numpy emulation
    of bf16 truncates, so there the rounding is done on the bits first (the final cast is then exact)."""
    if (not EXACT) and (DTYPE == tl.bfloat16):
        b = v.to(tl.uint32, bitcast=True)
        r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        v = tl.where(v != v, v, r)
    return v.to(DTYPE)


def device_guard(device: torch.device):
    """The context every launcher enqueues its kernels in: Triton launches on the *current* CUDA device and its
    current stream, so the tensor's device is made current (as the C++ binding's DeviceGuard does). Without it,
    x on cuda:1 while cuda:0 is current would fault, or run unordered with cuda:1's stream."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def capturing(device: torch.device) -> bool:
    """True while `device`'s current stream is being captured into a CUDA graph: then nothing may synchronise
    with the host, so the decoders take the header from device memory instead of reading it on the host."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def launches(t: torch.Tensor) -> bool:
    """False only while tracing under the interpreter (fake tensors): then a launcher computes shapes only."""
    return not (INTERPRET and is_fake(t))


def i32(v: int) -> int:
    """A value in [0, 2^32) as the signed int32 with the same bits, so Triton types the argument as i32."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def seed_args(seed: int) -> tuple[int, int]:
    """(key0, key1) of rng.seed_keys as signed int32 kernel arguments (bit-cast back to uint32 in the kernel)."""
    k0, k1 = rng.seed_keys(seed)
    return i32(k0), i32(k1)


_TABLES: dict = {}


def _not_while_capturing(device) -> None:
    # building a table copies from the host, which a CUDA graph capture forbids (with an obscure error)
    if capturing(torch.device(device)):
        raise RuntimeError(f"tnq (Triton): the level tables for {device} are built by the first eager call; run "
                           f"the op once before capturing a CUDA graph (that also compiles the kernels)")


def table(codebook: int, bits: int, device) -> torch.Tensor:
    """fp32 [2^(bits+1)]: the 2^b levels c_0..c_s, then the s inverse gaps 1/(c_{k+1} − c_k), then one pad.

    Cached per (codebook, bits, device) so a launch never copies a table from the host (a pageable H2D copy
    would synchronise the stream)."""
    key = (codebook, bits, str(device))
    t = _TABLES.get(key)
    if t is None:
        _not_while_capturing(device)
        vals = list(cb.levels(codebook, bits)) + list(cb.inv_gaps(codebook, bits)) + [0.0]
        t = torch.tensor(vals, dtype=torch.float32, device=device)
        _TABLES[key] = t
    return t


#: levels per (codebook, bits) slot of all_levels: 2^8, the most a payload can have.
LEVELS_STRIDE = 256


def all_levels(device) -> torch.Tensor:
    """fp32 [ncodebooks · 8 · 256]: the levels of every (codebook, bits), slot (codebook·8 + bits − 1)·256, for
    the decoder that reads bits and codebook from the payload on the device (graph capture). Cached per device;
    the first eager decode builds it, so a capture after one warm-up call copies nothing from the host."""
    key = ("all", str(device))
    t = _TABLES.get(key)
    if t is None:
        _not_while_capturing(device)
        vals = []
        for codebook in range(len(cb.CODEBOOK_IDS)):
            for bits in range(1, cb.MAX_BITS + 1):
                lv = list(cb.levels(codebook, bits))
                vals += lv + [0.0] * (LEVELS_STRIDE - len(lv))
        t = torch.tensor(vals, dtype=torch.float32, device=device)
        _TABLES[key] = t
    return t


def next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def chunk_for(block_size: int) -> int:
    """Elements per register tile: the whole block when it fits (read once), else MAX_CHUNK."""
    if 0 < block_size <= MAX_CHUNK:
        return max(32, next_pow2(block_size))
    return MAX_CHUNK


def warps_for(chunk: int) -> int:
    return 8 if chunk >= 4096 else 4 if chunk >= 1024 else 2 if chunk >= 256 else 1


def flat(x: torch.Tensor) -> torch.Tensor:
    """The flattened, contiguous view the kernels index with (copies only a non-contiguous input)."""
    return x.reshape(-1).contiguous()
