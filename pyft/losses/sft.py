"""Next-token cross-entropy for supervised fine-tuning, computed without full logits, and the
token-level KL to a reference model that ``train.kl_to_base`` adds to it.

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


def token_nll_kl_sum(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    ref_hidden: torch.Tensor,
    ref_head: Callable[[torch.Tensor], torch.Tensor],
    chunk_tokens: int = 4096,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll_sum` and, at the same predicted positions, the summed KL to a reference model.

    At each predicted token the KL is taken over the whole vocabulary,
    ``KL(p_θ ‖ p_ref) = Σ_v p_θ(v)·(log p_θ(v) − log p_ref(v))``, with ``p_θ = softmax(head(hidden))``
    and ``p_ref = softmax(ref_head(ref_hidden))``; no gradient reaches the reference. It does not
    depend on ``label_smoothing`` (it compares two models' predictions, not a model with the labels).

    Both terms come from the same chunks of ``chunk_tokens`` positions: a chunk's policy logits are
    computed once for both, its reference logits without gradient, and the whole chunk is recomputed
    in backward, so neither model's ``[tokens, vocab]`` logits ever exist whole. A chunk keeps three
    ``[n, V]`` float32 tensors for backward (log-probs, probabilities, log-ratio), two more than the
    cross-entropy alone.

    Args:
        hidden, labels, head, chunk_tokens, label_smoothing: as :func:`token_nll_sum`.
        ref_hidden: the reference's final hidden states on the same inputs, ``[B, T, H_ref]`` (or its
            logits when ``ref_head`` is the identity); detached here.
        ref_head: the reference's output layer, ``[N, H_ref] -> [N, V]`` logits, called without
            gradient (once per chunk, and again when backward recomputes the chunk).

    Returns:
        ``(nll, kl)``: float32 scalars (float64 for a float64 model) summed over the predicted tokens
        (divide both by the token count of the whole accumulated batch to get means).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]  # [N, H]
    h_ref = ref_hidden[:, :-1][keep].detach()  # [N, H_ref]
    t = targets[keep]  # [N]

    def chunk_terms(h_chunk: torch.Tensor, h_ref_chunk: torch.Tensor,
                    t_chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = F.log_softmax(_at_least_float32(head(h_chunk)), dim=-1)  # [n, V], shared by both terms
        # F.cross_entropy's own steps (log-softmax, then NLL plus the ε/V smoothing term) on logp.
        nll = F.nll_loss(logp, t_chunk, reduction="sum")
        if label_smoothing:
            nll = (1.0 - label_smoothing) * nll - (label_smoothing / logp.shape[-1]) * logp.sum()
        with torch.no_grad():
            ref_logp = F.log_softmax(_at_least_float32(ref_head(h_ref_chunk)), dim=-1)
        # log p_θ − log p_ref, written into the reference's buffer (no gradient of its own): one
        # [n, V] tensor fewer.
        log_ratio = ref_logp.neg_().add_(logp)
        return nll, (logp.exp() * log_ratio).sum()

    nll = kl = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    chunk_tokens = chunk_rows(head, chunk_tokens)
    for start in range(0, h.shape[0], chunk_tokens):
        args = (h[start : start + chunk_tokens], h_ref[start : start + chunk_tokens], t[start : start + chunk_tokens])
        if torch.is_grad_enabled() and h.requires_grad:
            # Recompute the chunk's logits (both models') in backward instead of keeping them.
            part = torch.utils.checkpoint.checkpoint(chunk_terms, *args, use_reentrant=False)
        else:
            part = chunk_terms(*args)
        nll, kl = nll + part[0], kl + part[1]
    return nll, kl


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 when it already is."""
    return x if x.dtype == torch.float64 else x.float()
