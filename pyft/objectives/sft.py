"""Supervised fine-tuning's objective: mean next-token cross-entropy over the step's target tokens."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from pyft.data import PackedCollator, PackedRowsCollator
from pyft.losses import count_targets
from pyft.losses.forward import sft_loss_sum


class SftObjective:
    """SFT on chat or text data (an :class:`~pyft.objectives.Objective`).

    Rows are packed into micro-batches: as one flat sequence under FlashAttention (variable-length
    kernels), else as padded rows. The loss is the mean over the step's target tokens, with
    ``label_smoothing`` ε as ``torch.nn.functional.cross_entropy``'s during training steps;
evaluation reports the plain NLL and its perplexity, so eval curves compare across ε.
    """

    training = True

    def __init__(self, model: nn.Module, pad_token_id: int, chunk_tokens: int, label_smoothing: float = 0.0) -> None:
        attn = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") or "sdpa"
        self.collator = PackedCollator() if "flash" in attn else PackedRowsCollator(pad_token_id)
        self.chunk_tokens = chunk_tokens
        self.label_smoothing = label_smoothing

    def collate(self, items, rows, split):
        return self.collator(items)

    def counts(self, batch):
        return {"tokens": count_targets(batch["labels"])}

    def loss(self, model, batch, totals):
        smoothing = self.label_smoothing if self.training else 0.0  # evaluation reports the plain NLL
        loss = sft_loss_sum(model, batch, self.chunk_tokens, smoothing) / max(totals["tokens"], 1)
        return loss, {"loss": float(loss.detach())}

    def finalize(self, sums: dict[str, float], totals: dict[str, float]) -> dict[str, float]:
        out = {"loss": sums["loss"]}
        if not self.training:  # perplexity of the mean token NLL, capped against overflow
            out["ppl"] = math.exp(min(sums["loss"], 50.0))
        return out

    def progress(self, metrics: dict[str, Any]) -> str:
        return f"ppl {metrics['ppl']:.2f}" if "ppl" in metrics else ""
