"""``modules_to_save`` for every adapter kind beyond LoRA: whole modules (an output layer, a
classification head) trained in full beside the adapter and saved in its file, as PEFT does.

The kind's own ``apply``/``save``/``load`` functions know nothing of them: :func:`apply_saved_modules`
wraps the modules after the adapter is applied (:class:`~pyft.peft.lora.ModulesToSave`: a trainable
copy beside the frozen original, so ``adapters_disabled`` still gives the base), :func:`add_saved_modules`
adds their tensors to a saved adapter directory, and :func:`split_saved_modules` takes them out of a
loaded file before the kind's loader sees it.

Names on disk are PEFT's: ``<prefix><module path>.<parameter>`` with the prefix ``base_model.model.``
for layer-injecting kinds ((IA)³, OFT, bottleneck) and ``base_model.`` for prompt-learning kinds
(prompt tuning, P-tuning, prefix tuning), whose PEFT model wraps the transformers model one level less.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pyft.peft._inject import replace_module
from pyft.peft.lora import ModulesToSave, saved_module_names

#: ``peft_type`` of the kinds whose PEFT model has no tuner wrapper (tensor prefix ``base_model.``).
PROMPT_LEARNING = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")


def tensor_prefix(peft_type: str) -> str:
    """The on-disk prefix of ``modules_to_save`` tensors for adapters of ``peft_type``."""
    return "base_model." if peft_type in PROMPT_LEARNING else "base_model.model."


def apply_saved_modules(model: nn.Module, modules_to_save: Sequence[str] | None) -> list[str]:
    """Wrap every module named by ``modules_to_save`` (a name or a ``.``-suffix, as PEFT matches) in a
    :class:`ModulesToSave`, in place; returns the wrapped module paths.

    Raises:
        ValueError: a name matches no module, or a module is wrapped already.
    """
    names = saved_module_names(model, modules_to_save)
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSave):
            raise ValueError(f"modules_to_save: `{name}` is trained in full by another part already")  # noqa: TRY004
        replace_module(model, name, ModulesToSave(module))
    return names


def saved_module_tensors(model: nn.Module, peft_type: str) -> dict[str, torch.Tensor]:
    """The trained copies' parameters and buffers under PEFT's names for adapters of ``peft_type``
    (detached CPU copies)."""
    prefix = tensor_prefix(peft_type)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            for pname, t in [*module.trained_module.named_parameters(), *module.trained_module.named_buffers()]:
                out[f"{prefix}{name}.{pname}"] = t.detach().to("cpu").contiguous().clone()
    return out


def add_saved_modules(adapter_dir: Path, model: nn.Module, modules_to_save: Sequence[str]) -> None:
    """Add the trained modules of ``model`` to the adapter saved in ``adapter_dir`` (a directory being
    staged, not yet in place): their tensors into ``adapter_model.safetensors`` and their names into
    ``adapter_config.json``'s ``modules_to_save``."""
    from safetensors.torch import load_file, save_file

    config_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    tensors = {**load_file(str(weights)), **saved_module_tensors(model, config["peft_type"])}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config["modules_to_save"] = list(modules_to_save)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def split_saved_modules(saved: dict[str, torch.Tensor], peft_type: str,
                        module_paths: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(the adapter's own tensors, the saved modules' tensors keyed by path inside the model)`` of a
    loaded file, for modules at ``module_paths``."""
    prefix = tensor_prefix(peft_type)
    own, modules = {}, {}
    for key, t in saved.items():
        rest = key.removeprefix(prefix) if key.startswith(prefix) else None
        if rest is not None and any(rest.startswith(f"{p}.") for p in module_paths):
            modules[rest] = t
        else:
            own[key] = t
    return own, modules


def load_saved_modules(model: nn.Module, tensors: dict[str, torch.Tensor], module_paths: Sequence[str],
                       weights: Path, trainable: bool) -> None:
    """Copy ``tensors`` (keyed ``<module path>.<parameter>``) into the trained copies of the wrapped
    ``module_paths`` of ``model``.

    Raises:
        ValueError: a tensor is missing, unexpected or of another shape (naming ``weights`` and it).
    """
    expected = {}
    for path in module_paths:
        module = model.get_submodule(path)
        assert isinstance(module, ModulesToSave)
        for pname, t in [*module.trained_module.named_parameters(), *module.trained_module.named_buffers()]:
            expected[f"{path}.{pname}"] = t
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{weights}: modules_to_save tensors do not fit this base model"
                         + (f"; missing `{missing[0]}`" if missing else "") + (f"; unexpected `{extra[0]}`" if extra else ""))
    with torch.no_grad():
        for key, t in expected.items():
            if tuple(tensors[key].shape) != tuple(t.shape):
                raise ValueError(f"{weights}: tensor `{key}` has shape {tuple(tensors[key].shape)} but the base model "
                                 f"needs {tuple(t.shape)}")
            t.copy_(tensors[key].to(device=t.device, dtype=t.dtype))
            if isinstance(t, nn.Parameter):
                t.requires_grad_(trainable)
