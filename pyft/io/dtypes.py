"""``pyft.io.dtypes``: the one table of tensor element types pyft reads and writes.

Each row ties together the names one type has in each place it appears: the safetensors header
(``BF16``), torch (``torch.bfloat16``, and ``"bfloat16"`` in bitsandbytes quant states and
``config.json:dtype``), numpy (none for bfloat16), pyft's short option value (``bf16``) and the
bytes per element. Merge, export and inspect read this module without torch: torch is imported
only by :func:`torch_dtype` and :func:`float_of_torch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "FLOATS", "DType", "by_safetensors", "float_of_torch", "parse_float", "torch_dtype"]


@dataclass(frozen=True)
class DType:
    """One element type under each of its names."""

    #: The safetensors header name (``F32``, ``BF16``, ``U8``, ...).
    safetensors: str
    #: The torch attribute (``torch.<torch>``); also the name quant states and ``config.json`` use.
    torch: str
    #: The numpy type name, or ``None`` where numpy has none (bfloat16).
    numpy: str | None
    #: Bytes per element.
    itemsize: int
    #: pyft's option value (``--dtype bf16``, ``train.precision``), for the float types only.
    short: str | None = None


#: The types pyft reads from safetensors files (the float types first).
DTYPES: tuple[DType, ...] = (
    DType("F32", "float32", "float32", 4, "fp32"),
    DType("F16", "float16", "float16", 2, "fp16"),
    DType("BF16", "bfloat16", None, 2, "bf16"),
    DType("F64", "float64", "float64", 8),
    DType("U8", "uint8", "uint8", 1),
    DType("I8", "int8", "int8", 1),
    DType("I16", "int16", "int16", 2),
    DType("I32", "int32", "int32", 4),
    DType("I64", "int64", "int64", 8),
    DType("BOOL", "bool", "bool", 1),
)

#: The float types pyft computes in (merge/export outputs, training precision, NF4 compute dtypes).
FLOATS: tuple[DType, ...] = tuple(d for d in DTYPES if d.short is not None)

_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES}
#: Float types by every name a user or a file may give: ``bf16``, ``bfloat16``, ``torch.bfloat16``.
_FLOAT_NAMES = {n: d for d in FLOATS for n in (d.short, d.torch, f"torch.{d.torch}")}


def by_safetensors(name: str) -> DType | None:
    """The row of a safetensors dtype name (``BF16``), or ``None`` for one pyft does not read."""
    return _BY_SAFETENSORS.get(name)


def parse_float(name: object) -> DType | None:
    """The float type called ``name`` (``bf16``, ``bfloat16`` or ``torch.bfloat16``), or ``None`` for
    any other value (another string, a number, a list read from a JSON file)."""
    return _FLOAT_NAMES.get(name) if isinstance(name, str) else None


def torch_dtype(d: DType) -> torch.dtype:
    """``torch.<d.torch>`` (imports torch)."""
    import torch

    dtype: torch.dtype = getattr(torch, d.torch)
    return dtype


def float_of_torch(dtype: Any) -> DType | None:
    """The float row of a ``torch.dtype`` (``torch.bfloat16`` -> the ``bfloat16`` row), or ``None``
    for any other value (an integer dtype, a string)."""
    import torch

    if not isinstance(dtype, torch.dtype):
        return None
    return _FLOAT_NAMES.get(str(dtype))
