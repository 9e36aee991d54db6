"""tnq_kernels: truncated non-uniform quantization (TNQ) of gradients to 2-5 bits, as torch custom ops.

    payload = tnq_kernels.compress(grad, bits=3)          # uint8, 3 bits/element + one fp32 scale per 2048
                                                          # (codebook "rtnq"; "tnq" is the paper's quantizer)
    grad_hat = tnq_kernels.decompress(payload, grad.shape, grad.dtype)
"""
from .api import (DEFAULT_BITS, DEFAULT_BLOCK_SIZE, DEFAULT_CODEBOOK, compress, decompress, decompress_sum, new_seed,
                  pack, payload_bytes, quantize, read_header, scale_truncate, unpack)
from .codebooks import CODEBOOK_IDS, levels, tnq_alpha, tnq_mse_bound
from .ops import BackendUnavailable
from .rng import derive_seed

__version__ = "0.1.0"
__all__ = [
    "compress", "decompress", "decompress_sum", "scale_truncate", "quantize", "pack", "unpack",
    "payload_bytes", "read_header", "new_seed", "derive_seed", "levels", "tnq_alpha", "tnq_mse_bound",
    "CODEBOOK_IDS", "DEFAULT_BITS", "DEFAULT_BLOCK_SIZE", "DEFAULT_CODEBOOK", "BackendUnavailable",
]
