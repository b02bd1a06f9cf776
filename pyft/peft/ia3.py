"""(IA)³: learned rescaling of activations (Liu et al., 2022), in HF PEFT's ``IA3`` form.

Each targeted linear layer gets a vector ``ia3_l``:

- a feedforward module (``feedforward`` in the config, PEFT's ``feedforward_modules``) scales its
  *input*: ``y = W (x ⊙ l) + b`` with ``l`` of shape ``[1, in_features]``;
- any other target scales its *output*: ``y = (W x + b) ⊙ l`` with ``l`` of shape ``[out_features, 1]``.

Vectors start at 1 (the model is unchanged); PEFT's ``init_ia3_weights=False`` draws them from N(0, 1).
Merging multiplies ``W`` by ``l`` along the matching axis (and the bias of an output-scaled layer), so a
merged model needs no pyft code. Saved as PEFT saves it: ``adapter_config.json`` with ``peft_type: IA3``
and ``adapter_model.safetensors`` holding ``base_model.model.<module>.ia3_l``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory
from pyft.peft._inject import is_target, matches_any, replace_module

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass(frozen=True)
class Ia3Config:
    """Which layers (IA)³ rescales.

    Attributes:
        targets: module names or suffixes (a list) or a regex (a string), PEFT's ``target_modules``;
            default PEFT's for Llama-style models: keys, values and the FFN's down projection.
        feedforward: the targets whose input is scaled (PEFT's ``feedforward_modules``), same rules;
            must be among ``targets`` when both are lists. Default: the down projection.
        exclude: modules never targeted (PEFT's ``exclude_modules``).
        init_ones: start every vector at 1 (PEFT's ``init_ia3_weights``); False draws N(0, 1).
    """

    targets: str | list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward: str | list[str] | None = field(default_factory=lambda: ["down_proj"])
    exclude: str | list[str] | None = None
    init_ones: bool = True
    modules_to_save: list[str] | None = None  # trained in full and saved beside the adapter (pyft.peft.saved_modules)

    def __post_init__(self) -> None:
        if not isinstance(self.targets, str) and not self.targets:
            raise ValueError("targets: at least one module name")
        if (isinstance(self.targets, (list, tuple)) and isinstance(self.feedforward, (list, tuple))
                and not set(self.feedforward) <= set(self.targets)):
            extra = sorted(set(self.feedforward) - set(self.targets))
            raise ValueError(f"feedforward: {extra} are not among the targets {list(self.targets)}")


class Ia3Linear(nn.Module):
    """An ``nn.Linear`` whose input (feedforward) or output is scaled by the learned vector ``ia3_l``.

    Names follow PEFT (``base_layer``, ``ia3_l``), so state dicts map one to one onto its format.
    ``ia3_l`` is float32 ``[1, in_features]`` (feedforward) or ``[out_features, 1]``.
    """

    def __init__(self, base: nn.Linear, feedforward: bool, init_ones: bool = True) -> None:
        super().__init__()
        self.base_layer = base
        self.is_feedforward = feedforward
        shape = (1, base.in_features) if feedforward else (base.out_features, 1)
        init = torch.ones(shape) if init_ones else torch.randn(shape)
        self.ia3_l = nn.Parameter(init.to(device=base.weight.device))
        self.adapter_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        scale = self.ia3_l.flatten()
        if self.is_feedforward:
            return self.base_layer((x.to(scale.dtype) * scale).to(x.dtype))
        result = self.base_layer(x)
        return (result * scale).to(result.dtype)

    def merged_weight(self) -> torch.Tensor:
        """``W`` with the scaling folded in (float32 ``[out, in]``)."""
        return self.base_layer.weight.float() * self.ia3_l.float()

    def merged_bias(self) -> torch.Tensor | None:
        """The bias after merging (float32): scaled for an output-scaled layer, unchanged otherwise."""
        bias = self.base_layer.bias
        if bias is None:
            return None
        return bias.float() if self.is_feedforward else bias.float() * self.ia3_l.float().flatten()


def apply_ia3(model: nn.Module, config: Ia3Config) -> list[str]:
    """Freeze ``model`` and wrap every targeted ``nn.Linear`` in an :class:`Ia3Linear`, in place.

    Returns:
        The names of the adapted modules.

    Raises:
        ValueError: the model already has an (IA)³ adapter, a listed target is not an ``nn.Linear``, or
            nothing matches.
    """
    if any(isinstance(m, Ia3Linear) for m in model.modules()):
        raise ValueError("the model already has an (IA)³ adapter")
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        if not name or not is_target(name, config.targets, exclude=config.exclude):
            continue
        if not isinstance(module, nn.Linear):
            if isinstance(config.targets, str):
                continue
            raise ValueError(f"target `{name}` is a {type(module).__name__}; pyft applies (IA)³ to nn.Linear layers")
        ff = matches_any(name, config.feedforward)
        replace_module(model, name, Ia3Linear(module, ff, config.init_ones))
        adapted.append(name)
    if not adapted:
        raise ValueError(f"no module of the model matches targets {config.targets!r}")
    model.pyft_ia3_config = config
    return adapted


def ia3_modules(model: nn.Module) -> Iterator[tuple[str, Ia3Linear]]:
    """``(name, layer)`` for every (IA)³ layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, Ia3Linear):
            yield name, module


def merge_ia3(model: nn.Module) -> nn.Module:
    """Fold every (IA)³ vector into its layer's weight (and bias) and remove the wrappers, in place;
    computed in float32 and cast once to the weight's dtype, as PEFT's ``merge_and_unload``."""
    for name, layer in list(ia3_modules(model)):
        base = layer.base_layer
        with torch.no_grad():
            base.weight.copy_(layer.merged_weight().to(base.weight.dtype))
            bias = layer.merged_bias()
            if bias is not None:
                base.bias.copy_(bias.to(base.bias.dtype))
        replace_module(model, name, base)
    if hasattr(model, "pyft_ia3_config"):
        del model.pyft_ia3_config
    return model


def _names(value: str | list[str] | None) -> Any:
    return value if value is None or isinstance(value, str) else sorted(value)


def ia3_config_dict(config: Ia3Config, base_model_name_or_path: str | None, task_type: str = "CAUSAL_LM",
                    revision: str | None = None) -> dict:
    """``adapter_config.json`` as PEFT writes it for ``IA3Config`` (``revision``: of a Hub base)."""
    return {"peft_type": "IA3", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
            "target_modules": _names(config.targets), "feedforward_modules": _names(config.feedforward),
            "exclude_modules": _names(config.exclude), "fan_in_fan_out": False, "init_ia3_weights": config.init_ones,
            "modules_to_save": None, "inference_mode": True, "revision": revision, "auto_mapping": None}


def save_ia3_adapter(model: nn.Module, out_dir: str | os.PathLike[str], *, base_model_name_or_path: str | None = None,
                     task_type: str = "CAUSAL_LM", revision: str | None = None, overwrite: bool = True) -> Path:
    """Save the (IA)³ adapter of ``model`` as a PEFT adapter directory (written atomically)."""
    from safetensors.torch import save_file

    config = getattr(model, "pyft_ia3_config", None)
    if config is None:
        raise ValueError("the model has no (IA)³ adapter to save (apply_ia3 or load_adapter first)")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    tensors = {f"{PREFIX}{name}.ia3_l": layer.ia3_l.detach().contiguous() for name, layer in ia3_modules(model)}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(ia3_config_dict(config, base_model_name_or_path, task_type, revision), indent=2, sort_keys=True)
        (Path(tmp) / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return Path(out_dir)


def ia3_config_from_dict(raw: dict[str, Any], path: Path) -> Ia3Config:
    """An :class:`Ia3Config` from PEFT's ``adapter_config.json`` (``peft_type: IA3``).

    Raises:
        ValueError: fields pyft cannot apply (``fan_in_fan_out``, ``modules_to_save``), naming the file.
    """
    if raw.get("fan_in_fan_out"):
        raise ValueError(f"{path}: field `fan_in_fan_out` = true is not supported by pyft (Conv1D layers)")
    if raw.get("modules_to_save"):
        raise ValueError(f"{path}: field `modules_to_save` is not supported for (IA)³ adapters by pyft")
    targets = raw.get("target_modules")
    if targets is None:
        raise ValueError(f"{path}: field `target_modules` is missing")
    ff = raw.get("feedforward_modules")

    def listed(v: Any) -> Any:
        return v if v is None or isinstance(v, str) else list(v)

    try:
        return Ia3Config(targets=listed(targets), feedforward=listed(ff), exclude=listed(raw.get("exclude_modules")),
                         init_ones=bool(raw.get("init_ia3_weights", True)))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_ia3_into(model: nn.Module, raw: dict[str, Any], config_path: Path, weights: Path, trainable: bool) -> list[str]:
    """Apply the (IA)³ adapter described by ``raw`` (its ``adapter_config.json``) with the tensors of
    ``weights`` to ``model``, checking names and shapes.

    Raises:
        ValueError: the tensors do not fit the base model (a tensor named).
    """
    from safetensors.torch import load_file

    config = ia3_config_from_dict(raw, config_path)
    saved = {k.replace(".default.", ".").removesuffix(".default"): v for k, v in load_file(str(weights)).items()}
    adapted = apply_ia3(model, config)
    params = {f"{PREFIX}{name}.ia3_l": layer.ia3_l for name, layer in ia3_modules(model)}
    missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or extra:
        raise ValueError(f"{weights}: does not fit this base model"
                         + (f"; missing {len(missing)} tensor(s), e.g. `{missing[0]}`" if missing else "")
                         + (f"; unexpected {len(extra)} tensor(s), e.g. `{extra[0]}`" if extra else ""))
    with torch.no_grad():
        for key, p in params.items():
            if tuple(saved[key].shape) != tuple(p.shape):
                raise ValueError(f"{weights}: tensor `{key}` has shape {tuple(saved[key].shape)} but the base model "
                                 f"needs {tuple(p.shape)}: the adapter was trained on a different base model")
            p.copy_(saved[key].to(p.dtype))
            p.requires_grad_(trainable)
    return adapted
