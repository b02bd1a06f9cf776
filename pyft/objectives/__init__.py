"""The contract between the training loop and a training objective (SFT, DPO, KTO, ...).

An objective is any object with the methods of :class:`Objective` (a ``Protocol``: no base class to
inherit). The loop takes ``batch_size × grad_accum`` rows per optimizer step on every rank, builds
micro-batches with :meth:`~Objective.collate`, sums :meth:`~Objective.counts` over the whole step
(all micro-batches, all ranks) and back-propagates :meth:`~Objective.loss` of each micro-batch,
which is already divided by those totals, so accumulation equals one big batch. Metric sums come
back from :meth:`~Objective.loss`, are added over micro-batches and ranks, and
:meth:`~Objective.finalize` turns them into the logged metrics.

This package sits below :mod:`pyft.train` (which runs objectives); it holds the contract and SFT's
objective (:mod:`pyft.objectives.sft`); the alignment objectives live in :mod:`pyft.align`, and
:mod:`pyft.methods` names them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Objective(Protocol):
    """What a training step optimises."""

    #: Set by the loop: True during training steps, False during evaluation.
    training: bool

    def collate(self, items: Sequence[dict[str, np.ndarray]], rows: Sequence[int], split: str) -> dict[str, Any]:
        """One micro-batch (CPU tensors) from dataset items; ``rows`` are their indices in ``split``."""
        ...

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        """Normalisers of one micro-batch (target tokens, pairs, ...), summed over the step. ``tokens``
        (the tokens trained on) also gives the step's tokens/s."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, Any],
             totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the step loss (a float32 scalar already divided by ``totals``) and
        its metric sums."""
        ...

    def finalize(self, sums: dict[str, float], totals: dict[str, float]) -> dict[str, float]:
        """Metrics to log from the step's (or evaluation's) summed metrics; includes ``loss``."""
        ...

    def progress(self, metrics: dict[str, Any]) -> str:
        """Short extra text for the progress line from finalized metrics (``""`` for none)."""
        ...
