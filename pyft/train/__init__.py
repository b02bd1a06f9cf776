"""Training: one loop for every method and tuning (see :mod:`pyft.train.loop`).

- :func:`load_config` / :class:`TrainConfig` — a YAML config with ``key=value`` overrides;
- :func:`train` — run a job from a config; writes the adapter (or model), metrics and checkpoints;
- :func:`build_trainer` — the same run, set up but not started;
- :data:`METHODS` — the training methods (:mod:`pyft.train.methods`).
"""

from pyft.methods import METHODS, Method
from pyft.train.config import TrainConfig, load_config
from pyft.train.loop import Trainer, TrainResult
from pyft.train.run import build_trainer, train

__all__ = ["TrainConfig", "load_config", "train", "build_trainer", "Trainer", "TrainResult", "METHODS", "Method"]
