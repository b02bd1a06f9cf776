"""AdamW with decoupled weight decay (none on norms and biases) and warmup + decay schedules.

``train.optim`` picks the optimizer (transformers' ``optim`` names): ``adamw`` (torch's, fused on
CUDA; alias ``adamw_torch``), ``adamw_8bit`` (8-bit block-wise states), ``paged_adamw`` (float32
states in pinned CPU memory on CUDA; alias ``paged_adamw_32bit``) and ``paged_adamw_8bit``. See
:mod:`pyft.train.optim8bit`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyft.methods import OPTIMIZER_ALIASES, OPTIMIZERS


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, 1-D)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


#: ``train.optim`` values, and transformers' other spellings as aliases (named in :mod:`pyft.methods`).
ALIASES = OPTIMIZER_ALIASES


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, name: str = "adamw") -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS` or :data:`ALIASES`) over the trainable parameters.

    ``adamw`` is ``torch.optim.AdamW`` (fused on CUDA); the others are
    :class:`~pyft.train.optim8bit.AdamW8bit`, :class:`~pyft.train.optim8bit.PagedAdamW` and
    :class:`~pyft.train.optim8bit.PagedAdamW8bit`.
    """
    from pyft.train import optim8bit

    name = ALIASES.get(name, name)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "adamw":
        fused = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    cls = {"adamw_8bit": optim8bit.AdamW8bit, "paged_adamw": optim8bit.PagedAdamW,
           "paged_adamw_8bit": optim8bit.PagedAdamW8bit}[name]
    return cls(groups, lr=lr, betas=betas, eps=eps)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` below 1 is a ratio of ``total_steps``, else a number of steps."""
    return int(math.ceil(warmup * total_steps)) if 0 < warmup < 1 else int(warmup)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate for the update after ``step`` completed updates.

    Linear warmup from 0 over ``warmup`` steps, then ``constant``, ``linear`` decay or ``cosine``
    decay over the remaining steps (as transformers' schedules). The decays end at ``min_lr_ratio``
    (0 by default) instead of 0: ``min_lr_ratio + (1 - min_lr_ratio)·decay``, as transformers'
    ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)`` (and its ``get_wsd_schedule``
    for the linear decay, past warmup); warmup still starts from 0.
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        decay = max(0.0, 1.0 - progress)
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    # With min_lr_ratio = 0 this is decay·1.0 + 0.0: exactly the decay (the schedule without a floor).
    return max(0.0, decay * (1.0 - min_lr_ratio) + min_lr_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int,
                    schedule: str, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` (``min_lr_ratio`` in ``[0, 1]``: the decays' floor)."""
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, schedule, min_lr_ratio))
