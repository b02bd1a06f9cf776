"""NF4 dequantization in PyTorch, bit-for-bit like ``bitsandbytes.functional.dequantize_4bit``.

Works on any device (it is the reference the Triton kernel is checked against). The arithmetic is
exactly bitsandbytes': ``w = to_dtype(fp32(NF4[code] * absmax[block]))``, and with double
quantization the block scales are first rebuilt as ``fp32(fp32(CODE8[q8] * nested_absmax) + offset)``
with the multiply and the add as separate operations (a fused multiply-add would differ by an ulp).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from pyft.quant.tables import NF4_CODE

_PAIR_TABLES: dict[torch.device, torch.Tensor] = {}


class NestedAbsmax(NamedTuple):
    """Double-quantized block scales, kept compressed (bitsandbytes' ``compress_statistics``).

    The float32 scale of block ``i`` is ``fp32(fp32(nested_code[q8[i]] * nested_absmax[i // 256]) + offset)``.

    Attributes:
        q8: uint8 ``[nb]``, 8-bit codes of ``absmax - offset``.
        nested_absmax: float32 ``[ceil(nb / nested_blocksize)]``.
        nested_code: float32 ``[256]``, the stored dynamic map (CODE8).
        offset: float32 scalar tensor (or a float), the mean that was subtracted.
        nested_blocksize: scales per nested block (256 in bitsandbytes).
    """

    q8: torch.Tensor
    nested_absmax: torch.Tensor
    nested_code: torch.Tensor
    offset: torch.Tensor | float
    nested_blocksize: int = 256

    def absmax(self) -> torch.Tensor:
        """The rebuilt float32 ``[nb]`` block scales."""
        return reconstruct_absmax(self.q8, self.nested_absmax, self.nested_code, self.offset, self.nested_blocksize)


def nf4_code(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16 NF4 values (float32 ``[16]``) on ``device``."""
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def nf4_pair_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 ``[256, 2]``: for each packed byte, the NF4 values of its high and low nibble."""
    device = torch.device(device)
    table = _PAIR_TABLES.get(device)
    if table is None:
        code = nf4_code(device)
        byte = torch.arange(256, device=device)
        table = torch.stack((code[byte >> 4], code[byte & 0xF]), dim=1).contiguous()
        _PAIR_TABLES[device] = table
    return table


def reconstruct_absmax(q8: torch.Tensor, nested_absmax: torch.Tensor, nested_code: torch.Tensor,
                       offset: torch.Tensor | float, nested_blocksize: int = 256) -> torch.Tensor:
    """Undo double quantization of the block scales.

    Args:
        q8: uint8 ``[nb]``, 8-bit codes of ``absmax - offset``.
        nested_absmax: float32 ``[ceil(nb / nested_blocksize)]``.
        nested_code: float32 ``[256]``, the stored dynamic map (CODE8).
        offset: the float32 mean that was subtracted.
        nested_blocksize: blocks of ``q8`` per nested scale (256 in bitsandbytes).

    Returns:
        float32 ``[nb]``: ``fp32(fp32(nested_code[q8] * nested_absmax[i // nested_blocksize]) + offset)``.
    """
    nb = q8.numel()
    values = nested_code.float()[q8.reshape(-1).int()]
    nested = nested_absmax.float().reshape(-1)
    padded = nested.numel() * nested_blocksize
    if padded != nb:
        values = torch.nn.functional.pad(values, (0, padded - nb))
    scaled = (values.view(-1, nested_blocksize) * nested.view(-1, 1)).reshape(-1)[:nb]
    if not isinstance(offset, torch.Tensor):
        offset = torch.tensor(offset, dtype=torch.float32)
    return scaled + offset.to(device=scaled.device, dtype=torch.float32)


def dequantize_nf4_torch(packed: torch.Tensor, absmax: torch.Tensor, shape: Sequence[int], blocksize: int,
                         dtype: torch.dtype) -> torch.Tensor:
    """Dequantize NF4 codes with float32 block scales.

    Args:
        packed: the packed codes, any shape, ``(n + 1) // 2`` bytes (a non-uint8 storage dtype is
            reinterpreted as bytes); the first element of each pair is in the high nibble.
        absmax: float32 ``[ceil(n / blocksize)]`` block scales (already rebuilt when double quantized).
        shape: the original tensor shape, ``n = prod(shape)``.
        blocksize: elements per block.
        dtype: the output dtype.

    Returns:
        ``dtype`` tensor of ``shape`` on ``packed``'s device.
    """
    data = packed.reshape(-1)
    if data.dtype != torch.uint8:
        data = data.view(torch.uint8)
    n = 1
    for d in shape:
        n *= int(d)
    values = nf4_pair_table(data.device)[data.int()].reshape(-1)
    nb = absmax.numel()
    padded = nb * blocksize
    if values.numel() < padded:
        values = torch.nn.functional.pad(values, (0, padded - values.numel()))
    values = values[:padded].view(nb, blocksize) * absmax.float().view(-1, 1)
    return values.reshape(-1)[:n].to(dtype).reshape(tuple(shape))


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor | NestedAbsmax, shape: Sequence[int], blocksize: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Dequantize NF4 codes: the Triton kernel on CUDA when Triton is installed, PyTorch otherwise.

    Both give the same bits (``to_dtype(fp32(NF4[code] * absmax[block]))``, scales rebuilt with a
    separate multiply and add).

    Args:
        packed: the packed codes, ``(n + 1) // 2`` bytes (first element in the high nibble).
        absmax: float32 ``[nb]`` block scales, or :class:`NestedAbsmax` when double quantized.
        shape: the original tensor shape.
        blocksize: elements per block.
        dtype: the output dtype.

    Returns:
        ``dtype`` tensor of ``shape`` on ``packed``'s device.
    """
    if packed.is_cuda and _triton_available():
        from pyft.quant.triton_dequant import dequantize_nf4_triton

        return dequantize_nf4_triton(packed, absmax, shape, blocksize, dtype)
    if isinstance(absmax, NestedAbsmax):
        absmax = absmax.absmax()
    return dequantize_nf4_torch(packed, absmax, shape, blocksize, dtype)


_TRITON: bool | None = None


def _triton_available() -> bool:
    global _TRITON
    if _TRITON is None:
        import importlib.util

        _TRITON = importlib.util.find_spec("triton") is not None
    return _TRITON
