"""4-bit NormalFloat (NF4) quantization, byte-compatible with bitsandbytes.

- :mod:`pyft.quant.tables`: the NF4 and CODE8 code books.
- :mod:`pyft.quant.dequant`: PyTorch dequantization (the reference for the Triton kernel).
"""

from pyft.quant.dequant import dequantize_nf4_torch, reconstruct_absmax

__all__ = ["dequantize_nf4_torch", "reconstruct_absmax"]
