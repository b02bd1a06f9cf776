"""The training objective of ``method: classify``: cross-entropy of a sequence classifier.

Rows are right-padded with an attention mask (never packed), so transformers'
``*ForSequenceClassification`` reads the logits at each row's last real token, as it does at
inference. The step loss is the (class-weighted) mean over the step's examples, so gradient
accumulation equals one big batch. Evaluation adds accuracy, macro-F1 and the confusion matrix
(:func:`pyft.eval.classification.classification_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyft.classify.labels import LabelMap


def classification_losses(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example losses ``[B]``: ``w[y]·((1-ε)·(-log p_y)) + ε/C·Σ_c w[c]·(-log p_c)`` (torch's
    ``cross_entropy(..., weight=w, label_smoothing=ε, reduction="none")``). Their sum divided by
    ``Σ w[y]`` over a batch is ``cross_entropy``'s mean; without weights, w = 1."""
    return F.cross_entropy(logits.float(), labels, weight=None if weight is None else weight.float(),
                           label_smoothing=label_smoothing, reduction="none")


class ClassifyCollator:
    """Right-padded rows: ``input_ids``/``attention_mask [B, L]`` and ``labels [B]`` (model ids)."""

    def __init__(self, pad_token_id: int, data_to_id: np.ndarray) -> None:
        self.pad_token_id = pad_token_id
        self.data_to_id = torch.as_tensor(data_to_id, dtype=torch.int64)

    def __call__(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        longest = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(items), longest), dtype=torch.int64)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            ids[r, :n] = torch.from_numpy(np.asarray(it["input_ids"], dtype=np.int64))
            mask[r, :n] = 1
        labels = self.data_to_id[torch.as_tensor([int(it["label"]) for it in items], dtype=torch.int64)]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ClassifyObjective:
    """Cross-entropy (label smoothing, class weights) of a ``*ForSequenceClassification`` model.

    Metrics: ``loss`` and ``accuracy``; evaluation adds ``macro_f1`` and ``confusion_matrix``
    (rows = reference, columns = prediction, in id order).
    """

    training = True  # set by the loop

    def __init__(self, label_map: LabelMap, pad_token_id: int, label_smoothing: float = 0.0,
                 class_weights: np.ndarray | None = None) -> None:
        self.labels = label_map
        self.collator = ClassifyCollator(pad_token_id, label_map.data_to_id)
        self.label_smoothing = label_smoothing
        self.weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)

    def collate(self, items, rows, split):
        return self.collator(items)

    def counts(self, batch):
        y = batch["labels"]
        weight = float(len(y)) if self.weight is None else float(self.weight[y].sum())
        return {"examples": len(y), "weight": weight, "tokens": int(batch["attention_mask"].sum())}

    def loss(self, model: nn.Module, batch: dict[str, Any], totals: dict[str, float]):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits.float()
        y = batch["labels"].to(logits.device)
        weight = None if self.weight is None else self.weight.to(logits.device)
        loss = classification_losses(logits, y, label_smoothing=self.label_smoothing, weight=weight).sum()
        loss = loss / totals["weight"]
        pred = logits.detach().argmax(-1)
        sums = {"loss": float(loss.detach()), "correct": float((pred == y).sum())}
        if not self.training:  # the confusion matrix's non-empty cells (keys agreed across ranks)
            cells = (y * self.labels.num_labels + pred).cpu()
            for cell, n in zip(*torch.unique(cells, return_counts=True)):
                ref, got = divmod(int(cell), self.labels.num_labels)
                sums[f"confusion/{ref}/{got}"] = float(n)
        return loss, sums

    def finalize(self, sums, totals):
        out: dict[str, Any] = {"loss": sums["loss"], "accuracy": sums["correct"] / max(totals["examples"], 1)}
        cells = {k: v for k, v in sums.items() if k.startswith("confusion/")}
        if cells:
            from pyft.eval.classification import ConfusionMatrix, classification_report

            n = self.labels.num_labels
            counts = np.zeros((n, n + 1), dtype=np.int64)
            for k, v in cells.items():
                _, ref, got = k.split("/")
                counts[int(ref), int(got)] = round(v)
            report = classification_report(ConfusionMatrix(self.labels.names, counts))
            out["macro_f1"] = report.macro_f1
            out["confusion_matrix"] = counts[:, :n].tolist()
        return out

    def progress(self, record):
        text = f"acc {record['accuracy']:.3f}" if "accuracy" in record else ""
        if "macro_f1" in record:
            text += f"  macro-F1 {record['macro_f1']:.3f}"
        return text
