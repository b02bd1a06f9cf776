"""``pyft quantize``: write a model directory as a bitsandbytes 4-bit (NF4) checkpoint.

The output is what ``transformers`` + bitsandbytes ``save_pretrained`` writes for a model loaded
with ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", ...)``: every decoder
``nn.Linear`` weight as packed codes plus its quant-state tensors (spec ``nf4.md`` §4.1), all
other tensors in the load dtype, and a ``quantization_config`` block in ``config.json``; it loads
with ``AutoModelForCausalLM.from_pretrained`` when bitsandbytes is installed, and with
:func:`pyft.load_model`. Tensors are read one at a time; each input shard becomes one output
shard, held in memory in its quantized form only. The directory is staged and renamed into place.

The input is validated before anything is written (see :mod:`pyft.quant.loader`): ``config.json``
(a JSON object with well-typed model fields), every safetensors header (by the Rust core, as for
merge and export) and every tensor's shape against the model the config describes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyft._atomic import atomic_directory, check_output_disjoint
from pyft.errors import ConfigError
from pyft.io.dtypes import float_of_torch
from pyft.io.files import data_error
from pyft.io.shards import SafetensorsShards
from pyft.quant.loader import (
    bnb_4bit_settings,
    build_skeleton,
    check_tensor_shapes,
    quantized_linear_names,
    read_model_config,
)
from pyft.quant.nf4 import quantize_nf4

#: Files of a model directory that are not weights or the config: copied as they are.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class QuantizeReport:
    """What :func:`quantize_checkpoint` wrote."""

    out_dir: Path
    quantized: int
    kept: int
    bytes_in: int
    bytes_out: int


def _float_name(dtype: torch.dtype) -> str:
    """``float32``, ``float16`` or ``bfloat16``: the name ``config.json`` and quant states use."""
    row = float_of_torch(dtype)
    if row is None:
        raise ConfigError(f"dtype {dtype} is not float32, float16 or bfloat16")
    return row.torch


def quantization_config(compute_dtype: torch.dtype, double_quant: bool,
                        skip_modules: Sequence[str] | None) -> dict:
    """The ``quantization_config`` block exactly as transformers 5.23 writes it (spec §4.2)."""
    return {
        "_load_in_4bit": True, "_load_in_8bit": False,
        "bnb_4bit_compute_dtype": _float_name(compute_dtype), "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": bool(double_quant),
        "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": list(skip_modules) if skip_modules else None, "llm_int8_threshold": 6.0,
        "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes",
    }


def quantize_checkpoint(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                        dtype: torch.dtype = torch.bfloat16, compute_dtype: torch.dtype | None = None,
                        blocksize: int = 64, double_quant: bool = True, skip_modules: Sequence[str] = (),
                        compat: str = "cpu") -> QuantizeReport:
    """Quantize ``model_dir``'s decoder linear weights to NF4 and write a bitsandbytes checkpoint.

    Args:
        model_dir: a transformers causal-LM directory with safetensors weights.
        out_dir: the directory to create (must not exist).
        dtype: dtype the weights are cast to before quantizing (the quant state's ``dtype``) and
            of every tensor kept unquantized (embeddings, norms, output layer, biases).
        compute_dtype: ``bnb_4bit_compute_dtype`` written to the config (default ``dtype``).
        blocksize, double_quant, compat: see :func:`pyft.quant.quantize_nf4`.
        skip_modules: module names (or name suffixes) kept in ``dtype``; the output layer always
            is. When given they are written as ``llm_int8_skip_modules`` (with the output layer).

    Raises:
        FileExistsError: ``out_dir`` exists. ConfigError: the input is already quantized, or
            ``out_dir`` is, contains or lies inside ``model_dir``.
        DataError: a malformed ``config.json`` or safetensors file, or a tensor whose shape or
            type does not fit the config; named with its file. Nothing is written then.
        ValueError: a non-finite weight (named with its file).
    """
    src, dst = Path(model_dir), Path(out_dir)
    check_output_disjoint(dst, [src])
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists (pyft never overwrites)")
    raw_config, config = read_model_config(src)
    if bnb_4bit_settings(config) is not None:
        raise ConfigError(f"{src}: already a bitsandbytes 4-bit checkpoint")
    model = build_skeleton(config, dtype, None, src / "config.json")
    targets = {f"{n}.weight" for n in quantized_linear_names(model, skip_modules)}
    output = model.get_output_embeddings()
    output_name = next((n for n, m in model.named_modules() if m is output), "lm_head")
    shards = SafetensorsShards(src)
    check_tensor_shapes(model, shards)
    for name in sorted(targets & set(shards.keys())):
        if not shards.entries[name].dtype.is_floating_point:
            raise data_error(shards.entries[name].path, f"tensor `{name}` is {shards.entries[name].dtype}, "
                                                        "not a floating-point weight to quantize", name)
    missing = targets - set(shards.keys())
    if missing:
        raise ValueError(f"{src}: tensors missing from the checkpoint: {', '.join(sorted(missing)[:5])}")
    index_path = src / "model.safetensors.index.json"
    by_file: dict[Path, list[str]] = {}
    for name in shards.keys():
        by_file.setdefault(shards.entries[name].path, []).append(name)
    quantized = kept = bytes_out = 0
    weight_map: dict[str, str] = {}
    with atomic_directory(dst) as stage:
        for path, names in by_file.items():
            tensors: dict[str, torch.Tensor] = {}
            for name in names:
                t = shards.read(name)
                if name in targets:
                    try:
                        packed, state = quantize_nf4(t.to(dtype), blocksize, double_quant, compat=compat)
                    except ValueError as e:
                        raise ValueError(f"{path}: tensor `{name}`: {e}") from None
                    tensors[name] = packed
                    tensors.update({f"{name}.{k}": v for k, v in state.items()})
                    quantized += 1
                else:
                    tensors[name] = t.to(dtype) if t.is_floating_point() else t
                    kept += 1
            from safetensors.torch import save_file

            save_file(tensors, str(stage / path.name), metadata={"format": "pt"})
            bytes_out += (stage / path.name).stat().st_size
            weight_map.update({k: path.name for k in tensors})
        if index_path.is_file():
            total = sum((stage / f).stat().st_size for f in set(weight_map.values()))
            (stage / index_path.name).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        skip = [*skip_modules, output_name] if skip_modules else None
        cfg = dict(raw_config)
        cfg["quantization_config"] = quantization_config(compute_dtype or dtype, double_quant, skip)
        cfg["dtype"] = _float_name(dtype)
        cfg.pop("torch_dtype", None)
        (stage / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for f in src.iterdir():
            if f.is_file() and f.name not in ("config.json", index_path.name) and not f.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(f, stage / f.name)
    return QuantizeReport(dst, quantized, kept, sum(f.stat().st_size for f in shards.files), bytes_out)
