"""The Triton backend of tnq_kernels: the three jobs of SPEC §2 as Triton kernels, fused for the hot paths.

    scale_truncate.py  job 1: per-block scale + truncation      (tnq::triton_scale_truncate, triton_op)
    quantize.py        job 2: lookup + stochastic rounding      (tnq::triton_quantize, triton_op)
    pack.py            job 3: bit-plane pack / unpack           (tnq::triton_pack, tnq::triton_unpack, triton_op)
    compress.py        fused 1+2+3, one read of each block      (tnq::triton_compress, triton_op)
    decompress.py      unpack + decode                          (tnq::triton_decompress, custom_op)
    decompress_sum.py  fused decode + weighted sum of W payloads (tnq::triton_decompress_sum, custom_op)

The module-level functions have the reference's signatures (the public API's backend="triton" calls them);
IMPLS maps each `tnq` op name to one of them for ops.py's CUDA forwarder (used when the C++ CUDA build is absent).
Payloads equal tnq_kernels.reference's byte for byte at equal seed, within SPEC §1: a scale may differ in its
last bit on crafted inputs (another fp64 summation order), and a non-finite block's scale is some NaN. Under TRITON_INTERPRET=1 (set before this
package is imported) the same kernels run on CPU tensors.
"""
from __future__ import annotations

from .compress import compress
from .decompress import decompress, decompress_into
from .decompress_sum import decompress_sum, decompress_sum_into
from .pack import pack, unpack
from .quantize import quantize
from .scale_truncate import scale_truncate

IMPLS = {
    "compress": compress,
    "decompress": decompress,
    "decompress_sum": decompress_sum,
    "decompress_into": decompress_into,
    "decompress_sum_into": decompress_sum_into,
    "scale_truncate": scale_truncate,
    "quantize": quantize,
    "pack": pack,
    "unpack": unpack,
}

__all__ = ["compress", "decompress", "decompress_sum", "decompress_into", "decompress_sum_into", "scale_truncate", "quantize", "pack", "unpack", "IMPLS"]
