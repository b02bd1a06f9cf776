"""Next-token cross-entropy for supervised fine-tuning, computed without full logits.

Labels follow the transformers convention: ``labels[b, t]`` is the token at position ``t``
(not shifted); position ``t`` is predicted from positions ``< t``; ``-100`` marks positions
without loss. Only positions that carry loss go through the output layer, in chunks whose logits are
recomputed during backward, so the ``[batch, seq, vocab]`` float32 logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

IGNORE_INDEX = -100

#: Most bytes one chunk's float32 logits may take (the chunk shrinks for large vocabularies).
CHUNK_LOGITS_BYTES = 512 << 20


def chunk_rows(head: Callable[[torch.Tensor], torch.Tensor], chunk_tokens: int) -> int:
    """Rows per chunk: ``chunk_tokens``, fewer when ``chunk_tokens × V × 4`` bytes of logits would pass
    :data:`CHUNK_LOGITS_BYTES` (``V`` read from the head's weight when it has one)."""
    weight = getattr(head, "weight", None)
    vocab = int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 0
    if vocab:
        return max(1, min(chunk_tokens, CHUNK_LOGITS_BYTES // (vocab * 4)))
    return max(1, chunk_tokens)


def count_targets(labels: torch.Tensor) -> int:
    """Number of predicted tokens in ``labels`` (``[B, T]`` int64): non-ignored labels after the shift."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def token_nll_sum(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk_tokens: int = 4096,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sum over predicted tokens of ``-log p(label)``, optionally label-smoothed.

    With ``label_smoothing`` ε > 0 each token's loss is ``(1 - ε)·(-log p(label)) + ε·mean_v(-log p(v))``
    over the ``V`` vocabulary entries: the target is the mixture ``(1 - ε)·one_hot + ε/V`` (Szegedy
    et al. 2016, https://arxiv.org/abs/1512.00567), exactly ``F.cross_entropy(..., label_smoothing=ε,
    reduction="sum")`` over the non-ignored targets and so transformers' ``label_smoothing_factor``
    (its ``LabelSmoother``) times the token count. ε = 0 is the plain negative log-likelihood.

    Args:
        hidden: final hidden states ``[B, T, H]`` (any float dtype).
        labels: ``[B, T]`` int64, ``-100`` where there is no loss.
        head: the output layer, ``[N, H] -> [N, V]`` logits.
        chunk_tokens: rows of logits computed at once (memory ``chunk_tokens × V × 4`` bytes), at most;
            see :func:`chunk_rows`.
        label_smoothing: ε in ``[0, 1)``. Models whose logits are post-processed (soft-capping) pass an
            identity ``head`` and their final logits as ``hidden``: the smoothing then applies to those
            logits, as it does for the reference ``F.cross_entropy`` on ``model(...).logits``.

    Returns:
        A float32 scalar: the summed (smoothed) negative log-likelihood (divide by the token count of
        the whole accumulated batch to get the mean).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]  # [N, H]
    t = targets[keep]  # [N]

    def chunk_loss(h_chunk: torch.Tensor, t_chunk: torch.Tensor) -> torch.Tensor:
        # [n, V] float32 logits; ε = 0 is F.cross_entropy's default, the plain NLL path.
        return F.cross_entropy(head(h_chunk).float(), t_chunk, reduction="sum", label_smoothing=label_smoothing)

    total = hidden.new_zeros((), dtype=torch.float32)
    chunk_tokens = chunk_rows(head, chunk_tokens)
    for start in range(0, h.shape[0], chunk_tokens):
        args = (h[start : start + chunk_tokens], t[start : start + chunk_tokens])
        if torch.is_grad_enabled() and h.requires_grad:
            # Recompute the chunk's logits in backward instead of keeping them.
            total = total + torch.utils.checkpoint.checkpoint(chunk_loss, *args, use_reentrant=False)
        else:
            total = total + chunk_loss(*args)
    return total
