"""What a run trains, applied to the model and saved: the adapters of ``tuning:`` (one kind, or a hybrid
of several on disjoint modules) and the stages of ``stages:``.

The functions each tuning uses are named in :data:`pyft.methods.TUNING_TABLE` (``"module:function"``)
and imported when a run needs them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from pyft.errors import ConfigError
from pyft.methods import SEQUENCE_HEADS, Tuning

if TYPE_CHECKING:
    from pyft.train.config import TrainConfig


def _function(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def section_config(config: TrainConfig, tuning: Tuning) -> Any:
    """The settings of ``tuning`` (its config section), with the run's additions: the new score head of a
    reward model or classifier trains in full beside LoRA (PEFT's ``SEQ_CLS`` default)."""
    section = getattr(config, tuning.section) if tuning.section else None
    if tuning.section == "lora" and config.objective.head in SEQUENCE_HEADS:
        section = dataclasses.replace(section, modules_to_save=sorted(set(section.modules_to_save or []) | {"score"}))
    return section


def apply_adapters(config: TrainConfig, model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Freeze the base and apply every tuning of the run (new adapters); returns each part's parameters.

    Raises:
        ConfigError: a part cannot be applied to this model (naming the tuning and its section).
    """
    from pyft.peft.hybrid import apply_parts

    def applier(tuning: Tuning) -> Callable[[nn.Module], Any]:
        apply, section = _function(tuning.apply), section_config(config, tuning)
        if tuning.section == "lora" or not getattr(section, "modules_to_save", None):
            return lambda m: apply(m, section)

        def apply_with_saved_modules(m: nn.Module) -> None:  # LoRA wraps its own modules_to_save
            from pyft.peft.saved_modules import apply_saved_modules

            apply(m, section)
            apply_saved_modules(m, section.modules_to_save)

        return apply_with_saved_modules

    try:
        return apply_parts(model, [(t.name, applier(t)) for t in config.tunings])
    except ValueError as e:
        raise ConfigError(f"tuning: {e}") from None


def continue_adapter(config: TrainConfig, model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Load ``config.adapter`` trainable, after checking it is the kind (or hybrid) the run trains."""
    from pyft.hub import resolve_model
    from pyft.io.files import read_json_object
    from pyft.peft import load_adapter
    from pyft.peft.adapter_io import CONFIG_NAME
    from pyft.peft.hybrid import is_hybrid_dir, read_hybrid_parts

    adapter_dir = Path(resolve_model(config.adapter, kind="adapter"))
    parts = read_hybrid_parts(adapter_dir) if is_hybrid_dir(adapter_dir) else [None]
    found = []
    for part in parts:
        path = adapter_dir / part / CONFIG_NAME if part else adapter_dir / CONFIG_NAME
        found.append(read_json_object(path).get("peft_type") if path.is_file() else None)
    expected = [t.peft_type for t in config.tunings]
    if sorted(map(str, found)) != sorted(map(str, expected)):
        raise ConfigError(f"adapter: {adapter_dir} holds {' + '.join(map(str, found))} adapter(s) but tuning "
                          f"{'/'.join(config.tuning_parts)} trains {' + '.join(map(str, expected))}")
    load_adapter(model, adapter_dir, trainable=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if len(config.tunings) == 1:
        return {config.tunings[0].name: trainable}
    return {"all": trainable}  # a continued hybrid trains all its parts (config: no stages with adapter)


def save_adapters(config: TrainConfig, model: nn.Module, dest: Path, *, base_model_name_or_path: str,
                  task_type: str, revision: str | None) -> None:
    """Write the run's adapters to ``dest`` (replaced atomically): one adapter in its own format, or a
    hybrid (one subdirectory per part and ``pyft_hybrid.json``, see :mod:`pyft.peft.hybrid`)."""
    from pyft._atomic import atomic_directory
    from pyft.peft.hybrid import write_hybrid_file

    tunings = config.tunings
    kw = {"base_model_name_or_path": base_model_name_or_path, "task_type": task_type, "revision": revision}

    def save_part(t: Tuning, part_dir: Path) -> None:
        _function(t.save)(model, part_dir, overwrite=False, **kw)
        saved_modules = getattr(section_config(config, t), "modules_to_save", None)
        if t.section != "lora" and saved_modules:  # LoRA saves its own modules_to_save
            from pyft.peft.saved_modules import add_saved_modules

            add_saved_modules(part_dir, model, saved_modules)

    with atomic_directory(dest, overwrite=True) as tmp:
        if len(tunings) == 1:
            save_part(tunings[0], Path(tmp) / "part")
            for f in (Path(tmp) / "part").iterdir():
                f.rename(Path(tmp) / f.name)
            (Path(tmp) / "part").rmdir()
            return
        for t in tunings:
            save_part(t, Path(tmp) / t.name)
        write_hybrid_file(tmp, [t.name for t in tunings])


def stage_frozen(config: TrainConfig, owned: dict[str, list[nn.Parameter]], step: int) -> list[nn.Parameter]:
    """The parameters staged training holds still at optimizer step ``step`` (0-based): those of the
    parts outside the current stage. Empty without ``stages``."""
    stage = config.stage_at(step)
    if stage is None:
        return []
    return [p for name, params in owned.items() if name not in stage.train for p in params]
