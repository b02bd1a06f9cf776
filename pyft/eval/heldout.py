"""Held-out loss and perplexity of a model on prepared data (``pyft data prepare`` output), computed by
the SFT objective the trainer evaluates with, so the numbers equal the training run's eval metrics."""

from __future__ import annotations

import os
from typing import Any

PathLike = str | os.PathLike[str]


def heldout_loss(model: Any, prepared: PathLike, *, split: str = "validation", batch_size: int = 8,
                 chunk_tokens: int = 1024) -> dict[str, float]:
    """Mean next-token NLL (nats per target token) and perplexity over a split of a prepared directory.

    Returns:
        ``{"loss", "ppl", "rows", "tokens"}``.

    Raises:
        DataError: the directory or split is missing or malformed.
    """
    import torch

    from pyft.data import load
    from pyft.objectives.sft import SftObjective

    ds = load(prepared, split)
    device = next(model.parameters()).device
    pad = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    objective = SftObjective(model, pad, chunk_tokens)
    objective.training = False
    batches = []  # as the trainer batches its evaluation (pyft.train.batches.collate_batches)
    for start in range(0, len(ds), batch_size):
        rows = list(range(start, min(start + batch_size, len(ds))))
        batch = objective.collate([ds[j] for j in rows], rows, split)
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    totals: dict[str, float] = {}
    for b in batches:
        for k, v in objective.counts(b).items():
            totals[k] = totals.get(k, 0) + v
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                _, part = objective.loss(model, b, totals)
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
    finally:
        model.train(was_training)
    out = objective.finalize(sums, totals)
    return {"loss": out["loss"], "ppl": out["ppl"], "rows": float(len(ds)), "tokens": float(totals.get("tokens", 0))}
