"""Training: one loop for LoRA-family and full fine-tuning (see :mod:`pyft.train.loop`).

- :func:`load_config` / :class:`TrainConfig` — a YAML config with ``key=value`` overrides;
- :func:`train` — run a job from a config; writes the adapter (or model), metrics and checkpoints.
"""

from typing import Any

from pyft.train.config import TrainConfig, load_config
from pyft.train.loop import Trainer, TrainResult

__all__ = ["TrainConfig", "load_config", "train", "build_trainer", "Trainer", "TrainResult"]


def __getattr__(name: str) -> Any:
    # `pyft.train.run` wires in `pyft.align`, whose modules import `pyft.train.config` and `pyft.train.objective`:
    # importing it eagerly here made `import pyft.align` (before `pyft.train`) a circular import.
    if name in ("train", "build_trainer"):
        from pyft.train import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
