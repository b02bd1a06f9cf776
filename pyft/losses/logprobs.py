"""Per-token log-probabilities of chosen tokens, computed in chunks over the output layer.

Labels follow the transformers convention (``labels[r, t]`` is the token at position ``t``, predicted
from positions ``< t``; ``-100`` marks positions without a target). Only target positions go
through the output layer, ``chunk_tokens`` rows at a time, and each chunk's float32 logits are
recomputed in backward instead of kept, so the ``[batch, seq, vocab]`` logits never exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from pyft.losses.sft import IGNORE_INDEX, chunk_rows


@dataclass
class TokenLogps:
    """Per-position results, each ``[R, T-1]`` float32, aligned with ``labels[:, 1:]`` (0 where no target).

    Attributes:
        logps: ``log p(label)`` (differentiable).
        mean_logits: the mean over the vocabulary of the logits (no gradient; TRL's ``logits/*``).
        entropy: the entropy of the next-token distribution in nats (no gradient).
        top1: 1.0 where the label is the most likely token (no gradient).

    The last three are None when computed with ``stats=False``.
    """

    logps: torch.Tensor
    mean_logits: torch.Tensor | None
    entropy: torch.Tensor | None
    top1: torch.Tensor | None


def _chunk_stats(head: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, t: torch.Tensor,
                 stats: bool = True) -> tuple[torch.Tensor, ...]:
    logits = head(h).float()
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, t[:, None])[:, 0]
    if not stats:
        return (logp,)
    with torch.no_grad():
        mean_logits = logits.mean(-1)
        plogp = logp_all.exp().mul_(logp_all)  # in place: one [n, V] temporary, not two
        entropy = -plogp.sum(-1)
        top1 = (logits.argmax(-1) == t).float()
    return logp, mean_logits, entropy, top1


def token_logps(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk_tokens: int = 4096,
    stats: bool = True,
) -> TokenLogps:
    """Log-probabilities of the labels at every target position.

    Args:
        hidden: final hidden states ``[R, T, H]`` (any float dtype).
        labels: ``[R, T]`` int64, ``-100`` where there is no target.
        head: the output layer, ``[N, H] -> [N, V]`` logits.
        chunk_tokens: target positions projected at once (memory ``chunk_tokens × V × 4`` bytes), at
            most; see :func:`pyft.losses.sft.chunk_rows`.
        stats: also compute ``mean_logits``, ``entropy`` and ``top1`` (metrics). Reference passes
            skip them: they cost several passes over each chunk's ``[n, V]`` logits.

    Returns:
        :class:`TokenLogps` with ``[R, T-1]`` float32 tensors.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]  # [N, H]
    t = targets[keep]  # [N]
    parts: list[tuple[torch.Tensor, ...]] = []
    chunk_tokens = chunk_rows(head, chunk_tokens)
    for start in range(0, h.shape[0], chunk_tokens):
        args = (h[start : start + chunk_tokens], t[start : start + chunk_tokens], stats)
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_stats, head, *args, use_reentrant=False))
        else:
            parts.append(_chunk_stats(head, *args))
    out: list[torch.Tensor | None] = [None] * 4
    for i in range(4 if stats else 1):
        flat = torch.cat([p[i] for p in parts]) if parts else hidden.new_zeros(0, dtype=torch.float32)
        # masked_scatter keeps an all-masked batch connected to the graph (a zero with a gradient path).
        out[i] = torch.zeros(keep.shape, dtype=torch.float32, device=hidden.device).masked_scatter(keep, flat)
    return TokenLogps(*out)


def sum_by_sequence(values: torch.Tensor, seq_ids: torch.Tensor, mask: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """Sum ``values`` over the positions of each sequence where ``mask`` holds.

    Args:
        values: ``[R, T-1]`` per-position values (e.g. :attr:`TokenLogps.logps`).
        seq_ids: ``[R, T-1]`` int64, the sequence each position's target belongs to (``-1`` none).
        mask: ``[R, T-1]`` bool, the positions to include.
        n_seqs: number of sequences.

    Returns:
        ``[n_seqs]`` float32 sums (differentiable in ``values``).
    """
    keep = mask & (seq_ids >= 0)
    out = torch.zeros(n_seqs, dtype=values.dtype, device=values.device)
    return out.index_add(0, seq_ids[keep], values[keep])
