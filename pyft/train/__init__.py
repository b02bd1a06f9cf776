"""Training: one loop for LoRA-family and full fine-tuning (see :mod:`pyft.train.loop`).

- :func:`load_config` / :class:`TrainConfig` — a YAML config with ``key=value`` overrides;
- :func:`train` — run a job from a config; writes the adapter (or model), metrics and checkpoints.
"""

from pyft.train.config import TrainConfig, load_config
from pyft.train.loop import Trainer, TrainResult
from pyft.train.run import build_trainer, train

__all__ = ["TrainConfig", "load_config", "train", "build_trainer", "Trainer", "TrainResult"]
