"""What a training step optimises: the interface between the loop and a method, and SFT's objective.

The loop takes ``batch_size × grad_accum`` rows per step (on every rank), collates micro-batches
with :meth:`Objective.collate`, sums :meth:`Objective.counts` over the whole step (all micro-batches,
all ranks) and back-propagates :meth:`Objective.loss` of each micro-batch, which is already divided
by those totals, so accumulation equals one big batch. Metrics come back as sums and are reduced
by :meth:`Objective.finalize` after the step's sums are added over ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pyft.data import PackedCollator, PackedRowsCollator
from pyft.losses import count_targets, token_nll_sum


class Objective:
    """Base class of training objectives. Subclasses define the four methods below."""

    #: Data kinds (``PreparedDataset.kind``) the objective trains on.
    data_kinds: tuple[str, ...] = ()
    #: Set by the loop: True during training steps, False during evaluation.
    training: bool = True

    def collate(self, items: Sequence[dict[str, np.ndarray]], rows: Sequence[int], split: str) -> dict[str, Any]:
        """Build one micro-batch from dataset items (``rows`` are their indices in ``split``)."""
        raise NotImplementedError

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        """Normalisers of one micro-batch (e.g. target tokens, pairs), summed over the step; ``tokens``
        (the tokens trained on) also gives the step's tokens/s."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any], totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the step loss (a float32 scalar, divided by ``totals``) and
        its metric sums."""
        raise NotImplementedError

    def finalize(self, sums: dict[str, float], totals: dict[str, float]) -> dict[str, float]:
        """Metrics to log from the step's (or evaluation's) summed metrics; must include ``loss``."""
        raise NotImplementedError

    def progress(self, record: dict[str, Any]) -> str:
        """Extra text for the progress line (e.g. reward margin and accuracy)."""
        return ""


def forward_hidden(model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """``(hidden, head)``: the decoder's final hidden states ``[R, T, H]`` and the output layer.

    Models whose logits need post-processing (soft-capping, scaling) return their logits with an
    identity head instead, so callers can always apply ``head`` to rows of ``hidden``.
    """
    cfg = getattr(model, "config", None)
    plain_head = not getattr(cfg, "final_logit_softcapping", None) and getattr(cfg, "logit_scale", None) in (None, 1.0)
    if plain_head and hasattr(model, "get_decoder"):
        hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
        return hidden, model.get_output_embeddings()
    return model(**inputs, use_cache=False).logits, (lambda h: h)


def batch_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int) -> torch.Tensor:
    """Summed next-token loss of one SFT micro-batch (float32 scalar).

    Runs the decoder and only the predicted positions through the output layer (see
    :func:`pyft.losses.token_nll_sum`).
    """
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    hidden, head = forward_hidden(model, inputs)
    return token_nll_sum(hidden, batch["labels"], head, chunk_tokens)


class SftObjective(Objective):
    """Supervised fine-tuning: mean next-token cross-entropy over the step's target tokens."""

    data_kinds = ("chat", "text")

    def __init__(self, model: nn.Module, dataset: Any, pad_token_id: int, chunk_tokens: int) -> None:
        attn = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") or "sdpa"
        self.collator = PackedCollator() if "flash" in attn else PackedRowsCollator(pad_token_id)
        self.chunk_tokens = chunk_tokens

    def collate(self, items, rows, split):
        return self.collator(items)

    def counts(self, batch):
        return {"tokens": count_targets(batch["labels"])}

    def loss(self, model, batch, totals):
        loss = batch_loss_sum(model, batch, self.chunk_tokens) / max(totals["tokens"], 1)
        return loss, {"loss": float(loss.detach())}

    def finalize(self, sums, totals):
        return {"loss": sums["loss"]}
