"""4-bit NormalFloat (NF4) quantization, byte-compatible with bitsandbytes, and QLoRA's layers.

- :mod:`pyft.quant.nf4`: :func:`quantize_nf4` / :func:`dequantize_nf4` for one tensor and its
  quant state (the Rust quantizer; bitsandbytes' ``QuantState.as_dict(packed=True)`` format).
- :mod:`pyft.quant.tables`: the NF4 and CODE8 code books.
- :mod:`pyft.quant.dequant`: PyTorch dequantization from raw codes and scales (the reference), and
  the dispatcher that uses the Triton kernel of :mod:`pyft.quant.triton_dequant` on CUDA.
- :mod:`pyft.quant.linear`: :class:`NF4Linear`, a frozen linear layer over NF4 weights, and
  :func:`set_nf4_storage` (its codes as a float parameter FSDP shards, as under FSDP-QLoRA).
- :mod:`pyft.quant.loader`: a transformers model with NF4 layers, quantized while loading.
"""

from pyft.quant.dequant import NestedAbsmax, dequantize_nf4_torch, reconstruct_absmax
from pyft.quant.linear import NF4Linear, set_nf4_storage
from pyft.quant.nf4 import dequantize_nf4, parse_state_blob, quantize_nf4

__all__ = ["NF4Linear", "NestedAbsmax", "dequantize_nf4", "dequantize_nf4_torch", "parse_state_blob",
           "quantize_nf4", "reconstruct_absmax", "set_nf4_storage"]
