"""From dataset rows to device micro-batches, and the mixed-precision context they run under.

The public pieces the loop and the reference precomputation share: :class:`RowStream` (the seeded,
resumable row order), :func:`collate_batches` (rows -> device micro-batches through an objective's
collate), :func:`resolve_precision` and :func:`autocast`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from pyft.errors import ConfigError

#: ``objective.collate``: ``(items, rows, split) -> batch`` of CPU tensors.
Collate = Callable[[Sequence[dict[str, np.ndarray]], Sequence[int], str], dict[str, Any]]


class RowStream:
    """Rows in a seeded random order per epoch, resumable from ``(epoch, offset)``."""

    def __init__(self, n_rows: int, seed: int, epoch: int = 0, offset: int = 0) -> None:
        self.n_rows, self.seed, self.epoch, self.offset = n_rows, seed, epoch, offset
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n_rows, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        """The next ``k`` row indices, continuing into the next epoch when this one ends."""
        out: list[int] = []
        while len(out) < k:
            if self.offset >= self.n_rows:
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            n = min(k - len(out), self.n_rows - self.offset)
            out.extend(self._order[self.offset : self.offset + n])
            self.offset += n
        return out

    def position(self) -> dict[str, int]:
        """Where the stream is (for checkpoints)."""
        return {"epoch": self.epoch, "offset": self.offset}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor (also in nested dicts, e.g. KTO's KL batch) moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) if isinstance(v, dict) else v
            for k, v in batch.items()}


def collate_batches(collate: Collate, dataset: Any, rows: Sequence[int], split: str, batch_size: int,
                    device: torch.device) -> list[dict[str, Any]]:
    """Micro-batches of ``batch_size`` rows of ``dataset`` (in the order given), on ``device``."""
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = list(rows[i : i + batch_size])
        out.append(to_device(collate([dataset[j] for j in chunk], chunk, split), device))
    return out


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA device that supports it, else fp32.

    Raises:
        ConfigError: fp16 asked for on a device other than CUDA.
    """
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The autocast context of a resolved ``precision`` (``bf16``/``fp16``; nothing for ``fp32``)."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()
