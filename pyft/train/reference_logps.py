"""Reference log-probs computed in one no-grad pass before training (``align.precompute_ref``).

Every train and validation row is scored with the starting model; the table is cached in
``output/reference_logps.safetensors`` under a fingerprint of model, data and options, so a resumed
run reuses it. Under DDP each rank scores a share of the rows and the shares are gathered. The
result is complete before the objective is built (:class:`~pyft.align.reference.PrecomputedReference`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_file
from pyft.align.reference import Reference
from pyft.data import PreparedDataset
from pyft.data.sequences import KtoCollator, PreferenceCollator
from pyft.losses.forward import sequence_logps
from pyft.train.batches import autocast, collate_batches
from pyft.train.config import TrainConfig
from pyft.train.distributed import DistInfo, barrier, gather_objects

#: The sequences a data row contributes to a batch, by data kind, in the column order of the table
#: (preference: chosen then rejected; KTO: the completion).
SEQUENCE_COLLATORS = {
    "preference": lambda pad, layout: PreferenceCollator(pad, layout),
    "kto": lambda pad, layout: KtoCollator(pad, layout, with_kl=False),
}


class PolicyReference:
    """The model being trained, scored as it is: the reference before the first step, when full
    fine-tuning precomputes and so keeps no copy (a :class:`~pyft.align.reference.Reference`)."""

    live = True

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return sequence_logps(model, batch, self.chunk_tokens, stats=False).logps

    def modules(self) -> list[nn.Module]:
        return []


def reference_fingerprint(config: TrainConfig, model_dir: Path, train_ds: PreparedDataset, precision: str) -> str:
    """Hex digest of what the reference log-probs depend on: the model's files (``model_dir``, the
    resolved local directory, also of a Hub id), starting adapter, data, method, tuning, layout and
    precision."""
    h = hashlib.sha256()
    for part in (str(Path(model_dir).resolve()), str(config.adapter), config.method, config.tuning_kind,
                 config.align.layout, (train_ds.info.out_dir / "meta.json").read_text(encoding="utf-8"), precision):
        h.update(part.encode("utf-8") + b"\0")
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def precompute_reference_logps(config: TrainConfig, model_dir: Path, model: nn.Module, reference: Reference | PolicyReference,
                               splits: dict[str, PreparedDataset], columns: int, pad_token_id: int, layout: str,
                               precision: str, dist: DistInfo) -> dict[str, torch.Tensor]:
    """Score every row of ``splits`` with ``reference`` (the starting model) in one no-grad pass.

    Args:
        splits: ``{"train": ds, "validation": ds}`` (validation optional).
        layout: sequence batching, as the objective will use.
        precision: resolved training precision (the pass runs under the same autocast).

    Returns:
        ``{split: [N, K] float32}``: column ``k`` holds the ``k``-th sequence of each row. Read from
        (and written to) ``output/reference_logps.safetensors`` when its fingerprint matches.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cache = Path(config.output) / "reference_logps.safetensors"
    fingerprint = reference_fingerprint(config, model_dir, splits["train"], precision)
    if cache.is_file():
        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                table = load_file(str(cache))
                if set(table) == set(splits):
                    return table
    device = next(model.parameters()).device
    table = {}
    for name, ds in splits.items():
        collate_rows = SEQUENCE_COLLATORS[ds.kind](pad_token_id, layout)
        mine = list(range(dist.rank, len(ds), dist.world))
        part = _score_rows(model, reference, lambda items, rows, split: collate_rows(items), ds, name, mine,
                           columns, config.train.batch_size, precision, device)
        full = torch.zeros(len(ds), columns, dtype=torch.float32)
        for rows, values in gather_objects((mine, part), dist):
            full[rows] = values
        table[name] = full
    if dist.is_main:
        with atomic_file(cache, overwrite=True) as tmp:
            save_file(table, str(tmp), metadata={"fingerprint": fingerprint})
    barrier(dist)
    return table


def _score_rows(model: nn.Module, reference: Any, collate: Any, ds: PreparedDataset, split: str, rows: list[int],
                columns: int, batch_size: int, precision: str, device: torch.device) -> torch.Tensor:
    """``[len(rows), K]`` reference log-probs of ``rows`` (K sequences per row)."""
    parts = []
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(collate_batches(collate, ds, rows, split, batch_size, device)):
            n = len(rows[i * batch_size : (i + 1) * batch_size])
            with torch.no_grad(), autocast(precision, device):
                logps = reference.sequence_logps(model, batch).float().cpu()
            parts.append(logps.reshape(columns, n).t())  # sequences are column-major: all first ones, then all second
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, columns)
