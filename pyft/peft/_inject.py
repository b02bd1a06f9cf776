"""Which modules an adapter targets, with PEFT 0.21's exact matching rules, and module replacement.

Rules (peft/tuners/tuners_utils.py ``check_target_module_exists``, utils/other.py ``get_pattern_key``):

- a list of targets matches a module whose full name equals an entry or ends with ``.<entry>``;
- a string target is a regular expression that must match the full module name;
- ``exclude`` uses the same rules and wins over targets; ``modules_to_save`` modules are never targets;
- ``layers_to_transform`` keeps only modules inside the given layer indices (list targets only,
  as in PEFT), the index being the number after ``<layers_pattern>.`` or, without a pattern,
  after the first ``<name>.``;
- per-module rank/alpha overrides (``rank_pattern``/``alpha_pattern``) apply to the first key
  ``k`` for which ``(.*\\.)?(k)$`` matches the module name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from pyft.quant.linear import NF4Linear


def matches_any(name: str, targets: str | Sequence[str] | None) -> bool:
    """Whether module ``name`` matches ``targets`` (a regex string or a list of names/suffixes)."""
    if not targets:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith(f".{t}") for t in targets)


def layer_index(name: str, layers_pattern: str | Sequence[str] | None) -> int | None:
    """The layer number of module ``name`` (``model.layers.3.mlp.up_proj`` → 3), or None."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def pattern_key(patterns: Iterable[str], name: str) -> str | None:
    """The first key of ``patterns`` that matches module ``name`` as PEFT's ``rank_pattern`` does."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def is_saved_module(name: str, modules_to_save: Sequence[str] | None) -> bool:
    """Whether ``name`` is (inside) one of the fully trained ``modules_to_save``."""
    return bool(modules_to_save) and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in modules_to_save)


def is_target(
    name: str,
    targets: str | Sequence[str],
    *,
    exclude: str | Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = None,
    layers_to_transform: int | Sequence[int] | None = None,
    layers_pattern: str | Sequence[str] | None = None,
) -> bool:
    """PEFT's target rule for one module name (see the module docstring)."""
    if matches_any(name, exclude) or is_saved_module(name, modules_to_save):
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith(f".{t}") for t in targets):
        return False
    using_layers = layers_to_transform is not None and (
        len(layers_to_transform) != 0 if isinstance(layers_to_transform, Sequence) else True
    )
    if not using_layers:
        return True
    idx = layer_index(name, layers_pattern)
    if idx is None:
        return False
    if isinstance(layers_to_transform, int):
        return idx == layers_to_transform
    return idx in layers_to_transform


def all_linear_names(model: nn.Module) -> list[str]:
    """The suffix names of every ``nn.Linear`` and :class:`~pyft.quant.NF4Linear` except the output
    layer, as PEFT expands ``all-linear`` (which also counts bitsandbytes' ``Linear4bit``)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, NF4Linear)) and module is not output:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
