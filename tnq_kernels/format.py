"""Wire format v1 (docs/format.md): one contiguous little-endian uint8 payload per compressed tensor.

    bytes 0-3   magic b"TNQK"            bytes 12-15 flags (bit 0: some block is non-finite)
    byte  4     version = 1              bytes 16-23 numel n
    byte  5     bits b (1-8)             bytes 24-31 reserved, zero
    byte  6     codebook id (0-15)       bytes 32 …  nblocks fp32 scales
    byte  7     source dtype (0-2)       next 16-byte boundary …  ceil(n/32) groups of b uint32 bit-plane words
    bytes 8-11  block size B (0 = one block for the whole tensor, else a positive multiple of 32)

Pure Python (``struct`` only): knows nothing of torch, so sizes can be computed for fake/meta tensors too.
The header constants are mirrored in csrc/tnq_constants.h and cross-checked by tests/test_format.py.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"TNQK"
VERSION = 1
HEADER_BYTES = 32
CODES_ALIGN = 16
FLAG_NONFINITE = 1
#: byte offset of the flags word (bytes 12-15 of _HEADER below)
FLAGS_OFFSET = 12
KNOWN_FLAGS = FLAG_NONFINITE
#: source dtype ids (byte 7); names are torch dtype names without the "torch." prefix.
DTYPE_IDS = {"float32": 0, "float16": 1, "bfloat16": 2}
DTYPE_NAMES = {v: k for k, v in DTYPE_IDS.items()}
MAX_BLOCK_SIZE = 1 << 30
#: codebook ids a decoder accepts, 0 … NUM_CODEBOOKS − 1 (their tables: codebooks.py, which has the same count)
NUM_CODEBOOKS = 16
_HEADER = struct.Struct("<4sBBBBIIQQ")
assert _HEADER.size == HEADER_BYTES


def check_block_size(block_size: int) -> int:
    if (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0
            or block_size % 32 or block_size > MAX_BLOCK_SIZE):
        raise ValueError(
            f"block_size must be 0 (one scale per tensor) or a positive multiple of 32 up to 2^30, got {block_size!r}")
    return block_size


def num_blocks(n: int, block_size: int) -> int:
    """Number of per-block scales: ceil(n/B), or 1 when B = 0 (one scale for the whole tensor)."""
    return 1 if block_size == 0 else (n + block_size - 1) // block_size


def codes_offset(n: int, block_size: int) -> int:
    """Byte offset of the first code word: the header plus the scales, rounded up to 16 bytes."""
    return HEADER_BYTES + (4 * num_blocks(n, block_size) + CODES_ALIGN - 1) // CODES_ALIGN * CODES_ALIGN


def num_words(n: int, bits: int) -> int:
    """uint32 code words: b words for each group of 32 elements."""
    return bits * ((n + 31) // 32)


def payload_bytes(n: int, bits: int, block_size: int) -> int:
    """Payload size, a pure function of (n, b, B): 32 + align16(4·nblocks) + 4·b·ceil(n/32).

    Works on ints and on torch SymInts (only +, *, // are used), so fake kernels can call it."""
    return codes_offset(n, block_size) + 4 * num_words(n, bits)


@dataclass(frozen=True)
class Header:
    bits: int
    codebook: int
    dtype: int
    block_size: int
    flags: int
    numel: int

    @property
    def nblocks(self) -> int:
        return num_blocks(self.numel, self.block_size)

    @property
    def codes_offset(self) -> int:
        return codes_offset(self.numel, self.block_size)

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.numel, self.bits, self.block_size)


def pack_header(h: Header) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, h.bits, h.codebook, h.dtype, h.block_size, h.flags, h.numel, 0)


def parse_header(buf: bytes, total_len: int | None = None, name: str = "payload") -> Header:
    """Parse and validate a v1 header; with ``total_len``, also check the payload length.

    Raises ValueError naming the field (magic, version, bits, codebook, dtype, block_size, flags, reserved,
    length) on any mismatch, so a corrupted or truncated payload is rejected before any data is read.
    """
    if len(buf) < HEADER_BYTES:
        raise ValueError(f"{name} length: {len(buf)} bytes is shorter than the {HEADER_BYTES}-byte TNQ header")
    magic, version, bits, cb, dt, bs, flags, numel, reserved = _HEADER.unpack(bytes(buf[:HEADER_BYTES]))
    if magic != MAGIC:
        raise ValueError(f"{name} magic: expected {MAGIC!r}, got {magic!r} (not a tnq_kernels payload)")
    if version != VERSION:
        raise ValueError(f"{name} version: this build reads format version {VERSION}, got {version}")
    if not 1 <= bits <= 8:
        raise ValueError(f"{name} bits: must be in [1, 8], got {bits}")
    if cb >= NUM_CODEBOOKS:
        raise ValueError(f"{name} codebook: id must be 0-{NUM_CODEBOOKS - 1} (0 tnq, 1 tqsgd, 2 nqsgd, 3 qsgd, "
                         f"4 qsgd_l2, 5 nuqsgd_l2, 6-14 rtnq1-rtnq256, 15 tnq_max), got {cb}")
    if dt not in DTYPE_NAMES:
        raise ValueError(f"{name} dtype: id must be 0-2 (float32, float16, bfloat16), got {dt}")
    if bs % 32 or bs > MAX_BLOCK_SIZE:
        raise ValueError(f"{name} block_size: must be 0 or a multiple of 32 up to 2^30, got {bs}")
    if flags & ~KNOWN_FLAGS:
        raise ValueError(f"{name} flags: unknown bits set in {flags:#x}")
    if reserved != 0:
        raise ValueError(f"{name} reserved: bytes 24-31 must be zero, got {reserved:#x}")
    if numel >= 1 << 62:
        raise ValueError(f"{name} numel: {numel} is not a plausible element count")
    h = Header(bits, cb, dt, bs, flags, numel)
    if total_len is not None and total_len != h.nbytes:
        raise ValueError(
            f"{name} length: header (n={numel}, bits={bits}, block_size={bs}) needs {h.nbytes} bytes, got {total_len}")
    return h
