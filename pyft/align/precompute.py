"""Reference log-probs computed in one no-grad pass before training (``align.precompute_ref``).

Every train and validation row is scored with the starting model; the table is cached in
``output/reference_logps.safetensors`` under a fingerprint of model, data and options, so a resumed
run reuses it. Under DDP each rank scores a share of the rows and the shares are gathered.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_file
from pyft.data import PreparedDataset
from pyft.train.config import TrainConfig
from pyft.train.distributed import barrier, gather_objects
from pyft.train.loop import Trainer
from pyft.align.forward import sequence_logps
from pyft.align.reference import PrecomputedReference, Reference


def reference_fingerprint(config: TrainConfig, trainer: Trainer) -> str:
    """Hex digest of what the reference log-probs depend on: model files, starting adapter, data,
    method, tuning, layout and precision."""
    h = hashlib.sha256()
    for part in (str(Path(config.model).resolve()), str(config.adapter), config.method, config.tuning_kind,
                 config.align.layout,
                 (trainer.train_ds.info.out_dir / "meta.json").read_text(encoding="utf-8"), trainer.precision):
        h.update(part.encode("utf-8") + b"\0")
    for f in sorted(Path(config.model).glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def precompute_reference_logps(trainer: Trainer, config: TrainConfig) -> None:
    """Compute the reference log-probs of every train and validation row in one no-grad pass with the
    starting model (cached in ``output/reference_logps.safetensors`` for resumes), then drop the
    live reference for those sequences (KTO keeps it for its KL pairs)."""
    from safetensors.torch import load_file, save_file

    class PolicyReference(Reference):
        """The model being trained, scored as it is (used once, before the first step)."""

        @torch.no_grad()
        def sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
            return sequence_logps(model, batch, config.train.chunk_tokens, stats=False).logps

    obj = trainer.objective
    live = obj.reference
    if isinstance(live, PrecomputedReference):  # full fine-tuning: the policy itself is the starting model
        live = PolicyReference()
    cache = Path(config.output) / "reference_logps.safetensors"
    fingerprint = reference_fingerprint(config, trainer)
    columns = 2 if config.objective == "dpo" else 1
    splits = {"train": trainer.train_ds, **({"validation": trainer.eval_ds} if trainer.eval_ds is not None else {})}
    table: dict[str, torch.Tensor] = {}
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                table = load_file(str(cache))
    if set(table) != set(splits):
        table = {}
        for name, ds in splits.items():
            mine = list(range(trainer.dist.rank, len(ds), trainer.dist.world))
            part = _precompute_rows(trainer, live, ds, name, mine, columns)
            gathered = gather_objects((mine, part), trainer.dist)
            full = torch.zeros(len(ds), columns, dtype=torch.float32)
            for rows, values in gathered:
                full[rows] = values
            table[name] = full
        if trainer.dist.is_main:
            with atomic_file(cache, overwrite=True) as tmp:
                save_file(table, str(tmp), metadata={"fingerprint": fingerprint})
        barrier(trainer.dist)
    fallback = obj.reference if config.objective == "kto" else None
    obj.reference = PrecomputedReference(table, fallback=fallback)


def _precompute_rows(trainer: Trainer, reference: Any, ds: PreparedDataset, split: str, rows: list[int],
                     columns: int) -> torch.Tensor:
    model = trainer.model
    out = torch.zeros(len(rows), columns, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(rows), trainer.t.batch_size):
            chunk = rows[i : i + trainer.t.batch_size]
            batch = trainer._to_device(trainer.objective.collate([ds[j] for j in chunk], chunk, split))
            batch.pop("kl", None)
            with torch.no_grad(), trainer._autocast():
                logps = reference.sequence_logps(model, batch).float().cpu()
            out[i : i + len(chunk)] = logps.reshape(columns, len(chunk)).t()
    finally:
        model.train(was_training)
    return out
