"""The reference model of DPO/KTO: where reference log-probs come from.

- :class:`AdapterDisabledReference`: the policy itself with its LoRA/QLoRA adapters switched off,
  so the base weights exist once (what TRL does for PEFT models without a ``ref_model``).
- :class:`StartingAdapterReference`: the policy with the adapter it started from, when training
  continues an existing (e.g. SFT) adapter: a snapshot of the adapter tensors is swapped in for the
  reference pass (TRL's "ref" adapter copy), so the base weights still exist once.
- :class:`FrozenCopyReference`: a frozen copy of the starting model (full fine-tuning).
- :class:`PrecomputedReference`: log-probs computed in one pass before training and looked up by
  row (TRL's ``precompute_ref_log_probs``); no reference model is kept.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pyft.losses.forward import sequence_logps
from pyft.peft import adapters_disabled


class Reference:
    """Reference log-probs of the sequences of a batch (``[S]`` float32, no gradient)."""

    #: Whether :meth:`sequence_logps` can score any batch (False: only precomputed rows).
    live = True

    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        """Models this reference holds besides the policy (for memory accounting)."""
        return []


class AdapterDisabledReference(Reference):
    """The policy with adapters disabled (no second copy of the base weights)."""

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        with adapters_disabled(model):
            return sequence_logps(model, batch, self.chunk_tokens, stats=False).logps


class StartingAdapterReference(Reference):
    """The policy with its adapter as it was when training started.

    The reference pass points every adapter tensor at a snapshot of its starting values (a pointer
    swap, no copy) and back afterwards. Objectives run the reference before the policy's forward,
    so no autograd graph ever holds the swapped tensors.
    """

    def __init__(self, model: nn.Module, chunk_tokens: int) -> None:
        from pyft.peft import adapter_tensors

        self.tensors = list(adapter_tensors(model).values())
        self.snapshot = [t.detach().clone() for t in self.tensors]
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        current = [t.data for t in self.tensors]
        for t, start in zip(self.tensors, self.snapshot):
            t.data = start
        try:
            return sequence_logps(model, batch, self.chunk_tokens, stats=False).logps
        finally:
            for t, now in zip(self.tensors, current):
                t.data = now


class FrozenCopyReference(Reference):
    """A frozen, eval-mode copy of the model as it was before training."""

    def __init__(self, model: nn.Module, chunk_tokens: int) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return sequence_logps(self.model, batch, self.chunk_tokens, stats=False).logps

    def modules(self) -> list[nn.Module]:
        return [self.model]


class PrecomputedReference(Reference):
    """Reference log-probs per dataset row, computed before training.

    Args:
        table: ``{split: [N, K] float32}``; column ``k`` holds the ``k``-th sequence a row
            contributes to a batch (preference: chosen, rejected; KTO: the completion).
        fallback: a live reference for sequences that are not in the table (KTO's KL pairs).
    """

    live = False

    def __init__(self, table: dict[str, torch.Tensor], fallback: Reference | None = None) -> None:
        self.table = table
        self.fallback = fallback

    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        if "rows" not in batch:
            if self.fallback is None:
                raise RuntimeError("precomputed reference log-probs have no entry for this batch")
            return self.fallback.sequence_logps(model, batch)
        values = self.table[batch["split"]][batch["rows"].cpu()]  # [B, K]
        # Sequences are ordered column-major: all first sequences of the rows, then all second ones.
        return values.t().reshape(-1).to(batch["input_ids"].device)

    def modules(self) -> list[nn.Module]:
        return self.fallback.modules() if self.fallback is not None else []
