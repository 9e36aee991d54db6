"""The pure-PyTorch reference: the oracle every fast backend is tested against (code-for-code at equal seed).

Plain, vectorised torch on whatever device the input lives on. Read top to bottom, it is the whole algorithm:

    scale_truncate   per block: scale = mean|g| (fp64 sum, rounded once to fp32), max|g|, ‖g‖₂ = fp32(sqrt(fp64
                     Σg²)) or Σg²/(2Σ|g|) (fp64 sums, one fp64 division, rounded once); r = fp32(1/scale);
                     z = clamp(g·r)
    quantize         k = the level cell holding z; p = (z − c_k)·(1/(c_{k+1} − c_k)); code = k + [U < p], U the
                     uniform of (seed, index) ("stochastic") or the constant 0.5 ("nearest": ties round down)
    pack / unpack    codes ↔ b-bit bit-plane uint32 words (bit j of word p = bit p of element 32g + j)
    compress         the three jobs above, written into one payload (format.py)
    decompress(_sum) unpack, decode ĝ = scale·c_code in fp32, (weighted) sum over payloads
    ..._into         the same, written into an existing tensor `out` (its dtype is the output dtype)

Numerics that every backend reproduces exactly: the scale's fp64 accumulation is rounded once to fp32 (so the
summation order cannot change it except in ~1e-8 of blocks); z = g·r is one fp32 multiply by the block's
reciprocal r = fp32(1/scale) (one IEEE division per block, none per element — format v1.1 of the encode); the rounding
probability uses the fp32 table of inverse level gaps; U is the 16-bit centred uniform of rng.py (SPEC v1.2).
Edge cases: scale = 0 (all-zero block) gives z = 0 and decodes to exact zeros; a block holding NaN/±Inf keeps a
non-finite scale (so it decodes non-finite, as AMP's GradScaler needs), its z is set to c_0 and its codes are 0.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import checks
from . import codebooks as cb
from . import format as fmt
from . import rng


def _tables(codebook: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.tensor(cb.levels(codebook, bits), dtype=torch.float32, device=device)
    r = torch.tensor(cb.inv_gaps(codebook, bits), dtype=torch.float32, device=device)
    return c, r


def _block_ids(n: int, block_size: int, device) -> torch.Tensor:
    idx = torch.arange(n, dtype=torch.int64, device=device)
    return torch.zeros_like(idx) if block_size == 0 else idx // block_size


def block_scales(x: torch.Tensor, block_size: int, codebook: int) -> torch.Tensor:
    """Per-block fp32 scales of the flattened input: [num_blocks(n, B)]."""
    g = x.reshape(-1).to(torch.float32)
    n = g.numel()
    nb = fmt.num_blocks(n, block_size)
    if n == 0:
        return torch.zeros(nb, dtype=torch.float32, device=x.device)
    a = g.abs().to(torch.float64)
    bid = _block_ids(n, block_size, x.device)
    rule = cb.scale_rule(codebook)

    def block_sum(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(nb, dtype=torch.float64, device=x.device).index_add_(0, bid, v)

    if rule == cb.SCALE_MEAN_ABS:
        counts = torch.bincount(bid, minlength=nb).to(torch.float64)
        return (block_sum(a) / counts).to(torch.float32)
    if rule == cb.SCALE_L2:
        # fp32 squares are exact in fp64 (48 significant bits) and cannot overflow or underflow there
        return torch.sqrt(block_sum(a * a)).to(torch.float32)
    if rule == cb.SCALE_M2_M1:
        s1, s2 = block_sum(a), block_sum(a * a)
        # all-zero block: 0 (not 0/0); a non-finite block gives inf/inf or NaN, i.e. NaN
        return torch.where(s1 == 0, torch.zeros_like(s1), s2 / (2.0 * s1)).to(torch.float32)
    # max|g|: exact in any order; NaN must win over everything (amax propagates NaN).
    pad = nb * (block_size or n) - n
    a = torch.nn.functional.pad(a, (0, pad)).view(nb, -1)
    return a.amax(dim=1).to(torch.float32)


def inverse_scale(scales: torch.Tensor) -> torch.Tensor:
    """r = fp32(1/scale), one correctly rounded fp32 division per block, capped at FLT_MAX.

    The cap only matters for scales below 2^-128 (fp32 subnormals), where 1/scale overflows: with r = inf a zero
    element would give 0·inf = NaN; with r = FLT_MAX it gives 0 and every other element clamps to c_0 or c_s.
    Usable scales are finite and > 0, so r is finite and > 0 too.
    """
    r = 1.0 / scales.to(torch.float32)  # IEEE fp32 division (correctly rounded on every device)
    return torch.clamp(r, max=torch.finfo(torch.float32).max)


def scale_truncate(x: torch.Tensor, bits: int, block_size: int, codebook: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Job 1. x: any shape, fp32/fp16/bf16 → (scales fp32 [nblocks], z fp32 [n] clamped to [c_0, c_s])."""
    codebook = checks.check_compress(x, bits, block_size, codebook)
    c, _ = _tables(codebook, bits, x.device)
    g = x.reshape(-1).to(torch.float32)
    scales = block_scales(x, block_size, codebook)
    if g.numel() == 0:
        return scales, g.clone()
    s = scales[_block_ids(g.numel(), block_size, x.device)]
    finite = torch.isfinite(s)
    usable = finite & (s > 0)
    z = torch.where(usable, g * inverse_scale(s), torch.zeros_like(g))
    z = torch.clamp(z, c[0], c[-1])
    z = torch.where(finite, z, c[0].expand_as(z))
    return scales, z


def quantize(z: torch.Tensor, bits: int, codebook: int, seed: int, rounding: int = rng.STOCHASTIC) -> torch.Tensor:
    """Job 2. z: fp32 [n] in [c_0, c_s] → uint8 codes [n] by codebook lookup and rounding: unbiased stochastic
    rounding keyed by (seed, index), or to the nearest level (rounding = rng.NEAREST; no random numbers)."""
    checks.check_z(z)
    checks.check_bits(bits)
    checks.check_rounding(rounding)
    c, r = _tables(cb.codebook_id(codebook), bits, z.device)
    z = z.reshape(-1)
    k = torch.searchsorted(c[1:-1].contiguous(), z, right=True)  # number of interior levels <= z, in [0, s-1]
    p = (z - c[k]) * r[k]
    if rounding == rng.NEAREST:
        u = torch.full_like(p, rng.NEAREST_U)
    else:
        u = rng.uniform_tensor(seed, torch.arange(z.numel(), dtype=torch.int64, device=z.device))
    return (k + (u < p).to(k.dtype)).to(torch.uint8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Job 3. uint8 codes [n] → int32 words [b·ceil(n/32)] (group g holds b bit-planes of 32 elements)."""
    checks.check_codes(codes)
    checks.check_bits(bits)
    codes = codes.reshape(-1)
    n = codes.numel()
    groups = (n + 31) // 32
    c = torch.zeros(groups * 32, dtype=torch.int64, device=codes.device)
    c[:n] = codes.to(torch.int64)
    planes = (c.view(groups, 1, 32) >> torch.arange(bits, device=codes.device).view(1, bits, 1)) & 1
    words = (planes << torch.arange(32, device=codes.device)).sum(dim=2)  # [groups, bits], < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).reshape(-1)


def unpack(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack: int32 words [b·ceil(n/32)] → uint8 codes [n]."""
    checks.check_words(words, bits, n)
    groups = (n + 31) // 32
    w = words.reshape(groups, bits, 1).to(torch.int64) & rng.M32
    b = (w >> torch.arange(32, device=words.device)) & 1  # [groups, bits, 32]
    codes = (b << torch.arange(bits, device=words.device).view(1, bits, 1)).sum(dim=1)
    return codes.reshape(-1)[:n].to(torch.uint8)


def compress(x: torch.Tensor, bits: int, block_size: int, codebook: int, seed: int,
             rounding: int = rng.STOCHASTIC) -> torch.Tensor:
    """x: any shape, fp32/fp16/bf16 → uint8 payload [payload_bytes(n, bits, block_size)]."""
    checks.check_rounding(rounding)
    scales, z = scale_truncate(x, bits, block_size, codebook)
    words = pack(quantize(z, bits, codebook, seed, rounding), bits)
    n = z.numel()
    flags = 0 if bool(torch.isfinite(scales).all()) else fmt.FLAG_NONFINITE
    header = fmt.Header(bits, cb.codebook_id(codebook), fmt.DTYPE_IDS[str(x.dtype).split(".")[1]],
                        block_size, flags, n)
    out = torch.zeros(fmt.payload_bytes(n, bits, block_size), dtype=torch.uint8, device=x.device)
    out[: fmt.HEADER_BYTES] = torch.frombuffer(bytearray(fmt.pack_header(header)), dtype=torch.uint8)
    out[fmt.HEADER_BYTES: fmt.HEADER_BYTES + 4 * scales.numel()] = scales.view(torch.uint8)
    out[header.codes_offset:] = words.view(torch.uint8)
    return out


def _decode(payload: torch.Tensor, h: fmt.Header) -> torch.Tensor:
    payload = payload.contiguous()
    scales = payload[fmt.HEADER_BYTES: fmt.HEADER_BYTES + 4 * h.nblocks].view(torch.float32)
    words = payload[h.codes_offset:].view(torch.int32)
    codes = unpack(words, h.bits, h.numel).to(torch.int64)
    c, _ = _tables(h.codebook, h.bits, payload.device)
    return scales[_block_ids(h.numel, h.block_size, payload.device)] * c[codes]


def decompress(payload: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """uint8 payload → tensor of ``shape`` and ``dtype``: ĝ = scale·c_code, computed in fp32."""
    h = checks.read_header(payload)
    checks.check_shape(h, shape, "payload")
    checks.check_dtype(dtype)
    return _decode(payload, h).to(dtype).reshape(tuple(shape))


def decompress_sum(payloads: Sequence[torch.Tensor], weights: Sequence[float] | None,
                   shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Σ_w weights[w]·decode(payloads[w]) accumulated in fp32 in order w = 0, 1, …, then cast to ``dtype``."""
    headers = checks.check_sum(payloads, weights, shape, dtype)
    acc = None
    for w, (p, h) in enumerate(zip(payloads, headers)):
        v = _decode(p, h)
        if weights is not None:
            v = v * torch.tensor(weights[w], dtype=torch.float32)
        acc = v if acc is None else acc + v
    return acc.to(dtype).reshape(tuple(shape))



def decompress_into(payload: torch.Tensor, out: torch.Tensor) -> None:
    """decompress into the existing tensor ``out`` (contiguous, numel of the payload; its dtype is the output's)."""
    h = checks.read_header(payload)
    checks.check_out(out, [payload], h.numel)
    out.copy_(_decode(payload, h).view(out.shape))


def decompress_sum_into(payloads: Sequence[torch.Tensor], weights: Sequence[float] | None,
                        out: torch.Tensor) -> None:
    """decompress_sum into the existing tensor ``out``: same sum, same fp32 accumulation, one final cast."""
    checks.check_payloads(payloads, weights)
    h = checks.read_header(payloads[0], "payloads[0]")
    checks.check_out(out, payloads, h.numel)
    out.copy_(decompress_sum(payloads, weights, out.shape, out.dtype))
