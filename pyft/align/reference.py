"""The reference model of DPO/KTO (and of SFT's ``train.kl_to_base``): where reference outputs come from.

- :class:`AdapterDisabledReference`: the policy itself with its LoRA/QLoRA adapters switched off,
  so the base weights exist once (what TRL does for PEFT models without a ``ref_model``).
- :class:`StartingAdapterReference`: the policy with the adapter it started from, when training
  continues an existing (e.g. SFT) adapter: a snapshot of the adapter tensors is swapped in for the
  reference pass (TRL's "ref" adapter copy), so the base weights still exist once.
- :class:`FrozenCopyReference`: a frozen copy of the starting model (full fine-tuning).
- :class:`PrecomputedReference`: log-probs computed in one pass before training and looked up by
  row (TRL's ``precompute_ref_log_probs``); no reference model is kept.

Each live reference says, in :meth:`Reference.scoring`, which module computes its outputs; summed
sequence log-probs (DPO, KTO) and final hidden states with an output layer (the token-level KL of
``train.kl_to_base``, which compares whole next-token distributions) are both computed there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pyft.losses.forward import forward_hidden, sequence_logps
from pyft.peft import adapters_disabled


class Reference:
    """Reference outputs for a batch, without gradient: summed log-probs of its sequences (``[S]``
    float32), or final hidden states and the output layer (:meth:`forward_hidden`)."""

    #: Whether :meth:`sequence_logps` can score any batch (False: only precomputed rows).
    live = True
    chunk_tokens = 4096

    @contextmanager
    def scoring(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block: the module that computes the reference's outputs (``model``, the
        policy, with its adapters off or swapped, or a copy)."""
        raise NotImplementedError
        yield model  # a generator, for @contextmanager

    @torch.no_grad()
    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        with self.scoring(model) as ref:
            return sequence_logps(ref, batch, self.chunk_tokens, stats=False).logps

    def forward_hidden(self, model: nn.Module,
                       inputs: dict[str, Any]) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The reference's ``(hidden, head)`` on ``inputs`` (as :func:`pyft.losses.forward.forward_hidden`).

        ``hidden``: final hidden states ``[R, T, H]``, computed without gradient and with dropout off
        (eval mode), so the reference is the starting model's own prediction. ``head``: its output
        layer, ``[N, H] -> [N, V]`` logits without gradient; it enters :meth:`scoring` on every call,
        so it may be called later, chunk by chunk, and again when backward recomputes a chunk.
        """
        with torch.no_grad(), self.scoring(model) as ref, _eval_mode(ref):
            hidden, head = forward_hidden(ref, inputs)

        @torch.no_grad()
        def ref_head(h: torch.Tensor) -> torch.Tensor:
            with self.scoring(model):
                return head(h)

        return hidden, ref_head

    def modules(self) -> list[nn.Module]:
        """Models this reference holds besides the policy (for memory accounting)."""
        return []


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block, each one's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class AdapterDisabledReference(Reference):
    """The policy with adapters disabled (no second copy of the base weights)."""

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens

    @contextmanager
    def scoring(self, model: nn.Module) -> Iterator[nn.Module]:
        with adapters_disabled(model):
            yield model


class StartingAdapterReference(Reference):
    """The policy with its adapter as it was when training started.

    The reference pass points every adapter tensor at a snapshot of its starting values (a pointer
    swap, no copy) and back afterwards. Objectives run the reference before the policy's forward,
    so no autograd graph ever holds the swapped tensors; the output layer of :meth:`forward_hidden`
    runs later, without gradient, and swaps back before anything else reads the tensors.
    """

    def __init__(self, model: nn.Module, chunk_tokens: int) -> None:
        # the adapter's trainable tensors, whatever its kind (LoRA, (IA)³, a soft prompt, ...)
        self.tensors = [p for p in model.parameters() if p.requires_grad]
        self.snapshot = [t.detach().clone() for t in self.tensors]
        self.chunk_tokens = chunk_tokens

    @contextmanager
    def scoring(self, model: nn.Module) -> Iterator[nn.Module]:
        current = [t.data for t in self.tensors]
        for t, start in zip(self.tensors, self.snapshot):
            t.data = start
        try:
            yield model
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

    @contextmanager
    def scoring(self, model: nn.Module) -> Iterator[nn.Module]:
        yield self.model

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

    @contextmanager
    def scoring(self, model: nn.Module) -> Iterator[nn.Module]:
        if self.fallback is None:
            raise RuntimeError("precomputed reference log-probs keep no reference model")
        with self.fallback.scoring(model) as ref:
            yield ref

    def modules(self) -> list[nn.Module]:
        return self.fallback.modules() if self.fallback is not None else []
