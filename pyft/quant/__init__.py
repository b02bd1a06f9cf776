"""4-bit NormalFloat (NF4) quantization, byte-compatible with bitsandbytes.

- :mod:`pyft.quant.nf4`: ``quantize_nf4`` / ``dequantize_nf4`` (the Rust quantizer; bitsandbytes'
  ``QuantState.as_dict(packed=True)`` serialization).
- :mod:`pyft.quant.tables`: the NF4 and CODE8 code books.
- :mod:`pyft.quant.dequant`: PyTorch dequantization (the reference for the Triton kernel).
"""

from pyft.quant.dequant import dequantize_nf4_torch, reconstruct_absmax
from pyft.quant.nf4 import dequantize_nf4, parse_state_blob, quantize_nf4

__all__ = ["dequantize_nf4", "dequantize_nf4_torch", "parse_state_blob", "quantize_nf4", "reconstruct_absmax"]
