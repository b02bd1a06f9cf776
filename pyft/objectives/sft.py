"""Supervised fine-tuning's objective: mean next-token cross-entropy over the step's target tokens,
plus, with ``train.kl_to_base``, a token-level KL to the starting model."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn

from pyft.data import PackedCollator, PackedRowsCollator
from pyft.losses import count_targets
from pyft.losses.forward import sft_loss_kl_sum, sft_loss_sum

if TYPE_CHECKING:
    from pyft.align.reference import Reference


class SftObjective:
    """SFT on chat or text data (an :class:`~pyft.objectives.Objective`).

    Rows are packed into micro-batches: as one flat sequence under FlashAttention (variable-length
    kernels), else as padded rows. The loss is the mean over the step's target tokens, with
    ``label_smoothing`` ε as ``torch.nn.functional.cross_entropy``'s during training steps;
    evaluation reports the plain NLL and its perplexity, so eval curves compare across ε.

    With ``kl_to_base`` β > 0 the loss is ``CE + β·KL``, where KL is the mean over the same target
    tokens of ``KL(p_model ‖ p_reference)`` over the whole vocabulary (the reference being the model
    training started from, see :class:`~pyft.align.reference.Reference`); it is logged as ``kl``
    (``eval_kl`` in evaluation), and ``loss`` stays the cross-entropy.

    Args:
        model: the model being trained (its attention implementation picks the collator).
        pad_token_id: padding id of the prepared data.
        chunk_tokens: target positions projected through the output layer at once.
        label_smoothing: ε of the training cross-entropy.
        kl_to_base: β, the weight of the KL term (0 = off: no reference pass).
        reference: the reference model; required when ``kl_to_base`` > 0.
    """

    training = True

    def __init__(self, model: nn.Module, pad_token_id: int, chunk_tokens: int, label_smoothing: float = 0.0,
                 kl_to_base: float = 0.0, reference: Reference | None = None) -> None:
        if kl_to_base and reference is None:
            raise ValueError("kl_to_base needs a reference model")
        attn = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") or "sdpa"
        self.collator = PackedCollator() if "flash" in attn else PackedRowsCollator(pad_token_id)
        self.chunk_tokens = chunk_tokens
        self.label_smoothing = label_smoothing
        self.kl_to_base = kl_to_base
        self.reference = reference

    def collate(self, items, rows, split):
        return self.collator(items)

    def counts(self, batch):
        return {"tokens": count_targets(batch["labels"])}

    def loss(self, model, batch, totals):
        smoothing = self.label_smoothing if self.training else 0.0  # evaluation reports the plain NLL
        tokens = max(totals["tokens"], 1)
        if not self.kl_to_base:
            loss = sft_loss_sum(model, batch, self.chunk_tokens, smoothing) / tokens
            return loss, {"loss": float(loss.detach())}
        reference = self.reference
        assert reference is not None

        def reference_forward(inputs):
            return reference.forward_hidden(model, inputs)

        nll, kl = sft_loss_kl_sum(model, batch, self.chunk_tokens, smoothing, reference_forward)
        nll, kl = nll / tokens, kl / tokens
        return nll + self.kl_to_base * kl, {"loss": float(nll.detach()), "kl": float(kl.detach())}

    def finalize(self, sums: dict[str, float], totals: dict[str, float]) -> dict[str, float]:
        out = {"loss": sums["loss"]}
        if "kl" in sums:
            out["kl"] = sums["kl"]
        if not self.training:  # perplexity of the mean token NLL, capped against overflow
            out["ppl"] = math.exp(min(sums["loss"], 50.0))
        return out

    def progress(self, metrics: dict[str, Any]) -> str:
        parts = [f"ppl {metrics['ppl']:.2f}"] if "ppl" in metrics else []
        if "kl" in metrics:
            parts.append(f"kl {metrics['kl']:.4f}")
        return "  ".join(parts)
