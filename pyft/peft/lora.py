"""The LoRA family: LoRA, rsLoRA and DoRA on ``nn.Linear`` layers, plus fully trained modules.

QLoRA is the same adapters over :class:`~pyft.quant.NF4Linear` bases: wherever the math needs
the base weight (DoRA's norm and magnitude init, merged weights) it uses the dequantized weight
(:func:`base_weight`); gradients reach only the adapter.

Math (as HF PEFT 0.21 computes it, so logits and gradients agree with PEFT):

- LoRA: ``y = W x + b + s · B A dropout(x)``, ``A [r, in]`` (Kaiming-uniform init), ``B [out, r]``
  (zeros), ``s = alpha / r`` — or ``alpha / sqrt(r)`` with rsLoRA (Kalajdzievski 2023).
- DoRA (Liu et al. 2024): the adapted weight ``W + s·BA`` is renormalised per output row to a
  learned magnitude ``m [out]``: ``y = (m / ||W + s·BA||) ⊙ (W x + s·B A x) + b``, the norm
  detached from the graph (paper §4.3); ``m`` starts at the row norms of ``W``.

Adapter parameters are float32 (as PEFT's ``autocast_adapter_dtype``) whatever the base dtype;
inputs are cast to float32 for the adapter path and the sum cast back to the base output dtype.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pyft.peft._inject import all_linear_names, is_target, pattern_key, replace_module
from pyft.quant.linear import NF4Linear

#: The layer types LoRA adapts.
ADAPTABLE = (nn.Linear, NF4Linear)


def base_weight(base: nn.Linear | NF4Linear) -> torch.Tensor:
    """The weight ``[out, in]`` of a base layer in its own dtype: ``base.weight`` of an
    ``nn.Linear``, the dequantized weight (a fresh tensor, no grad) of an :class:`NF4Linear`."""
    if isinstance(base, NF4Linear):
        return base.dequantized_weight()
    return base.weight


@dataclass
class LoraConfig:
    """What to adapt and how.

    Args:
        r: rank. Default 8.
        alpha: scaling numerator (``lora_alpha`` in PEFT). Default 16.
        dropout: dropout on the adapter input during training. Default 0.
        targets: module names/suffixes (``["q_proj", "v_proj"]``), a regex string matching full
            module names, or ``"all-linear"`` (every ``nn.Linear`` / ``NF4Linear`` but the output
            layer). Default ``"all-linear"``.
        rslora: scale by ``alpha / sqrt(r)`` (rank-stabilised LoRA).
        dora: weight-decomposed LoRA (adds a magnitude vector per output feature).
        exclude: modules never adapted (same matching as ``targets``).
        modules_to_save: modules trained in full and saved whole (e.g. ``["lm_head"]``).
        layers_to_transform: only adapt layers with these indices.
        layers_pattern: name of the layer list used to find the index (e.g. ``"layers"``).
        rank_pattern: per-module rank overrides, ``{"regex": r}``.
        alpha_pattern: per-module alpha overrides, ``{"regex": alpha}``.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str | list[str] = "all-linear"
    rslora: bool = False
    dora: bool = False
    exclude: str | list[str] | None = None
    modules_to_save: list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: str | list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"`r` must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise ValueError(f"`alpha` must be a positive number, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ValueError("`targets` is empty: name the modules to adapt, a regex, or 'all-linear'")
        if not isinstance(self.targets, str):
            self.targets = list(self.targets)
        for key, value in self.rank_pattern.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`rank_pattern[{key!r}]` must be a positive integer, got {value!r}")
        for key, value in self.alpha_pattern.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`alpha_pattern[{key!r}]` must be a positive number, got {value!r}")

    def rank_and_alpha(self, name: str) -> tuple[int, float]:
        """The rank and alpha of module ``name`` after ``rank_pattern``/``alpha_pattern``."""
        rk = pattern_key(self.rank_pattern, name)
        ak = pattern_key(self.alpha_pattern, name)
        return (self.rank_pattern[rk] if rk else self.r), (self.alpha_pattern[ak] if ak else self.alpha)


class LoraLinear(nn.Module):
    """An ``nn.Linear`` or :class:`~pyft.quant.NF4Linear` with a LoRA (or rsLoRA / DoRA) adapter beside it.

    Submodules and parameters follow PEFT's names (``base_layer``, ``lora_A``, ``lora_B``,
    ``lora_magnitude_vector``) so state dicts map one to one onto PEFT's adapter format.

    Args:
        base: the frozen layer (weight ``[out, in]``, NF4 for QLoRA).
        r, alpha, dropout, rslora, dora: see :class:`LoraConfig`.
    """

    def __init__(self, base: nn.Linear | NF4Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 dora: bool = False) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.rslora, self.use_dora = r, float(alpha), rslora, dora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dev = base.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_magnitude_vector: nn.Parameter | None = None
        if dora:
            with torch.no_grad():
                norm = torch.linalg.norm(base_weight(base).float() + self.scaling * self.delta_direction(), dim=1)
            self.lora_magnitude_vector = nn.Parameter(norm)
        self.adapter_enabled = True

    def delta_direction(self) -> torch.Tensor:
        """``B @ A`` (float32 ``[out, in]``), computed through the layers as PEFT does."""
        eye = torch.eye(self.in_features, device=self.lora_A.weight.device, dtype=self.lora_A.weight.dtype)
        return self.lora_B(self.lora_A(eye)).T

    def delta_weight(self) -> torch.Tensor:
        """The weight update ``s · B A`` (float32 ``[out, in]``) of plain LoRA."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def merged_weight(self) -> torch.Tensor:
        """The weight with the adapter folded in (float32 ``[out, in]``)."""
        w = base_weight(self.base_layer).float() + self.delta_weight()
        if self.use_dora:
            norm = torch.linalg.norm(w, dim=1, keepdim=True)
            w = (self.lora_magnitude_vector.float().view(-1, 1) / norm) * w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if not self.adapter_enabled:
            return result
        out_dtype = result.dtype
        x = x.to(self.lora_A.weight.dtype)
        if self.use_dora:
            result = result + self._dora(x, result)
        else:
            result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return result.to(out_dtype)

    def _dora(self, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base_out: torch.Tensor | None = base_result
        else:
            x = self.lora_dropout(x)
            base_out = None  # dropout changed x: recompute W x below
        direction = self.delta_direction().to(x.dtype)
        weight = base_weight(self.base_layer).to(x.dtype)
        norm = torch.linalg.norm(weight + self.scaling * direction.detach(), dim=1).to(weight.dtype).detach()
        scale = (self.lora_magnitude_vector / norm).view(1, -1)
        lora_out = self.lora_B(self.lora_A(x))
        if base_out is None:
            if isinstance(self.base_layer, NF4Linear):
                # dequantized straight into x's dtype and not saved for backward (PEFT's bnb layer
                # uses F.linear here and keeps the dense weight alive until backward)
                base_out = self.base_layer.linear(x, with_bias=False)
            else:
                base_out = F.linear(x, weight)
        elif self.base_layer.bias is not None:
            base_out = base_out - self.base_layer.bias
        return (scale - 1) * base_out + scale * lora_out * self.scaling

    def extra_repr(self) -> str:
        kind = "dora" if self.use_dora else ("rslora" if self.rslora else "lora")
        return f"{kind}: r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


class ModulesToSave(nn.Module):
    """A module trained in full: a trainable copy beside the frozen original.

    The original stays available for the adapter-disabled path (reference models); the copy is
    what gets saved (PEFT's ``modules_to_save``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.trained_module = copy.deepcopy(module)
        for p in self.trained_module.parameters():
            p.requires_grad_(True)
        self.adapter_enabled = True

    def forward(self, *args, **kwargs):
        module = self.trained_module if self.adapter_enabled else self.original_module
        return module(*args, **kwargs)


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Freeze ``model`` and inject the adapter of ``config`` in place.

    Returns:
        The names of the adapted modules (``modules_to_save`` not included).

    Raises:
        ValueError: the model already has an adapter, a target is not an ``nn.Linear`` or
            ``NF4Linear``, or nothing matches ``targets``.
    """
    if any(isinstance(m, (LoraLinear, ModulesToSave)) for m in model.modules()):
        raise ValueError("the model already has a LoRA adapter; merge or reload it before adding another")
    targets = all_linear_names(model) if config.targets == "all-linear" else config.targets
    for p in model.parameters():
        p.requires_grad_(False)
    adapted: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or not is_target(name, targets, exclude=config.exclude, modules_to_save=config.modules_to_save,
                                     layers_to_transform=config.layers_to_transform,
                                     layers_pattern=config.layers_pattern):
            continue
        if not isinstance(module, ADAPTABLE):
            if isinstance(targets, str):
                continue  # a regex may also match containers; PEFT skips what it cannot adapt there too
            raise ValueError(f"target `{name}` is a {type(module).__name__}; pyft applies LoRA to nn.Linear and "
                             "NF4Linear layers")
        r, alpha = config.rank_and_alpha(name)
        replace_module(model, name, LoraLinear(module, r, alpha, config.dropout, config.rslora, config.dora))
        adapted.append(name)
    if not adapted:
        raise ValueError(f"no module of the model matches targets {targets!r}")
    for name in saved_module_names(model, config.modules_to_save):
        replace_module(model, name, ModulesToSave(model.get_submodule(name)))
    model.pyft_lora_config = LoraConfig(**{**config.__dict__, "targets": targets})
    return adapted


def saved_module_names(model: nn.Module, modules_to_save: Sequence[str] | None) -> list[str]:
    """The paths of the modules ``modules_to_save`` names (each a path or a ``.``-suffix, as PEFT matches).

    Raises:
        ValueError: a name matches no module of ``model``.
    """
    if not modules_to_save:
        return []
    names = [n for n, _ in model.named_modules() if n and any(n == m or n.endswith(f".{m}") for m in modules_to_save)]
    missing = [m for m in modules_to_save if not any(n == m or n.endswith(f".{m}") for n in names)]
    if missing:
        raise ValueError(f"`modules_to_save` names modules the model does not have: {missing}")
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    """``(name, layer)`` for every LoRA layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model (e.g. the reference model of DPO) inside the block."""
    # every adapter layer pyft has (LoRA, modules_to_save, (IA)³) carries an `adapter_enabled` switch
    layers = [m for m in model.modules() if hasattr(m, "adapter_enabled")]
    states = [m.adapter_enabled for m in layers]
    for m in layers:
        m.adapter_enabled = False
    try:
        yield model
    finally:
        for m, s in zip(layers, states):
            m.adapter_enabled = s


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (computed in float32, cast once to the base dtype)
    and remove the LoRA layers, in place. Returns ``model``.

    An :class:`~pyft.quant.NF4Linear` base is not re-quantized (that would add a second rounding
    error on top of the adapter): it is replaced by a dense ``nn.Linear`` in the weight's original
    dtype holding ``dequant(W) + ΔW``, so the merged model is no longer 4-bit. Quantize it again
    explicitly if that is what you want.
    """
    for name, layer in list(lora_modules(model)):
        base = layer.base_layer
        with torch.no_grad():
            merged = layer.merged_weight()
            if isinstance(base, NF4Linear):
                base = _dense_linear(base, merged)
            else:
                base.weight.copy_(merged.to(base.weight.dtype))
        replace_module(model, name, base)
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSave):
            replace_module(model, name, module.trained_module)
    if hasattr(model, "pyft_lora_config"):
        del model.pyft_lora_config
    return model


def _dense_linear(base: NF4Linear, weight: torch.Tensor) -> nn.Linear:
    """A frozen ``nn.Linear`` in ``base``'s original weight dtype holding ``weight``."""
    dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device,
                      dtype=base.weight_dtype)
    dense.weight.copy_(weight.to(base.weight_dtype))
    if base.bias is not None:
        dense.bias.copy_(base.bias)
    dense.requires_grad_(False)
    return dense


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (each shared tensor counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_parameters_report(model: nn.Module) -> str:
    """``trainable params: N || all params: M || trainable%: P`` (PEFT's wording)."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}"
