"""Curves from ``metrics.jsonl`` as PNGs: losses (train per step, eval at each evaluation) and, for
alignment runs, the reward margin and preference accuracy."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_losses(metrics_path: str | os.PathLike[str], png_path: str | os.PathLike[str]) -> Path:
    """Draw train and eval loss against the optimizer step into ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss (nats)")
    ax.set_title("pyft training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out)
    plt.close(fig)
    return out


#: (margin, accuracy) metric names per objective family: DPO-style and the reward model's.
REWARD_KEYS = (("rewards/margins", "rewards/accuracies"), ("margin", "accuracy"))


def plot_rewards(metrics_path: str | os.PathLike[str], png_path: str | os.PathLike[str]) -> Path | None:
    """Draw the reward margin and accuracy (train and eval) against the optimizer step into
    ``png_path``; returns None (and writes nothing) when the run logged neither."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = next(((m, a) for m, a in REWARD_KEYS if any(m in r or f"eval_{m}" in r for r in rows)), None)
    if keys is None:
        return None
    panels = [(key, label) for key, label in zip(keys, ("reward margin (chosen - rejected)", "preference accuracy"))
              if any(key in r or f"eval_{key}" in r for r in rows)]  # KTO logs no accuracy
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=110, squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        train = [(r["step"], r[key]) for r in rows if key in r]
        evals = [(r["step"], r[f"eval_{key}"]) for r in rows if f"eval_{key}" in r]
        if train:
            ax.plot(*zip(*train), label=f"train {key}", linewidth=1.2)
        if evals:
            ax.plot(*zip(*evals), "o-", label=f"eval {key}", linewidth=1.5)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("pyft alignment")
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out)
    plt.close(fig)
    return out
