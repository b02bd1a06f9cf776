"""Preference objectives as pure functions of per-sequence log-probabilities (as TRL 1.16 defines them).

Every function takes float tensors of shape ``[B]`` (one value per sequence or pair) and returns
``(losses, metrics)``: ``losses [B]`` is the per-example loss (the objective is its mean over the
batch) and ``metrics`` holds per-example, detached tensors under TRL's metric names.

Notation (spec ``alignment-losses.md``): ``logp_c``/``logp_r`` are the policy's log-probs of the
chosen/rejected completions — summed over completion tokens for DPO/KTO and CPO ``sigmoid``/``hinge``,
averaged per token for ORPO and CPO ``ipo``/``simpo`` — and ``ref_c``/``ref_r`` the reference
model's. Log-ratios ``lr = logp − ref``; ``σ`` is the logistic function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: The DPO loss types (``loss_type`` of TRL's ``DPOConfig``).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
#: DPO's f-divergences (``f_divergence_type``).
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
#: KTO loss types.
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
#: CPO loss types (SimPO is ``simpo``).
CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")

Metrics = dict[str, torch.Tensor]


def _f_divergence_scores(logratios: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """The score ``s(lr)`` of an f-divergence (reverse KL: ``s = lr``)."""
    if kind == "reverse_kl":
        return logratios
    if kind == "forward_kl":
        return 1 - torch.exp(-logratios)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if kind == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:  # the limit is reverse KL
            return logratios
        clamp_max = {torch.float16: 11.0}.get(logratios.dtype, 80.0)
        t = torch.clamp(((alpha - 1.0) * logratios).float(), max=clamp_max)
        return (torch.exp(t) - 1.0).to(logratios.dtype) / (alpha - 1.0)
    raise ValueError(f"unknown f-divergence {kind!r} (expected one of {', '.join(F_DIVERGENCES)})")


def _smoothed_sigmoid(x: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """``−logσ(βx)(1−ε) − logσ(−βx)ε`` (the conservative, label-smoothed sigmoid loss)."""
    return -F.logsigmoid(beta * x) * (1 - eps) - F.logsigmoid(-beta * x) * eps


def dpo_loss(
    logp_c: torch.Tensor,
    logp_r: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 1.0,
    len_c: torch.Tensor | None = None,
    len_r: torch.Tensor | None = None,
    sft_nll: torch.Tensor | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, Metrics]:
    """Direct Preference Optimization and its variants (TRL ``DPOTrainer``).

    Args:
        logp_c, logp_r: policy log-probs of the chosen/rejected completions, summed over tokens, ``[B]``.
        ref_c, ref_r: the same under the reference model (no gradient), ``[B]``.
        beta: the KL-penalty strength β (IPO's τ).
        loss_type: one of :data:`DPO_LOSS_TYPES`, or several, which are added (MPO), each times its
            weight in ``loss_weights`` (default 1.0 each).
        label_smoothing: ε of ``robust`` (rDPO), ``exo_pair``, ``aot``/``aot_unpaired``. TRL 1.x ignores it
            for ``sigmoid``; here ``sigmoid`` with ε > 0 is the conservative cDPO loss
            ``−(1−ε)logσ(βΔ) − ε logσ(−βΔ)`` that TRL up to 0.24 computed.
        f_divergence: one of :data:`F_DIVERGENCES`; ``f_alpha`` is α of ``alpha_divergence``.
        len_c, len_r: completion token counts ``[B]`` (needed by ``ipo`` and ``sigmoid_norm``).
        sft_nll: the mean NLL per chosen completion token of the batch, a scalar (needed by ``sft``).
        discopop_tau: τ of ``discopop``.

    Returns:
        ``losses [B]`` and metrics ``rewards/chosen`` (β·lr_c), ``rewards/rejected``,
        ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} values for {len(types)} loss types")
    lr_c, lr_r = logp_c - ref_c, logp_r - ref_r
    s_c = _f_divergence_scores(lr_c, f_divergence, f_alpha)
    s_r = _f_divergence_scores(lr_r, f_divergence, f_alpha)
    delta = s_c - s_r
    eps = label_smoothing
    total = torch.zeros_like(delta)
    for kind, weight in zip(types, weights):
        if kind == "sigmoid":
            per_pair = _smoothed_sigmoid(delta, beta, eps) if eps else -F.logsigmoid(beta * delta)
        elif kind == "hinge":
            per_pair = torch.relu(1 - beta * delta)
        elif kind in ("ipo", "sigmoid_norm"):
            if len_c is None or len_r is None:
                raise ValueError(f"loss type {kind!r} needs the completion lengths len_c and len_r")
            d = s_c / len_c.clamp(min=1.0) - s_r / len_r.clamp(min=1.0)
            per_pair = (d - 1 / (2 * beta)) ** 2 if kind == "ipo" else -F.logsigmoid(beta * d)
        elif kind == "exo_pair":
            if not 0 < eps < 1:
                raise ValueError("loss type 'exo_pair' needs 0 < label_smoothing < 1")
            e = torch.tensor(eps, device=delta.device, dtype=delta.dtype)
            per_pair = (torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - torch.log1p(-e))
                        + torch.sigmoid(-beta * delta) * (F.logsigmoid(-beta * delta) - torch.log(e)))
        elif kind == "nca_pair":
            rc, rr = beta * lr_c, beta * lr_r
            per_pair = -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)
        elif kind == "robust":
            if not 0 <= eps < 0.5:
                raise ValueError("loss type 'robust' needs 0 <= label_smoothing < 0.5")
            per_pair = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
        elif kind == "bco_pair":
            per_pair = -F.logsigmoid(beta * lr_c) - F.logsigmoid(-beta * lr_r)
        elif kind == "sppo_hard":
            per_pair = (lr_c - 0.5 / beta) ** 2 + (lr_r + 0.5 / beta) ** 2
        elif kind == "aot":
            d = torch.sort(logp_c - logp_r, dim=0)[0] - torch.sort(ref_c - ref_r, dim=0)[0]
            per_pair = _smoothed_sigmoid(d, beta, eps)
        elif kind == "aot_unpaired":
            d = torch.sort(lr_c, dim=0)[0] - torch.sort(lr_r, dim=0)[0]
            per_pair = _smoothed_sigmoid(d, beta, eps)
        elif kind == "apo_zero":
            per_pair = (1 - torch.sigmoid(beta * lr_c)) + torch.sigmoid(beta * lr_r)
        elif kind == "apo_down":
            per_pair = torch.sigmoid(beta * lr_c) + (1 - torch.sigmoid(beta * (lr_c - lr_r)))
        elif kind == "discopop":
            logits = beta * delta
            mix = torch.sigmoid(logits / discopop_tau)
            per_pair = -F.logsigmoid(logits) * (1 - mix) + torch.exp(-logits) * mix
        elif kind == "sft":
            if sft_nll is None:
                raise ValueError("loss type 'sft' needs sft_nll (mean NLL per chosen completion token)")
            per_pair = sft_nll.expand_as(delta)
        else:
            raise ValueError(f"unknown DPO loss type {kind!r} (expected one of {', '.join(DPO_LOSS_TYPES)})")
        total = total + per_pair * weight
    return total, reward_metrics(beta * lr_c.detach(), beta * lr_r.detach(), logp_c, logp_r)


def reward_metrics(rewards_c: torch.Tensor, rewards_r: torch.Tensor, logp_c: torch.Tensor,
                   logp_r: torch.Tensor) -> Metrics:
    """Per-pair ``rewards/*`` and ``logps/*`` metrics (detached) under TRL's names."""
    rewards_c, rewards_r = rewards_c.detach(), rewards_r.detach()
    return {
        "rewards/chosen": rewards_c,
        "rewards/rejected": rewards_r,
        "rewards/accuracies": (rewards_c > rewards_r).float(),
        "rewards/margins": rewards_c - rewards_r,
        "logps/chosen": logp_c.detach(),
        "logps/rejected": logp_r.detach(),
    }


def kto_kl_estimate(kl_logp: torch.Tensor, kl_ref: torch.Tensor) -> torch.Tensor:
    """KTO's reference point from mismatched (prompt, completion) pairs: ``mean(logp − ref)``,
    detached. Average it over data-parallel ranks, then clamp at 0 (:func:`kto_loss` clamps)."""
    return (kl_logp - kl_ref).mean().detach()


def kto_loss(
    logp: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> tuple[torch.Tensor, Metrics]:
    """Kahneman-Tversky Optimization on unpaired examples (TRL ``KTOTrainer``).

    Args:
        logp, ref: policy/reference log-probs of each completion, summed over tokens, ``[B]``.
        desirable: ``[B]`` bool, True for desirable (thumbs-up) examples.
        kl: the batch KL estimate (:func:`kto_kl_estimate`, averaged over ranks); clamped at 0.
        beta: β. ``desirable_weight``/``undesirable_weight`` weight the two kinds (set them so
            ``desirable_weight · n_desirable ≈ undesirable_weight · n_undesirable`` for imbalanced data).
        loss_type: ``kto`` or ``apo_zero_unpaired`` (no KL term).

    Returns:
        ``losses [B]`` (each example's weighted loss; the objective is their mean) and metrics:
        ``rewards [B]`` (β·lr), ``logps [B]``, ``desirable [B]`` and ``kl`` (scalar), which the
        caller reduces per kind into ``rewards/chosen``, ``rewards/rejected``, ``logps/*``.
    """
    if loss_type not in KTO_LOSS_TYPES:
        raise ValueError(f"unknown KTO loss type {loss_type!r} (expected one of {', '.join(KTO_LOSS_TYPES)})")
    kl_t = torch.as_tensor(kl, dtype=logp.dtype, device=logp.device).detach().clamp(min=0)
    lr = logp - ref
    desirable = desirable.to(torch.bool)
    if loss_type == "kto":
        chosen = 1 - torch.sigmoid(beta * (lr - kl_t))
        rejected = 1 - torch.sigmoid(beta * (kl_t - lr))
    else:
        chosen = 1 - torch.sigmoid(beta * lr)
        rejected = torch.sigmoid(beta * lr)
    losses = torch.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)
    metrics = {"rewards": (beta * lr).detach(), "logps": logp.detach(), "desirable": desirable,
               "kl": kl_t if loss_type == "kto" else torch.zeros((), dtype=logp.dtype, device=logp.device)}
    return losses, metrics


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x < 0``, accurate on both sides of ``−ln 2``."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(avg_logp_c: torch.Tensor, avg_logp_r: torch.Tensor, *, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """ORPO's odds-ratio term (TRL ``ORPOTrainer``); the full objective adds the chosen NLL.

    Args:
        avg_logp_c, avg_logp_r: policy log-probs averaged per completion token, ``[B]``.
        beta: λ, the weight of the odds-ratio term.

    Returns:
        ``losses [B] = −β·logσ(log_odds)`` with ``log_odds = (c − r) − (log(1−eᶜ) − log(1−eʳ))``, and
        the reward metrics (rewards = β·avg logp) plus ``log_odds_ratio`` (logσ(log_odds)) and
        ``log_odds_chosen`` (log_odds), per pair.
    """
    c, r = avg_logp_c.float(), avg_logp_r.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    metrics = reward_metrics(beta * c, beta * r, c, r)
    metrics["log_odds_ratio"] = ratio.detach()
    metrics["log_odds_chosen"] = log_odds.detach()
    return -beta * ratio, metrics


def cpo_loss(
    logp_c: torch.Tensor,
    logp_r: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    alpha: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """CPO / SimPO / AlphaPO preference term (TRL ``CPOTrainer``), with no reference model; the
    full objective adds ``cpo_alpha ×`` the chosen NLL.

    Args:
        logp_c, logp_r: policy log-probs, ``[B]``: averaged per token for ``ipo`` and ``simpo``,
            summed otherwise.
        beta: β. ``loss_type``: one of :data:`CPO_LOSS_TYPES`.
        label_smoothing: ε of the ``sigmoid``/``simpo`` losses.
        simpo_gamma: SimPO's target margin γ (the loss is ``−logσ(β(c − r) − γ)`` for ε = 0).
        alpha: AlphaPO's α; when non-zero each log-prob becomes the reward ``(1 − p^(−α)) / α``.

    Returns:
        ``losses [B]`` and the reward metrics (rewards = β·logp, or β·AlphaPO reward).
    """
    if alpha != 0.0:
        reward_c = (1 - torch.exp(logp_c).pow(-alpha)) / alpha
        reward_r = (1 - torch.exp(logp_r).pow(-alpha)) / alpha
    else:
        reward_c, reward_r = logp_c, logp_r
    logits = reward_c - reward_r
    if loss_type == "simpo":
        losses = _smoothed_sigmoid(logits - simpo_gamma / beta, beta, label_smoothing)
    elif loss_type == "sigmoid":
        losses = _smoothed_sigmoid(logits, beta, label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown CPO loss type {loss_type!r} (expected one of {', '.join(CPO_LOSS_TYPES)})")
    return losses, reward_metrics(beta * reward_c, beta * reward_r, logp_c, logp_r)


def reward_model_loss(
    rewards_c: torch.Tensor,
    rewards_r: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Bradley-Terry loss of a scalar reward model (TRL ``RewardTrainer``).

    Args:
        rewards_c, rewards_r: the model's scalar rewards for the chosen/rejected sequences, ``[B]``.
        margin: optional per-pair margins ``[B]`` (``−logσ(r_c − r_r − m)``).
        center_rewards_coefficient: optional weight of ``(r_c + r_r)²`` (keeps rewards centred at 0).

    Returns:
        ``losses [B]`` (their mean is TRL's loss) and per-pair metrics ``accuracy``, ``margin``
        and ``rewards/chosen``/``rewards/rejected``.
    """
    diff = rewards_c - rewards_r
    losses = -F.logsigmoid(diff if margin is None else diff - margin)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (rewards_c + rewards_r) ** 2
    d = diff.detach()
    return losses, {"accuracy": (d > 0).float(), "margin": d, "rewards/chosen": rewards_c.detach(),
                    "rewards/rejected": rewards_r.detach()}
