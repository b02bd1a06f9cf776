"""Collators turning :class:`~pyft.data.dataset.PreparedDataset` items into model batches.

- :class:`PaddedCollator`: ``[B, L]`` tensors padded to the longest row, with ``attention_mask``.
  For unpacked data only (a padded row must hold one document).
- :class:`PackedCollator`: padding-free. All rows of the batch are laid end to end in one
  ``[1, T]`` row; ``position_ids`` restart at every document and ``cu_seq_lens_q/k`` /
  ``max_length_q/k`` describe the documents, which is what transformers' FlashAttention varlen
  path reads, while the sdpa/eager paths build a block-diagonal mask from the position resets
  (no ``attention_mask`` is emitted: with one, transformers ignores the resets). The first label
  of every document is -100 (set at preparation time), so no token is predicted across a
  boundary. Call the model with ``use_cache=False``: with a KV cache, transformers ignores the
  position resets and attends across documents.

Both return ``torch.int64`` tensors (``cu_seq_lens`` int32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE_INDEX = -100


def _torch() -> Any:
    import torch

    return torch


@dataclass
class PaddedCollator:
    """Pad rows to the batch's longest (optionally rounded up to a multiple).

    Args:
        pad_token_id: id used for padding ``input_ids`` (labels are padded with -100).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        padding_side: ``right`` (training) or ``left``.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        torch = _torch()
        if any(len(it["seq_lengths"]) > 1 for it in items):
            raise ValueError("PaddedCollator got packed rows (several documents per row); use PackedCollator")
        longest = max(len(it["input_ids"]) for it in items)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        b = len(items)
        input_ids = torch.full((b, longest), self.pad_token_id, dtype=torch.int64)
        labels = torch.full((b, longest), IGNORE_INDEX, dtype=torch.int64)
        attention_mask = torch.zeros((b, longest), dtype=torch.int64)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            sl = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[r, sl] = torch.from_numpy(np.asarray(it["input_ids"], dtype=np.int64))
            labels[r, sl] = torch.from_numpy(np.asarray(it["labels"], dtype=np.int64))
            attention_mask[r, sl] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class PackedCollator:
    """Padding-free batches: one ``[1, T]`` row with per-document positions and boundaries."""

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        torch = _torch()
        input_ids = np.concatenate([np.asarray(it["input_ids"]) for it in items]).astype(np.int64)
        labels = np.concatenate([np.asarray(it["labels"]) for it in items]).astype(np.int64)
        position_ids = np.concatenate([np.asarray(it["position_ids"]) for it in items]).astype(np.int64)
        seq_lengths = np.concatenate([np.asarray(it["seq_lengths"]) for it in items]).astype(np.int64)
        labels[position_ids == 0] = IGNORE_INDEX
        cu = np.concatenate([[0], np.cumsum(seq_lengths)]).astype(np.int32)
        max_len = int(seq_lengths.max()) if len(seq_lengths) else 0
        cu_t = torch.from_numpy(cu)
        return {
            "input_ids": torch.from_numpy(input_ids)[None],
            "labels": torch.from_numpy(labels)[None],
            "position_ids": torch.from_numpy(position_ids)[None],
            "cu_seq_lens_q": cu_t,
            "cu_seq_lens_k": cu_t.clone(),
            "max_length_q": max_len,
            "max_length_k": max_len,
        }


@dataclass
class PackedRowsCollator:
    """Rows of (possibly packed) documents as a ``[B, L]`` batch without ``attention_mask``.

    Each row is padded to the longest; ``position_ids`` restart at every document and the padding
    tail forms its own pseudo-document (labels -100), so transformers' sdpa/eager attention
    builds a block-diagonal causal mask per row and no token attends across documents. (For
    FlashAttention use :class:`PackedCollator`: its varlen path is only inferred for one row.)
    Call the model with ``use_cache=False``.

    Args:
        pad_token_id: id for the padding tail.
    """

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        torch = _torch()
        longest = max(len(it["input_ids"]) for it in items)
        b = len(items)
        input_ids = np.full((b, longest), self.pad_token_id, dtype=np.int64)
        labels = np.full((b, longest), IGNORE_INDEX, dtype=np.int64)
        position_ids = np.zeros((b, longest), dtype=np.int64)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[r, :n] = it["input_ids"]
            labels[r, :n] = it["labels"]
            position_ids[r, :n] = it["position_ids"]
            position_ids[r, n:] = np.arange(longest - n)
            starts = np.concatenate([[0], np.cumsum(it["seq_lengths"])[:-1]]).astype(np.int64)
            labels[r, starts] = IGNORE_INDEX
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(position_ids),
        }
