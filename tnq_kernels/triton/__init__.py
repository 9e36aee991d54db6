"""The Triton backend of tnq_kernels: the three jobs of SPEC §2 as Triton kernels, fused for the hot paths.

    scale_truncate.py  job 1: per-block scale + truncation      (tnq::triton_scale_truncate, triton_op)
    quantize.py        job 2: lookup + stochastic rounding      (tnq::triton_quantize, triton_op)
    pack.py            job 3: bit-plane pack / unpack           (tnq::triton_pack, tnq::triton_unpack, triton_op)
    compress.py        fused 1+2+3, one read of each block      (tnq::triton_compress, triton_op)
    decompress.py      unpack + decode                          (tnq::triton_decompress, custom_op)
    decompress_sum.py  fused decode + weighted sum of W payloads (tnq::triton_decompress_sum, custom_op)

The module-level functions have the reference's signatures (tnq_kernels.ops.kernel routes backend="triton", and
"auto" on CUDA tensors without the C++ CUDA build, to them); each calls its launcher as the op tnq::triton_<op>,
registered by tnq_kernels.ops.register_triton (ops.py is the one registry). Codes equal tnq_kernels.reference at equal
seed; scales may differ in the last bit only on crafted inputs (summation order). Under TRITON_INTERPRET=1 (set before this
package is imported) the same kernels run on CPU tensors.
"""
from __future__ import annotations

from .. import ops
from . import _common
from .compress import compress
from .decompress import decompress, decompress_into
from .decompress_sum import decompress_sum, decompress_sum_into
from .pack import pack, unpack
from .quantize import quantize
from .scale_truncate import scale_truncate

ops.register_triton(interpret=_common.INTERPRET)

__all__ = ["compress", "decompress", "decompress_sum", "decompress_into", "decompress_sum_into", "scale_truncate",
           "quantize", "pack", "unpack"]
