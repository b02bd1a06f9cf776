"""Adapters on disk, exactly in HF PEFT 0.21's LoRA format (``adapter_config.json`` +
``adapter_model.safetensors``), so PEFT, vLLM and llama.cpp's converter read pyft adapters and
pyft reads PEFT's.

Tensor names: ``base_model.model.<module path>.lora_A.weight`` (``[r, in]``), ``.lora_B.weight``
(``[out, r]``), ``.lora_magnitude_vector`` (DoRA, ``[out]``), and for ``modules_to_save`` the
module's own parameter names under the same prefix. No adapter name; safetensors metadata
``{"format": "pt"}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory
from pyft.io.files import check_adapter_config, read_json_object
from pyft.peft.lora import LoraConfig, ModulesToSave, apply_lora, lora_modules, saved_module_names

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: The PEFT release whose on-disk format pyft writes.
PEFT_FORMAT_VERSION = "0.21.2"


def _number(x: float) -> int | float:
    """Integral values as JSON integers (Ollama reads lora_alpha as an integer)."""
    return int(x) if float(x).is_integer() else float(x)


def adapter_config_dict(config: LoraConfig, base_model_name_or_path: str | None,
                        task_type: str = "CAUSAL_LM", revision: str | None = None) -> dict[str, Any]:
    """The full ``adapter_config.json`` content PEFT 0.21.2 writes, for ``config`` (``task_type``
    ``CAUSAL_LM``, or ``SEQ_CLS`` for a reward model's adapter; ``revision`` of a Hub base)."""
    targets = config.targets if isinstance(config.targets, str) else sorted(config.targets)
    return {
        "alora_invocation_tokens": None,
        "alpha_pattern": {k: _number(v) for k, v in config.alpha_pattern.items()},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": config.exclude,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": config.layers_pattern,
        "layers_to_transform": config.layers_to_transform,
        "loftq_config": {},
        "lora_alpha": _number(config.alpha),
        "lora_bias": False,
        "lora_dropout": float(config.dropout),
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": config.modules_to_save,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": PEFT_FORMAT_VERSION,
        "qalora_group_size": 16,
        "r": config.r,
        "rank_pattern": dict(config.rank_pattern),
        "revision": revision,
        "target_modules": targets,
        "target_parameters": None,
        "task_type": task_type,
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": config.dora,
        "use_qalora": False,
        "use_rslora": config.rslora,
        "velora_config": None,
    }


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live adapter tensors of ``model`` under PEFT's on-disk names."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_modules(model):
        out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
        if layer.lora_magnitude_vector is not None:
            out[f"{PREFIX}{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            for pname, p in module.trained_module.named_parameters():
                out[f"{PREFIX}{name}.{pname}"] = p
            for bname, b in module.trained_module.named_buffers():
                out[f"{PREFIX}{name}.{bname}"] = b
    return out


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live adapter parameters and buffers of ``model`` under PEFT's on-disk names (the tensors
    themselves, not copies)."""
    return _adapter_tensors(model)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` under PEFT's on-disk names (detached, contiguous, CPU copies)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in _adapter_tensors(model).items()}


def save_adapter(model: nn.Module, out_dir: str | os.PathLike[str], *, base_model_name_or_path: str | None = None,
                 overwrite: bool = True, task_type: str = "CAUSAL_LM", revision: str | None = None) -> Path:
    """Save the adapter of ``model`` as a PEFT adapter directory (written atomically).

    Args:
        model: a model prepared with :func:`~pyft.peft.apply_lora` (or :func:`load_adapter`).
        out_dir: directory to write.
        base_model_name_or_path: recorded in the config (default: the model's ``name_or_path``).
        overwrite: replace an existing ``out_dir``.
        task_type: PEFT's ``task_type``: ``CAUSAL_LM``, or ``SEQ_CLS`` for a sequence-classification (reward) model.
        revision: the base's Hub revision, recorded as PEFT does (None for a local base or the default branch).
    """
    from safetensors.torch import save_file

    config = getattr(model, "pyft_lora_config", None)
    if config is None:
        raise ValueError("the model has no LoRA adapter to save (apply_lora or load_adapter first)")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None),
                                                                                  "_name_or_path", None)
    tensors = adapter_state_dict(model)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(adapter_config_dict(config, base_model_name_or_path, task_type, revision), indent=2, sort_keys=True)
        (tmp / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return Path(out_dir)


# PEFT features whose adapters pyft cannot apply faithfully: (key, value that is fine).
_UNSUPPORTED = [
    ("bias", "none"), ("lora_bias", False), ("fan_in_fan_out", False), ("target_parameters", None),
    ("trainable_token_indices", None), ("layer_replication", None), ("use_qalora", False),
    ("alora_invocation_tokens", None), ("use_bdlora", None),
]
_BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> LoraConfig:
    """Read ``adapter_config.json`` into a :class:`LoraConfig`, refusing what pyft cannot apply.

    ``adapter_dir`` may be a Hugging Face Hub id (``owner/name[@revision]``, see :mod:`pyft.hub`)."""
    from pyft.hub import resolve_model

    adapter_dir = resolve_model(adapter_dir, kind="adapter")
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: not an adapter directory (no {CONFIG_NAME})")
    raw = read_json_object(path)  # DataError naming the file: not a regular file, not a JSON object
    check_adapter_config(raw, path)
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: field `peft_type` is {raw.get('peft_type')!r}; pyft loads LORA adapters")
    for key, ok in _UNSUPPORTED:
        if raw.get(key) not in (ok, None, False):
            raise ValueError(f"{path}: field `{key}` = {raw[key]!r} is not supported by pyft")
    init = raw.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_MUTATING_INITS):
        raise ValueError(f"{path}: field `init_lora_weights` = {init!r} changes the base weights; "
                         "load it with PEFT and merge instead")
    targets = raw.get("target_modules")
    if targets is None:
        raise ValueError(f"{path}: field `target_modules` is missing")
    try:
        return LoraConfig(
            r=raw.get("r", 8), alpha=raw.get("lora_alpha", 8), dropout=raw.get("lora_dropout", 0.0) or 0.0,
            targets=targets if isinstance(targets, str) else list(targets),
            rslora=bool(raw.get("use_rslora", False)), dora=bool(raw.get("use_dora", False)),
            exclude=raw.get("exclude_modules"), modules_to_save=raw.get("modules_to_save"),
            layers_to_transform=raw.get("layers_to_transform"), layers_pattern=raw.get("layers_pattern"),
            rank_pattern=raw.get("rank_pattern") or {}, alpha_pattern=raw.get("alpha_pattern") or {},
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


#: ``peft_type`` → ``"module:function"`` loading an adapter of that kind other than LoRA, called as
#: ``function(model, raw_config, config_path, weights_path, trainable) -> adapted module names``.
OTHER_LOADERS: dict[str, str] = {
    "IA3": "pyft.peft.ia3:load_ia3_into",
    "PYFT_BOTTLENECK": "pyft.peft.bottleneck:load_bottleneck_into",
    "PROMPT_TUNING": "pyft.peft.prompt:load_prompt_into",
    "P_TUNING": "pyft.peft.prompt:load_prompt_into",
    "OFT": "pyft.peft.oft:load_oft_into",
    "PREFIX_TUNING": "pyft.peft.prefix:load_prefix_into",
}


def _other_loader(peft_type: Any) -> Any:
    """The loader of a non-LoRA ``peft_type`` (imported when needed), or None for LoRA/unknown."""
    import importlib

    target = OTHER_LOADERS.get(peft_type) if isinstance(peft_type, str) else None
    if target is None:
        return None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _load_with_saved_modules(loader: Any, model: nn.Module, raw: dict[str, Any], config_path: Path, weights: Path,
                             trainable: bool) -> list[str]:
    """Load an adapter of another kind than LoRA that also holds ``modules_to_save``: the kind's loader
    gets the file without those modules' tensors, then the modules are wrapped and filled."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from pyft.io.files import json_field
    from pyft.peft.saved_modules import apply_saved_modules, load_saved_modules, split_saved_modules

    names = json_field(raw, config_path, "modules_to_save", "str_list")
    try:
        paths = saved_module_names(model, names)
    except ValueError as e:
        raise ValueError(f"{config_path}: field {e}") from None
    own, modules = split_saved_modules(load_file(str(weights)), raw["peft_type"], paths)
    with tempfile.TemporaryDirectory(prefix="pyft-adapter-") as tmp:
        part = Path(tmp) / WEIGHTS_NAME
        save_file(own, str(part), metadata={"format": "pt"})
        try:
            adapted = loader(model, {k: v for k, v in raw.items() if k != "modules_to_save"}, config_path, part, trainable)
        except ValueError as e:  # name the user's file, not the staged copy
            raise ValueError(str(e).replace(str(part), str(weights))) from None
    apply_saved_modules(model, names)
    load_saved_modules(model, modules, paths, weights, trainable)
    return adapted


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike[str], *, trainable: bool = False) -> list[str]:
    """Apply the adapter saved in ``adapter_dir`` (by pyft or PEFT) to ``model``, in place.

    Args:
        model: the base model (no adapter yet).
        adapter_dir: a PEFT adapter directory (LoRA, or a kind of :data:`OTHER_LOADERS`), a pyft hybrid
            adapter directory (:mod:`pyft.peft.hybrid`), or a Hub id (``owner/name[@revision]``) whose
            ``adapter_config.json`` and ``adapter_model.safetensors`` are fetched into the Hub cache.
        trainable: keep the adapter parameters trainable (to continue training).

    Returns:
        The names of the adapted modules.

    Raises:
        FileNotFoundError: no adapter files.
        ValueError: an unsupported adapter, or tensors that do not fit the base model (names
            missing or extra, shapes different), naming the tensor.
    """
    from safetensors.torch import load_file

    from pyft.hub import resolve_model

    adapter_dir = resolve_model(adapter_dir, kind="adapter")
    from pyft.peft.hybrid import is_hybrid_dir, load_hybrid_into

    if is_hybrid_dir(adapter_dir):
        return load_hybrid_into(model, adapter_dir, trainable)
    weights = Path(adapter_dir) / WEIGHTS_NAME
    config_path = Path(adapter_dir) / CONFIG_NAME
    if config_path.is_file():
        raw = read_json_object(config_path)
        loader = _other_loader(raw.get("peft_type"))
        if loader is not None:
            # `r` is LoRA's rank there; other kinds check their own (OFT's is 0 when unset)
            check_adapter_config({k: v for k, v in raw.items() if k != "r"}, config_path)
            if not weights.is_file():
                raise FileNotFoundError(f"{adapter_dir}: no {WEIGHTS_NAME}")
            if raw.get("modules_to_save"):
                return _load_with_saved_modules(loader, model, raw, config_path, weights, trainable)
            return loader(model, raw, config_path, weights, trainable)
    config = read_adapter_config(adapter_dir)
    if not weights.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {WEIGHTS_NAME}")
    saved = {k.replace(".default.", ".").removesuffix(".default"): v for k, v in load_file(str(weights)).items()}
    adapted = apply_lora(model, config)
    expected = _adapter_tensors(model)  # names and shapes the model needs
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{weights}: does not fit this base model"
            + (f"; missing {len(missing)} tensor(s), e.g. `{missing[0]}`" if missing else "")
            + (f"; unexpected {len(extra)} tensor(s), e.g. `{extra[0]}`" if extra else "")
        )
    for key, tensor in saved.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{weights}: tensor `{key}` has shape {tuple(tensor.shape)} but the base model needs "
                             f"{tuple(expected[key].shape)}: the adapter was trained on a different base model")
    params = _adapter_tensors(model)
    with torch.no_grad():
        for key, tensor in saved.items():
            p = params[key]
            p.copy_(tensor.to(device=p.device, dtype=p.dtype))
            p.requires_grad_(trainable)
    return adapted
