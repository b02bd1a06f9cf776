"""``pyft eval --harness``: hand a model (base + adapter, or a merged directory) to EleutherAI's
lm-evaluation-harness through its transformers model class. An optional tool, not a dependency: a clear
error says how to install it when it is absent."""

from __future__ import annotations

import os
from typing import Any

from pyft.errors import ConfigError

PathLike = str | os.PathLike[str]


def harness_model_args(model: PathLike, adapter: PathLike | None = None, dtype: str = "auto") -> str:
    """The ``--model_args`` string of lm_eval's ``hf`` model for ``model`` (+ PEFT ``adapter``)."""
    parts = [f"pretrained={os.fspath(model)}", f"dtype={dtype}"]
    if adapter is not None:
        parts.append(f"peft={os.fspath(adapter)}")
    return ",".join(parts)


def run_harness(model: PathLike, tasks: str, *, adapter: PathLike | None = None, batch_size: int = 8,
                device: str | None = None, dtype: str = "auto") -> Any:
    """Run lm-evaluation-harness ``tasks`` (comma-separated) on the model; return its results table.

    Raises:
        ConfigError: lm_eval is not installed, or no task is given.
    """
    try:
        import lm_eval  # type: ignore[import-not-found]
        from lm_eval.utils import make_table  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError("--harness needs EleutherAI's lm-evaluation-harness: pip install lm-eval "
                          "(it evaluates the model through transformers; pyft only hands it over)") from None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("--harness: no task names")
    results = lm_eval.simple_evaluate(model="hf", model_args=harness_model_args(model, adapter, dtype),
                                      tasks=names, batch_size=batch_size, device=device or "cpu")
    return make_table(results)
