"""Load a causal LM with NF4 linear layers, quantizing straight from the safetensors files.

The model is built on the meta device (no memory), then filled one tensor at a time: each
decoder ``nn.Linear`` weight is read, quantized in Rust and replaced by an :class:`NF4Linear`
on the target device before the next is read, so peak memory is the NF4 model plus one tensor.
Embeddings, norms and the output layer keep the load dtype (as bitsandbytes + transformers do).
Checkpoints already saved in bitsandbytes' 4-bit format (``quantization_config`` with
``load_in_4bit``) load their packed weights and quant states as they are.

Inputs are checked before anything is built or written: ``config.json`` by
:func:`read_model_config`, the safetensors headers by the Rust core (through
:class:`~pyft.io.shards.SafetensorsShards`), and every tensor's shape against the model the
config describes (:func:`check_tensor_shapes`); each refusal names the file and the field or tensor.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft.errors import ConfigError
from pyft.io.files import check_model_config, data_error, read_json_object
from pyft.io.shards import SafetensorsShards
from pyft.quant.linear import NF4Linear
from pyft.quant.nf4 import BLOB_KEY, quantize_nf4


def _config_errors() -> tuple[type[BaseException], ...]:
    """What transformers raises for a config it cannot use (its strict dataclass checks included)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # huggingface_hub < 0.35
        return (ValueError, TypeError, KeyError, AttributeError)
    return (ValueError, TypeError, KeyError, AttributeError, StrictDataclassError)


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (transformers' validation errors span several)."""
    return " ".join(str(e).split())


def read_model_config(model_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Any]:
    """``model_dir/config.json``, validated, as a dict and as a transformers config.

    The file is read by :func:`pyft.io.files.read_json_object` (a regular file holding a JSON
    object) and its model fields checked (:func:`pyft.io.files.check_model_config`) before
    transformers sees it; what transformers still refuses is reported naming the file.

    Raises:
        DataError: not a regular file, not a JSON object, a field of the wrong type, or refused
            by transformers.
        FileNotFoundError: no ``config.json``.
    """
    from transformers import AutoConfig

    path = Path(model_dir) / "config.json"
    raw = read_json_object(path)
    check_model_config(raw, path)
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except _config_errors() as e:
        raise data_error(path, f"transformers cannot read it: {_one_line(e)}") from e
    return raw, config


def build_skeleton(config: Any, dtype: torch.dtype, attn_implementation: str | None,
                   config_path: str | os.PathLike[str]) -> nn.Module:
    """The model ``config`` describes, on the meta device (no memory).

    Raises:
        DataError: transformers cannot build it (sizes that do not fit together), naming
            ``config_path``.
    """
    try:
        return _skeleton(config, dtype, attn_implementation)
    except (*_config_errors(), RuntimeError) as e:
        raise data_error(config_path, f"transformers cannot build the model it describes: {_one_line(e)}") from e


def check_tensor_shapes(model: nn.Module, shards: SafetensorsShards, names: Sequence[str] | None = None) -> None:
    """Refuse a stored tensor whose shape differs from the one ``model`` (the skeleton the config
    describes) gives it. Tensors the model does not have are not checked.

    Args:
        names: the tensors to check (default: every stored tensor).

    Raises:
        DataError: naming the file, the tensor and both shapes.
    """
    expected = {n: tuple(t.shape) for n, t in (*model.named_parameters(), *model.named_buffers())}
    for name in shards.keys() if names is None else names:
        entry = shards.entries.get(name)
        if entry is not None and name in expected and entry.shape != expected[name]:
            raise data_error(entry.path, f"tensor `{name}` has shape {list(entry.shape)}, but config.json "
                                         f"makes it {list(expected[name])}", name)


def bnb_4bit_settings(config: Any) -> dict[str, Any] | None:
    """The ``quantization_config`` of a bitsandbytes 4-bit checkpoint as a dict, else None.

    Raises:
        ConfigError: a quantization the loader cannot read (8-bit, fp4, another method).
    """
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    method = qc.get("quant_method")
    if method != "bitsandbytes" or not qc.get("load_in_4bit", qc.get("_load_in_4bit")):
        raise ConfigError(f"quantization_config: quant_method {method!r} with load_in_4bit="
                          f"{qc.get('load_in_4bit')!r} is not supported (pyft reads bitsandbytes NF4 checkpoints)")
    if qc.get("bnb_4bit_quant_type", "fp4") != "nf4":
        raise ConfigError(f"quantization_config: bnb_4bit_quant_type {qc.get('bnb_4bit_quant_type', 'fp4')!r} is "
                          "not supported (pyft reads nf4)")
    return qc


def quantized_linear_names(model: nn.Module, skip_modules: Sequence[str] = ()) -> list[str]:
    """The ``nn.Linear`` modules bitsandbytes + transformers quantize: all but the output layer and
    those named (or whose name ends with an entry) in ``skip_modules``."""
    output = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        if any(name == s or name.endswith("." + s) or name.split(".")[-1] == s for s in skip_modules):
            continue
        names.append(name)
    return names


def _skeleton(config: Any, dtype: torch.dtype, attn_implementation: str | None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, **kwargs)


def _materialize_buffers(model: nn.Module, device: torch.device) -> None:
    """Rebuild modules whose non-persistent buffers (rotary frequencies) were created on meta."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        if "config" not in inspect.signature(type(module).__init__).parameters:
            raise ConfigError(f"{name}: cannot rebuild buffers of {type(module).__name__} (no `config` argument)")
        with torch.device(device):
            fresh = type(module)(config=model.config)
        for bname, buf in fresh.named_buffers(recurse=False):
            module._buffers[bname] = buf
        for attr, value in vars(fresh).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_"):
                setattr(module, attr, value)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=value.is_floating_point())
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise KeyError(name)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, new)


def load_nf4_model(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.bfloat16,
                   compute_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                   blocksize: int = 64, double_quant: bool = True, skip_modules: Sequence[str] = (),
                   compat: str = "cpu", attn_implementation: str | None = None) -> nn.Module:
    """A transformers causal LM whose decoder linear layers are :class:`NF4Linear`.

    Args:
        path: a transformers model directory with safetensors weights (16/32-bit, or already in
            bitsandbytes' NF4 format, then ``blocksize``/``double_quant`` come from the file).
        dtype: dtype of everything not quantized, and of the weights before quantization (the
            quant state's ``dtype``; transformers + bitsandbytes do the same).
        compute_dtype: matmul dtype of the NF4 layers (default ``dtype``; bitsandbytes'
            ``bnb_4bit_compute_dtype``).
        device: where the model goes (each layer is moved as soon as it is quantized).
        blocksize, double_quant, compat: see :func:`pyft.quant.quantize_nf4`.
        skip_modules: module names (or name suffixes) kept in ``dtype``; the output layer always is.
        attn_implementation: as for transformers.

    Raises:
        ConfigError: an unsupported quantization in the checkpoint's config.
        DataError: a malformed ``config.json`` or safetensors file, or a tensor whose shape does
            not fit the config (named with the file).
        ValueError: a tensor missing from the checkpoint (named), or a non-finite weight.
    """
    device = torch.device(device or "cpu")
    where = Path(path)
    _, config = read_model_config(where)
    prequantized = bnb_4bit_settings(config)
    if prequantized is not None:
        skip_modules = list(skip_modules) + list(prequantized.get("llm_int8_skip_modules") or [])
        del config.quantization_config
    model = build_skeleton(config, dtype, attn_implementation, where / "config.json")
    shards = SafetensorsShards(path)
    # A pre-quantized checkpoint stores packed weights (shapes of the packing, not of the layer).
    check_tensor_shapes(model, shards, None if prequantized is None else
                        [n for n in shards.keys() if f"{n}.{BLOB_KEY}" not in shards])
    for name in quantized_linear_names(model, skip_modules):
        weight_key = f"{name}.weight"
        if weight_key not in shards:
            raise ValueError(f"{where}: tensor `{weight_key}` is missing")
        linear = model.get_submodule(name)
        bias = shards.read(f"{name}.bias").to(dtype) if linear.bias is not None else None
        if f"{weight_key}.{BLOB_KEY}" in shards:
            state = {k[len(weight_key) + 1:]: shards.read(k) for k in shards.keys() if k.startswith(weight_key + ".")}
            layer = NF4Linear.from_quant_state(shards.read(weight_key), state, bias, compute_dtype or dtype)
        else:
            try:
                packed, state = quantize_nf4(shards.read(weight_key).to(dtype), blocksize, double_quant, compat=compat)
            except ValueError as e:
                raise ValueError(f"{where}: tensor `{weight_key}`: {e}") from None
            layer = NF4Linear.from_quant_state(packed, state, bias, compute_dtype or dtype)
        _replace(model, name, layer.to(device))
    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        current = module._parameters.get(leaf, module._buffers.get(leaf))
        if current is None or not current.is_meta:
            continue
        if name not in shards:
            continue
        want = dtype if current.is_floating_point() else current.dtype
        stored = shards.entries[name].dtype
        # Kept as stored on the CPU: a file-backed tensor (only the rows used become resident, as
        # with transformers' loading); otherwise read and converted.
        tensor = shards.map(name) if (stored == want and device.type == "cpu") else shards.read(name)
        _set_tensor(model, name, tensor.to(device=device, dtype=want))
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    _materialize_buffers(model, device)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{where}: tensors missing from the checkpoint: {', '.join(missing[:5])}")
    return model.eval()
