"""Batches of (prompt, completion) sequences for preference training: DPO-family pairs and KTO examples.

A batch holds ``S`` sequences (prompt tokens followed by completion tokens) laid out in ``R`` rows
of length ``L``, in one of three layouts:

- ``packed`` (default for sdpa/eager attention): sequences placed first-fit by decreasing length
  into rows no longer than the longest sequence, ``position_ids`` restarting at every sequence and
  no ``attention_mask``, so transformers builds a block-diagonal causal mask and no token attends
  across sequences. Fewer padded positions than one row per sequence, same attention cost bound.
- ``flat``: every sequence in one ``[1, T]`` row with ``cu_seq_lens_q/k`` (FlashAttention varlen).
- ``padded``: one right-padded row per sequence with an ``attention_mask`` (what TRL feeds the
  model; the reward model uses it so the classifier reads the last real token as transformers does).

Besides the model inputs, every batch carries ``seq_ids [R, L]`` (the sequence a position belongs
to, ``-1`` for padding) and ``completion [R, L]`` (True on completion tokens), all int64/bool
tensors. Call the model with ``use_cache=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUTS = ("packed", "flat", "padded")


def _first_fit_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Sequence indices per row: first fit by decreasing length, row capacity = the longest."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def build_sequence_batch(
    sequences: Sequence[tuple[np.ndarray, np.ndarray]],
    pad_token_id: int,
    layout: str = "packed",
) -> dict[str, Any]:
    """Lay out ``(prompt_ids, completion_ids)`` sequences as model inputs (see the module docstring).

    Args:
        sequences: ``S`` pairs of 1-D integer arrays; sequence ``s`` is ``prompt + completion``.
        pad_token_id: token id of padding positions.
        layout: ``packed``, ``flat`` or ``padded``.

    Returns:
        ``input_ids``, ``position_ids``, ``seq_ids``, ``completion`` (``[R, L]``), plus
        ``attention_mask`` (padded) or ``cu_seq_lens_q/k`` and ``max_length_q/k`` (flat), and
        ``n_seqs`` (int) and ``completion_lengths`` (``[S]`` int64).
    """
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    ids = [np.concatenate([np.asarray(p, dtype=np.int64), np.asarray(c, dtype=np.int64)]) for p, c in sequences]
    prompt_lens = [len(p) for p, _ in sequences]
    lengths = [len(x) for x in ids]
    if layout == "padded":
        rows = [[i] for i in range(len(ids))]
    elif layout == "flat":
        rows = [list(range(len(ids)))]
    else:
        rows = _first_fit_rows(lengths)
    width = max(sum(lengths[i] for i in row) for row in rows)
    n_rows = len(rows)
    input_ids = np.full((n_rows, width), pad_token_id, dtype=np.int64)
    position_ids = np.zeros((n_rows, width), dtype=np.int64)
    seq_ids = np.full((n_rows, width), -1, dtype=np.int64)
    completion = np.zeros((n_rows, width), dtype=bool)
    attention_mask = np.zeros((n_rows, width), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            input_ids[r, at : at + n] = ids[i]
            position_ids[r, at : at + n] = np.arange(n)
            seq_ids[r, at : at + n] = i
            completion[r, at + prompt_lens[i] : at + n] = True
            attention_mask[r, at : at + n] = 1
            at += n
        position_ids[r, at:] = np.arange(width - at)  # the padding tail is its own pseudo-sequence
    out: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "seq_ids": torch.from_numpy(seq_ids),
        "completion": torch.from_numpy(completion),
        "n_seqs": len(ids),
        "completion_lengths": torch.tensor([n - p for n, p in zip(lengths, prompt_lens)], dtype=torch.int64),
    }
    if layout == "padded":
        out["attention_mask"] = torch.from_numpy(attention_mask)
    elif layout == "flat":
        cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
        out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=max(lengths), max_length_k=max(lengths))
    return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a sequence batch the model takes."""
    keys = ("input_ids", "position_ids", "attention_mask", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
            "max_length_k")
    return {k: batch[k] for k in keys if k in batch}


@dataclass
class PreferenceCollator:
    """Preference rows (``prompt``, ``chosen``, ``rejected``) to one batch of ``2B`` sequences:
    ``prompt + chosen`` for the ``B`` pairs first, then ``prompt + rejected`` (chosen and rejected run
    through the model as one batch, as TRL does). Adds ``n_pairs``.

    Args:
        pad_token_id: token id of padding positions.
        layout: see :func:`build_sequence_batch`.
    """

    pad_token_id: int
    layout: str = "packed"

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        seqs = [(it["prompt"], it["chosen"]) for it in items] + [(it["prompt"], it["rejected"]) for it in items]
        batch = build_sequence_batch(seqs, self.pad_token_id, self.layout)
        batch["n_pairs"] = len(items)
        return batch


@dataclass
class KtoCollator:
    """KTO rows (``prompt_ids``, ``completion_ids``, ``label``) to a batch of their ``B`` sequences
    plus, under ``"kl"``, the ``B`` mismatched sequences KTO's KL estimate uses: completions rotated by
    one within the batch, so sequence ``i`` is ``prompt_i + completion_{i-1}`` (TRL's
    ``[y_B, y_1, …, y_{B-1}]``). Adds ``desirable`` (``[B]`` bool).

    Args:
        pad_token_id: token id of padding positions.
        layout: see :func:`build_sequence_batch`.
        with_kl: build the KL sequences (needs ``B > 1``).
    """

    pad_token_id: int
    layout: str = "packed"
    with_kl: bool = True

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        import torch

        seqs = [(it["prompt_ids"], it["completion_ids"]) for it in items]
        batch = build_sequence_batch(seqs, self.pad_token_id, self.layout)
        batch["desirable"] = torch.tensor([bool(it["label"]) for it in items], dtype=torch.bool)
        if self.with_kl:
            n = len(items)
            kl = [(items[i]["prompt_ids"], items[(i - 1) % n]["completion_ids"]) for i in range(n)]
            batch["kl"] = build_sequence_batch(kl, self.pad_token_id, self.layout)
        return batch
