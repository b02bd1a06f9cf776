"""4-bit NormalFloat (NF4) quantization, byte-compatible with bitsandbytes.

- :mod:`pyft.quant.tables`: the NF4 and CODE8 code books.
- :mod:`pyft.quant.dequant`: PyTorch dequantization (the reference) and :func:`dequantize_nf4`,
  which uses the Triton kernel of :mod:`pyft.quant.triton_dequant` on CUDA.
- :mod:`pyft.quant.linear`: :class:`NF4Linear`, a frozen linear layer over NF4 weights.
"""

from pyft.quant.dequant import NestedAbsmax, dequantize_nf4, dequantize_nf4_torch, reconstruct_absmax
from pyft.quant.linear import NF4Linear

__all__ = ["NF4Linear", "NestedAbsmax", "dequantize_nf4", "dequantize_nf4_torch", "reconstruct_absmax"]
