"""Forward passes the objectives share: final hidden states, the SFT loss of a micro-batch, and the
log-probabilities of (prompt, completion) sequences under a causal LM.

Only positions that are scored go through the output layer, in chunks (:mod:`pyft.losses.sft`,
:mod:`pyft.losses.logprobs`): full ``[tokens, vocab]`` logits are never built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pyft.data.sequences import model_inputs
from pyft.losses.logprobs import TokenLogps, sum_by_sequence, token_logps
from pyft.losses.sft import IGNORE_INDEX, token_nll_kl_sum, token_nll_sum

#: ``inputs -> (hidden, head)`` of a reference model, without gradient (as :func:`forward_hidden`).
ReferenceForward = Callable[[dict[str, Any]], tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]


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


def sft_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed next-token loss of one SFT micro-batch (float32 scalar) over its target tokens.

    Runs the decoder, then only the predicted positions through the output layer (see
    :func:`pyft.losses.token_nll_sum`); ``label_smoothing`` is ε of the smoothed cross-entropy.
    """
    hidden, head = forward_hidden(model, _sft_inputs(batch))
    if label_smoothing:
        return token_nll_sum(hidden, batch["labels"], head, chunk_tokens, label_smoothing=label_smoothing)
    return token_nll_sum(hidden, batch["labels"], head, chunk_tokens)


def sft_loss_kl_sum(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int, label_smoothing: float,
                    reference: ReferenceForward) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll, kl)`` of one SFT micro-batch, summed over its target tokens (float32 scalars).

    ``nll`` is :func:`sft_loss_sum`'s; ``kl`` sums ``KL(p_model ‖ p_reference)`` over the vocabulary
    at the same tokens (:func:`pyft.losses.sft.token_nll_kl_sum`). ``reference`` runs first, on the
    same inputs, before the model's graph exists (a reference may swap the model's own tensors, as
    :class:`pyft.align.reference.StartingAdapterReference` does).
    """
    inputs = _sft_inputs(batch)
    ref_hidden, ref_head = reference(inputs)
    hidden, head = forward_hidden(model, inputs)
    return token_nll_kl_sum(hidden, batch["labels"], head, ref_hidden, ref_head, chunk_tokens, label_smoothing)


def _sft_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}


@dataclass
class SequenceLogps:
    """Log-probs of the sequences of a batch built by :func:`pyft.data.sequences.build_sequence_batch`.

    Attributes:
        logps: ``[S]`` float32, completion log-probs summed over each sequence's completion tokens.
        scored: ``[S]`` float32, how many completion tokens were scored (all but a sequence's first token).
        tokens: per-position results (``[R, T-1]``), aligned with ``targets``.
        targets: ``[R, T-1]`` bool, the positions scored (completion tokens, plus what ``extra`` added).
        completion: ``[R, T-1]`` bool, scored completion positions.
        seq_ids: ``[R, T-1]`` int64, the sequence of each position (``-1`` padding).
    """

    logps: torch.Tensor
    scored: torch.Tensor
    tokens: TokenLogps
    targets: torch.Tensor
    completion: torch.Tensor
    seq_ids: torch.Tensor

    def sums(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sequence sums ``[S]`` of a ``[R, T-1]`` tensor over completion positions (or ``mask``)."""
        return sum_by_sequence(values, self.seq_ids, self.completion if mask is None else mask, len(self.logps))


def target_masks(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(completion, whole)`` ``[R, T]`` bool masks of positions that can be targets: completion
    tokens, and every token of a sequence; both without each sequence's first token."""
    not_first = (batch["position_ids"] > 0) & (batch["seq_ids"] >= 0)
    return batch["completion"] & not_first, not_first


def sequence_logps(model: nn.Module, batch: dict[str, Any], chunk_tokens: int = 4096,
                   extra: torch.Tensor | None = None, stats: bool = True) -> SequenceLogps:
    """Run ``model`` on ``batch`` and score its completion tokens (plus the ``extra`` ``[R, T]`` positions).

    Only scored positions go through the output layer, in chunks (:func:`pyft.losses.token_logps`).
    Gradients flow when grad mode is on. ``stats=False`` skips the per-token metrics (reference
    passes need only the log-probs).
    """
    completion, _ = target_masks(batch)
    targets = completion if extra is None else completion | extra
    labels = batch["input_ids"].masked_fill(~targets, IGNORE_INDEX)
    hidden, head = forward_hidden(model, model_inputs(batch))
    tokens = token_logps(hidden, labels, head, chunk_tokens, stats=stats)
    seq_ids = batch["seq_ids"][:, 1:]
    comp = completion[:, 1:]
    n = batch["n_seqs"]
    logps = sum_by_sequence(tokens.logps, seq_ids, comp, n)
    scored = sum_by_sequence(comp.float(), seq_ids, comp, n)
    return SequenceLogps(logps, scored, tokens, targets[:, 1:], comp, seq_ids)
