"""``quantize_nf4`` / ``dequantize_nf4``: one tensor to and from bitsandbytes' NF4 serialization.

The quantization runs in the Rust core (vectorised, parallel, GIL released) and writes the same
bytes as ``bitsandbytes.functional.quantize_4bit(t, blocksize, compress_statistics=double_quant,
quant_type="nf4")`` on bitsandbytes' CPU backend. The returned ``state`` holds exactly the tensors
of bitsandbytes' ``QuantState.as_dict(packed=True)`` — what a checkpoint stores next to the weight
under ``<weight name>.<key>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from pyft import _core
from pyft.io.dtypes import float_of_torch, parse_float, torch_dtype
from pyft.quant.dequant import dequantize_nf4_torch, nf4_code, reconstruct_absmax
from pyft.quant.tables import CODE8

#: The JSON blob's key in a state dict (``QuantState.as_dict(packed=True)``).
BLOB_KEY = "quant_state.bitsandbytes__nf4"
#: Quant-state keys with double quantization, in bitsandbytes' order.
STATE_KEYS_DQ = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", BLOB_KEY)
#: Quant-state keys without double quantization.
STATE_KEYS = ("absmax", "quant_map", BLOB_KEY)



def _dtype_name(dtype: torch.dtype) -> str:
    row = float_of_torch(dtype)
    if row is None:
        raise ValueError(f"NF4 quantizes float32, float16 or bfloat16 tensors, not {dtype}")
    return row.torch


def quantize_nf4(t: torch.Tensor, blocksize: int = 64, double_quant: bool = True, *,
                 compat: str = "cpu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Quantize a tensor to NF4.

    Args:
        t: float32, float16 or bfloat16 tensor of any shape (a Linear weight is ``[out, in]``).
            Must be finite. CUDA tensors are copied to the CPU for quantization.
        blocksize: elements per block: 32, 64 (default), 128, 256, 512, 1024, 2048 or 4096.
        double_quant: also quantize the block scales (8-bit, blocks of 256; QLoRA's double
            quantization, ~0.127 instead of 0.5 bits per weight).
        compat: ``"cpu"`` reproduces bitsandbytes' CPU backend byte for byte (all-zero blocks pack
            to ``0x77``, the nested codes use its lookup table); ``"cuda"`` its CUDA kernels
            (all-zero blocks ``0x00``, nested codes by nearest value). Both dequantize alike.

    Returns:
        ``(packed, state)``: ``packed`` uint8 ``[(n + 1) // 2, 1]``, the first element of each
        pair in the high nibble; ``state`` the tensors of ``QuantState.as_dict(packed=True)``:
        ``absmax`` (float32 ``[nb]``, or uint8 codes with double quantization), ``quant_map``
        (float32 ``[16]``), with double quantization ``nested_absmax`` (float32
        ``[ceil(nb / 256)]``) and ``nested_quant_map`` (float32 ``[256]``), and the uint8 JSON
        blob under ``quant_state.bitsandbytes__nf4``. All on ``t``'s device.

    Raises:
        ValueError: a NaN or infinite element (its flat index is named), or an unsupported dtype.
        pyft.errors.ConfigError: an unsupported blocksize or compat mode.
    """
    name = _dtype_name(t.dtype)
    device = t.device
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    n = flat.numel()
    nb = -(-n // blocksize) if blocksize > 0 else 0
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8)
    absmax = torch.empty(max(nb, 0), dtype=torch.float32)
    _core.nf4_quantize(flat.view(torch.uint8).numpy(), name, blocksize, compat, packed.numpy(), absmax.numpy())
    state: dict[str, torch.Tensor] = {}
    if double_quant:
        # bitsandbytes subtracts torch's float32 mean; using the same op gives the same offset.
        offset = float(absmax.mean())
        q8, nested, offset = _core.nf4_double_quantize(absmax.numpy(), offset, compat)
        state["absmax"] = torch.frombuffer(bytearray(q8), dtype=torch.uint8)
        state["quant_map"] = nf4_code()
        state["nested_absmax"] = torch.tensor(nested, dtype=torch.float32)
        state["nested_quant_map"] = torch.tensor(CODE8, dtype=torch.float32)
        blob = _core.nf4_state_json(blocksize, name, list(t.shape), offset)
    else:
        state["absmax"] = absmax
        state["quant_map"] = nf4_code()
        blob = _core.nf4_state_json(blocksize, name, list(t.shape), None)
    state[BLOB_KEY] = torch.frombuffer(bytearray(blob.encode()), dtype=torch.uint8)
    if device.type != "cpu":
        packed = packed.to(device)
        state = {k: v.to(device) for k, v in state.items()}
    return packed, state


@dataclass(frozen=True)
class Nf4StateMeta:
    """What a quant state's JSON blob records."""

    blocksize: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    nested_offset: float | None

    @property
    def numel(self) -> int:
        """Elements of the original tensor."""
        n = 1
        for d in self.shape:
            n *= d
        return n


def parse_state_blob(blob: torch.Tensor, what: str = "quant state") -> Nf4StateMeta:
    """Read a ``quant_state.bitsandbytes__nf4`` blob (uint8 tensor of UTF-8 JSON).

    Raises:
        ValueError: naming ``what`` when the blob is not an NF4 quant state.
    """
    try:
        meta = json.loads(bytes(blob.detach().to("cpu").to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: not a JSON quant state ({e})") from None
    if meta.get("quant_type") != "nf4":
        raise ValueError(f"{what}: quant_type {meta.get('quant_type')!r} is not supported (pyft reads nf4)")
    row = parse_float(meta.get("dtype"))
    dtype = None if row is None else torch_dtype(row)
    if dtype is None:
        raise ValueError(f"{what}: dtype {meta.get('dtype')!r} is not float32, float16 or bfloat16")
    offset = meta.get("nested_offset")
    if offset is not None and meta.get("nested_blocksize", 256) != 256:
        raise ValueError(f"{what}: nested_blocksize {meta.get('nested_blocksize')} is not supported (expected 256)")
    try:
        return Nf4StateMeta(int(meta["blocksize"]), dtype, tuple(int(d) for d in meta["shape"]),
                            None if offset is None else float(offset))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{what}: missing or malformed blocksize/shape ({e})") from None


def state_block_scales(state: dict[str, torch.Tensor], meta: Nf4StateMeta) -> torch.Tensor:
    """The float32 block scales of a quant state (rebuilt when double-quantized)."""
    if meta.nested_offset is None:
        return state["absmax"].float()
    offset = torch.tensor(meta.nested_offset, dtype=torch.float32)
    return reconstruct_absmax(state["absmax"], state["nested_absmax"], state["nested_quant_map"], offset)


def dequantize_nf4(packed: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dequantize what :func:`quantize_nf4` (or bitsandbytes' ``as_dict(packed=True)``) stored.

    Returns:
        The tensor in its original shape and dtype, bit for bit what bitsandbytes'
        ``dequantize_4bit`` returns (PyTorch ops on ``packed``'s device).
    """
    meta = parse_state_blob(state[BLOB_KEY])
    absmax = state_block_scales(state, meta)
    return dequantize_nf4_torch(packed, absmax.to(packed.device), meta.shape, meta.blocksize, meta.dtype)
