"""AdamW with decoupled weight decay (none on norms and biases) and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from torch import nn


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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` over the trainable parameters (fused on CUDA)."""
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` below 1 is a ratio of ``total_steps``, else a number of steps."""
    return int(math.ceil(warmup * total_steps)) if 0 < warmup < 1 else int(warmup)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for the update after ``step`` completed updates.

    Linear warmup from 0 over ``warmup`` steps, then ``constant``, ``linear`` decay to 0 or
    ``cosine`` decay to 0 at ``total_steps`` (as transformers' schedules).
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int,
                    schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, schedule))
