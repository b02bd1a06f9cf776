"""``NF4Linear``: a frozen linear layer whose weight is stored in NF4 (bitsandbytes' 4-bit format).

The layer keeps only the compressed weight as buffers (nothing is cached in float): the packed
codes, and the block scales either as float32 ``absmax`` or double-quantized (``absmax`` = uint8
codes, ``nested_absmax``, ``nested_code``, ``offset``; rebuilt on the fly, which is cheap: one
multiply-add per 64 weights). The forward pass dequantizes the weight into the compute dtype,
multiplies, and drops it; the backward pass dequantizes it again (as bitsandbytes' ``MatMul4Bit``),
so the autograd graph holds the 4-bit weight, never a dense copy. Gradients flow to the input
(and to the bias if someone unfreezes it), never to the weight.

Numerics: ``y = F.linear(x, W, b)`` with ``W = dequantize_nf4(..., compute_dtype)``, one rounding
from the float32 product ``NF4[code] * absmax`` to the compute dtype, the same ops as the default
(CPU) ``gemm_4bit`` of bitsandbytes 0.50.2, so outputs are bit-identical to ``bnb.nn.Linear4bit``
there. Unlike ``Linear4bit``, which casts its output back to the input dtype, the output stays in
the compute dtype.

Float storage (FSDP-QLoRA): FSDP2 shards parameters, not buffers, so :meth:`NF4Linear.set_storage`
(or :func:`set_nf4_storage` for a whole model) can turn the packed codes into a frozen
``nn.Parameter`` of a float dtype whose bytes are the codes (bitsandbytes' ``quant_storage``);
every use views them back as uint8, so the numerics do not change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pyft.io.dtypes import float_of_torch, parse_float, torch_dtype
from pyft.quant.dequant import NestedAbsmax, dequantize_nf4, nf4_code

#: Tensors holding the quantized weight (buffers, ``weight`` a parameter under float storage): moved
#: between devices, never cast to another dtype.
_QUANT_TENSORS = ("weight", "absmax", "nested_absmax", "nested_code", "offset")
_QS_KEY = "quant_state.bitsandbytes__nf4"


class _NF4Matmul(torch.autograd.Function):
    """``F.linear(x, dequant(W), bias)`` that keeps only the quantized ``W`` for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor,
                scales: torch.Tensor | NestedAbsmax, shape: tuple[int, int], blocksize: int) -> torch.Tensor:
        weight = dequantize_nf4(packed, scales, shape, blocksize, x.dtype)
        # Not save_for_backward: these are not inputs of the graph, and only references are kept.
        ctx.quant = (packed, scales, shape, blocksize)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            packed, scales, shape, blocksize = ctx.quant
            grad_x = grad @ dequantize_nf4(packed, scales, shape, blocksize, grad.dtype)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_bias, None, None, None, None


class NF4Linear(nn.Module):
    """A linear layer ``y = x Wᵀ + b`` over an NF4-quantized, frozen ``W [out_features, in_features]``.

    Args:
        packed: the packed codes, ``(n + 1) // 2`` bytes, first element of a pair in the high
            nibble (bitsandbytes' ``[(n + 1) // 2, 1]`` uint8 tensor; another storage dtype is
            reinterpreted as bytes and stored as uint8).
        absmax: float32 ``[nb]`` block scales, or the double-quantized :class:`NestedAbsmax`.
        shape: ``(out_features, in_features)``.
        blocksize: weights per block (bitsandbytes: 32 to 4096, default 64).
        dtype: the dtype the weight had before quantization (``QuantState.dtype``): what
            :meth:`dequantized_weight` returns by default and what a merge writes.
        bias: optional ``[out_features]`` bias, kept frozen (``requires_grad=False``).
        compute_dtype: dtype of the matmul; the input is cast to it and the output stays in it.
            Default: ``dtype``. Under ``torch.autocast`` the autocast dtype wins.

    Buffers (``state_dict`` keys): ``weight`` (uint8 packed codes), ``absmax`` (float32, or uint8
    codes when double-quantized), and with double quantization ``nested_absmax``, ``nested_code``,
    ``offset``. :meth:`bnb_state_dict` gives bitsandbytes' serialized keys instead.
    ``module.to(dtype)`` moves these tensors but never changes their dtype. After
    :meth:`set_storage` with a float dtype, ``weight`` is a frozen parameter of that dtype holding
    the same bytes (:meth:`packed` always gives them as uint8).
    """

    def __init__(self, packed: torch.Tensor, absmax: torch.Tensor | NestedAbsmax, shape: Sequence[int],
                 blocksize: int = 64, dtype: torch.dtype = torch.float32, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"`shape` must be (out_features, in_features), got {list(shape)}")
        self.out_features, self.in_features = int(shape[0]), int(shape[1])
        n = self.out_features * self.in_features
        if blocksize <= 0 or blocksize % 2:
            raise ValueError(f"`blocksize` must be a positive even number, got {blocksize}")
        if float_of_torch(dtype) is None:
            raise ValueError(f"`dtype` must be float32, bfloat16 or float16, got {dtype}")
        data = packed.detach().reshape(-1)
        if data.dtype != torch.uint8:
            data = data.view(torch.uint8)
        if data.numel() != (n + 1) // 2:
            raise ValueError(f"`packed` holds {data.numel()} bytes; shape {list(shape)} needs {(n + 1) // 2}")
        nb = -(-n // blocksize)
        self.packed_bytes = data.numel()
        self.blocksize = int(blocksize)
        self.weight_dtype = dtype
        self.compute_dtype = compute_dtype or dtype
        self.register_buffer("weight", data.reshape(-1, 1))
        if isinstance(absmax, NestedAbsmax):
            q8 = absmax.q8.detach().reshape(-1)
            if q8.dtype != torch.uint8 or q8.numel() != nb:
                raise ValueError(f"double-quantized `absmax` must be uint8 [{nb}], got {q8.dtype} {list(q8.shape)}")
            nested = absmax.nested_absmax.detach().reshape(-1).float()
            if nested.numel() != -(-nb // absmax.nested_blocksize):
                raise ValueError(f"`nested_absmax` has {nested.numel()} values; {nb} blocks in nested blocks of "
                                 f"{absmax.nested_blocksize} need {-(-nb // absmax.nested_blocksize)}")
            offset = absmax.offset
            offset = offset.detach() if isinstance(offset, torch.Tensor) else torch.tensor(float(offset))
            self.nested_blocksize = int(absmax.nested_blocksize)
            self.register_buffer("absmax", q8)
            self.register_buffer("nested_absmax", nested)
            self.register_buffer("nested_code", absmax.nested_code.detach().reshape(-1).float())
            self.register_buffer("offset", offset.reshape(()).to(device=q8.device, dtype=torch.float32))
        else:
            if absmax.numel() != nb:
                raise ValueError(f"`absmax` has {absmax.numel()} values; {n} weights in blocks of {blocksize} "
                                 f"need {nb}")
            self.nested_blocksize = 0
            self.register_buffer("absmax", absmax.detach().reshape(-1).float())
            self.register_buffer("nested_absmax", None)
            self.register_buffer("nested_code", None)
            self.register_buffer("offset", None)
        if bias is not None:
            if bias.shape != (self.out_features,):
                raise ValueError(f"`bias` must have shape [{self.out_features}], got {list(bias.shape)}")
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # -- construction from bitsandbytes' serialized form ------------------------------------------

    @classmethod
    def from_quant_state(cls, packed: torch.Tensor, state: Mapping[str, Any], bias: torch.Tensor | None = None,
                         compute_dtype: torch.dtype | None = None) -> NF4Linear:
        """Build from packed codes and a quant state as bitsandbytes serializes it.

        Args:
            packed: the packed codes.
            state: ``QuantState.as_dict(packed=True)`` (tensors ``absmax``, ``quant_map``, with
                double quantization ``nested_absmax``, ``nested_quant_map``, and the JSON blob
                ``quant_state.bitsandbytes__nf4``), or the unpacked ``as_dict()`` form.
            bias: optional bias.
            compute_dtype: see the class.

        Raises:
            ValueError: not an NF4 state, or a key missing (named).
        """
        state = dict(state)
        blob = state.pop(_QS_KEY, None)
        if blob is None and "quant_type" not in state:
            if any(k.startswith("quant_state.bitsandbytes__") for k in state):
                raise ValueError("quant state is not NF4: pyft reads only bitsandbytes' nf4 quant type")
            raise ValueError(f"quant state has neither `{_QS_KEY}` nor `quant_type`")
        if blob is not None:
            state.update(json.loads(bytes(blob.detach().cpu().to(torch.uint8).numpy()).decode("utf-8")))
        if state.get("quant_type") != "nf4":
            raise ValueError(f"quant state has quant_type {state.get('quant_type')!r}; pyft reads only 'nf4'")
        for key in ("absmax", "blocksize", "dtype", "shape"):
            if key not in state:
                raise ValueError(f"quant state has no `{key}`")
        row = parse_float(str(state["dtype"]))
        dtype = None if row is None else torch_dtype(row)
        if dtype is None:
            raise ValueError(f"quant state `dtype` is {state['dtype']!r}; expected float32, bfloat16 or float16")
        absmax: torch.Tensor | NestedAbsmax = state["absmax"]
        if "nested_absmax" in state:
            for key in ("nested_quant_map", "nested_offset"):
                if key not in state:
                    raise ValueError(f"double-quantized quant state has no `{key}`")
            absmax = NestedAbsmax(state["absmax"], state["nested_absmax"], state["nested_quant_map"],
                                  torch.tensor(float(state["nested_offset"]), dtype=torch.float32),
                                  int(state.get("nested_blocksize", 256)))
        return cls(packed, absmax, list(state["shape"]), int(state["blocksize"]), dtype, bias, compute_dtype)

    @classmethod
    def from_bnb_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "",
                            compute_dtype: torch.dtype | None = None) -> NF4Linear:
        """Build from the tensors bitsandbytes/transformers save for one ``Linear4bit``.

        Args:
            state_dict: holds ``<prefix>weight``, ``<prefix>weight.absmax``,
                ``<prefix>weight.quant_map``, ``<prefix>weight.quant_state.bitsandbytes__nf4``,
                with double quantization ``<prefix>weight.nested_absmax`` and
                ``<prefix>weight.nested_quant_map``, and optionally ``<prefix>bias`` (spec §4.1).
            prefix: the module's name plus a dot (e.g. ``"model.layers.0.mlp.up_proj."``), or "".
            compute_dtype: see the class.
        """
        if f"{prefix}weight" not in state_dict:
            raise ValueError(f"state dict has no `{prefix}weight`")
        head = f"{prefix}weight."
        state = {k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)}
        return cls.from_quant_state(state_dict[f"{prefix}weight"], state, state_dict.get(f"{prefix}bias"),
                                    compute_dtype)

    def bnb_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors bitsandbytes' ``Linear4bit`` saves (``state_dict`` / safetensors keys, spec §4.1).

        Returns:
            In bitsandbytes' order: ``<prefix>weight`` (uint8 ``[(n + 1) // 2, 1]``), ``<prefix>bias``
            if present, ``<prefix>weight.absmax``, ``.quant_map``, (``.nested_absmax``,
            ``.nested_quant_map``), and the JSON blob ``.quant_state.bitsandbytes__nf4`` (the bytes
            ``json.dumps`` writes).
        """
        out = {f"{prefix}weight": self.packed()}
        if self.bias is not None:
            out[f"{prefix}bias"] = self.bias.detach()
        out[f"{prefix}weight.absmax"] = self.absmax
        out[f"{prefix}weight.quant_map"] = nf4_code(self.weight.device)
        meta: dict[str, Any] = {"quant_type": "nf4", "blocksize": self.blocksize,
                                "dtype": str(self.weight_dtype).removeprefix("torch."),
                                "shape": [self.out_features, self.in_features]}
        if self.is_double_quantized:
            out[f"{prefix}weight.nested_absmax"] = self.nested_absmax
            out[f"{prefix}weight.nested_quant_map"] = self.nested_code
            meta.update({"nested_blocksize": self.nested_blocksize, "nested_dtype": "float32",
                         "nested_offset": self.offset.item()})
        blob = json.dumps(meta).encode("utf-8")
        out[f"{prefix}weight.{_QS_KEY}"] = torch.tensor(list(blob), dtype=torch.uint8)
        return out

    # -- use ---------------------------------------------------------------------------------------

    @property
    def is_double_quantized(self) -> bool:
        """Whether the block scales are double-quantized (stored as uint8 codes)."""
        return self.nested_absmax is not None

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the packed codes are stored in: uint8 (a buffer), or a float dtype (a frozen parameter)."""
        return self.weight.dtype

    def set_storage(self, dtype: torch.dtype) -> None:
        """Store the packed codes as ``dtype``, the same bytes either way (no copy when their count
        is a multiple of ``dtype``'s size; else a copy zero-padded at the end).

        ``torch.uint8``: a buffer ``[(n + 1) // 2, 1]`` (the default, bitsandbytes' layout). A float
        dtype: a frozen ``nn.Parameter`` ``[ceil(bytes / itemsize), 1]`` whose bytes are the codes, as
        bitsandbytes' ``quant_storage``: FSDP shards it on dim 0 and its all-gather returns the
        exact bytes, as long as it is gathered in its own dtype (mixed precision's ``param_dtype``,
        or none). Numerics are unchanged: :meth:`packed` views the bytes back as uint8. Not
        ``state_dict``-compatible with the uint8 form; :meth:`bnb_state_dict` is the same for both.

        Raises:
            ValueError: ``dtype`` is neither uint8 nor a floating-point dtype.
        """
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"NF4 storage dtype must be uint8 or a floating-point dtype, got {dtype}")
        if dtype == self.weight.dtype:
            return
        data = self.packed().reshape(-1)
        self._parameters.pop("weight", None)
        self._buffers.pop("weight", None)
        if dtype == torch.uint8:
            self.register_buffer("weight", data.clone().reshape(-1, 1))
            return
        size = torch.empty((), dtype=dtype).element_size()
        if data.numel() % size or data.storage_offset() % size:  # a view needs whole, aligned elements
            data = torch.cat([data, data.new_zeros(-data.numel() % size)])
        self.weight = nn.Parameter(data.view(dtype).reshape(-1, 1), requires_grad=False)

    def packed(self) -> torch.Tensor:
        """The packed codes as uint8 ``[(n + 1) // 2, 1]``: the buffer, or a view of the float storage.

        Raises:
            RuntimeError: the storage is an FSDP shard (outside the forward of the FSDP module that
                gathers it, and not gathered with ``full_tensor()``).
        """
        weight = self.weight
        if weight.dtype == torch.uint8:
            return weight
        if hasattr(weight, "to_local"):
            raise RuntimeError("NF4Linear: its codes are an FSDP shard here (`weight` is a DTensor); use the layer "
                               "inside the FSDP module's forward, or gather `weight` first")
        return weight.detach().reshape(-1).view(torch.uint8)[: self.packed_bytes].reshape(-1, 1)

    def scales(self) -> torch.Tensor | NestedAbsmax:
        """The block scales as :func:`~pyft.quant.dequant.dequantize_nf4` takes them (views of the buffers)."""
        if self.nested_absmax is None:
            return self.absmax
        return NestedAbsmax(self.absmax, self.nested_absmax, self.nested_code, self.offset, self.nested_blocksize)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight ``[out_features, in_features]``, rounded once from float32 to ``dtype``
        (default: the original weight dtype). A new tensor, outside any autograd graph."""
        return dequantize_nf4(self.packed(), self.scales(), (self.out_features, self.in_features), self.blocksize,
                              dtype or self.weight_dtype)

    def linear(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        """``x Wᵀ (+ b)`` in ``x``'s dtype (no cast to the compute dtype, no autocast), with the
        weight dequantized straight into that dtype and not kept for backward."""
        bias = None if self.bias is None or not with_bias else self.bias.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return _NF4Matmul.apply(x, bias, self.packed(), self.scales(), (self.out_features, self.in_features),
                                    self.blocksize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        return self.linear(x.to(dtype))

    def _apply(self, fn, recurse: bool = True):
        # nn.Module.to(dtype)/.half() would cast the float32 scales and the float storage of the
        # codes (a value cast, destroying the bytes); keep each quantized tensor's dtype and take only
        # the new device. ``detach()`` keeps the old data even where ``_apply`` swaps a parameter's.
        before = {name: t.detach() for name in _QUANT_TENSORS if (t := getattr(self, name)) is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype == old.dtype:
                continue
            if name in self._parameters:
                new.data = old.to(device=new.device)
            else:
                self._buffers[name] = old.to(device=new.device)
        return self

    def extra_repr(self) -> str:
        scales = "double-quantized" if self.is_double_quantized else "float32"
        storage = "" if self.storage_dtype == torch.uint8 else f", storage={self.storage_dtype}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={self.blocksize}, scales={scales}, dtype={self.weight_dtype}, "
                f"compute_dtype={self.compute_dtype}{storage}")


def set_nf4_storage(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the packed codes of every :class:`NF4Linear` in ``model`` as ``dtype``
    (:meth:`NF4Linear.set_storage`), in place; returns how many layers there are."""
    layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
    for layer in layers:
        layer.set_storage(dtype)
    return len(layers)
