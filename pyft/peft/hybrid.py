"""Hybrid PEFT: several adapter kinds on one model (LoRA on attention, (IA)³ or bottleneck adapters on the
FFN, a soft prompt), applied, saved and loaded together.

Each ``apply_*`` of pyft freezes the whole model before it injects its own layers, so the parts are
applied in order and the trainable parameters of every part are collected and switched back on at the
end (:func:`apply_parts`). Two parts may not adapt the same module: the second one then finds a wrapper
where it expects an ``nn.Linear`` and the run stops with both names.

On disk a hybrid adapter is a directory holding one adapter directory per part, each in its own format
(PEFT's for LoRA, (IA)³, OFT, prompt and prefix tuning), plus ``pyft_hybrid.json``::

    adapter/
      pyft_hybrid.json          {"format": "pyft-hybrid", "version": 1, "parts": ["lora", "prompt_tuning"]}
      lora/                     adapter_config.json + adapter_model.safetensors (PEFT LORA)
      prompt_tuning/            adapter_config.json + adapter_model.safetensors (PEFT PROMPT_TUNING)

PEFT loads each part on its own; :func:`pyft.peft.load_adapter` loads the whole directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

HYBRID_FILE = "pyft_hybrid.json"
HYBRID_FORMAT = "pyft-hybrid"


def apply_parts(model: nn.Module, parts: Sequence[tuple[str, Callable[[nn.Module], Any]]]) -> dict[str, list[nn.Parameter]]:
    """Apply each ``(name, apply)`` in order and leave every part's parameters trainable.

    Returns:
        ``name -> the parameters that part trains`` (for staged training).

    Raises:
        ValueError: a part could not be applied (e.g. it targets a module an earlier part adapted),
            naming the parts.
    """
    owned: dict[str, list[nn.Parameter]] = {}
    for i, (name, apply) in enumerate(parts):
        try:
            apply(model)
        except ValueError as e:
            earlier = ", ".join(n for n, _ in parts[:i])
            context = f" (after {earlier}: two parts may not adapt the same module)" if earlier else ""
            raise ValueError(f"{name}: {e}{context}") from None
        claimed = {id(p) for ps in owned.values() for p in ps}
        owned[name] = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
        if not owned[name]:
            raise ValueError(f"{name}: it left no parameter to train")
    trainable = {id(p) for ps in owned.values() for p in ps}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return owned


def is_hybrid_dir(adapter_dir: str | os.PathLike[str]) -> bool:
    """Whether ``adapter_dir`` holds a hybrid adapter (has ``pyft_hybrid.json``)."""
    return (Path(adapter_dir) / HYBRID_FILE).is_file()


def read_hybrid_parts(adapter_dir: str | os.PathLike[str]) -> list[str]:
    """The part names listed in ``adapter_dir/pyft_hybrid.json``, each a subdirectory.

    Raises:
        ValueError: the file is not a hybrid description, or a part directory is missing (naming the file).
    """
    from pyft.io.files import read_json_object

    path = Path(adapter_dir) / HYBRID_FILE
    raw = read_json_object(path)
    if raw.get("format") != HYBRID_FORMAT:
        raise ValueError(f"{path}: field `format` is {raw.get('format')!r}, expected {HYBRID_FORMAT!r}")
    parts = raw.get("parts")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p and "/" not in p and
                                                           p not in (".", "..") for p in parts):
        raise ValueError(f"{path}: field `parts` must be a non-empty list of part directory names, got {parts!r}")
    for part in parts:
        if not (Path(adapter_dir) / part).is_dir():
            raise ValueError(f"{path}: part {part!r} has no directory {Path(adapter_dir) / part}")
    return parts


def write_hybrid_file(dest: str | os.PathLike[str], parts: Sequence[str]) -> None:
    """Write ``pyft_hybrid.json`` listing ``parts`` into ``dest``."""
    text = json.dumps({"format": HYBRID_FORMAT, "version": 1, "parts": list(parts)}, indent=2)
    (Path(dest) / HYBRID_FILE).write_text(text + "\n", encoding="utf-8")


def load_hybrid_into(model: nn.Module, adapter_dir: str | os.PathLike[str], trainable: bool) -> list[str]:
    """Load every part of the hybrid adapter in ``adapter_dir`` into ``model``.

    Returns:
        The adapted module names of all parts.
    """
    from pyft.peft.adapter_io import load_adapter

    adapted: list[str] = []

    def loader(part: str) -> Callable[[nn.Module], Any]:
        return lambda m: adapted.extend(load_adapter(m, Path(adapter_dir) / part, trainable=True))

    owned = apply_parts(model, [(part, loader(part)) for part in read_hybrid_parts(adapter_dir)])
    if not trainable:
        for ps in owned.values():
            for p in ps:
                p.requires_grad_(False)
    return adapted
