"""Predicting with a trained classifier: ``load_classifier`` then :meth:`Classifier.predict`, and
:func:`evaluate_classifier` for accuracy, macro-F1 and the confusion matrix on labelled JSONL.

A classifier is what ``pyft train`` with ``method: classify`` saves: ``model/`` (a transformers
``*ForSequenceClassification`` directory with its tokenizer), or the base model plus ``adapter/``
(a PEFT ``SEQ_CLS`` LoRA adapter whose ``pyft_run.json`` lists the classes). Inputs are tokenized as
``pyft data prepare`` tokenized the training data: text as ``tokenizer(text)``, messages with the chat
template and no generation prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyft.errors import DataError
from pyft.io.files import jsonl_records, read_json_object

PathLike = str | os.PathLike[str]
#: An input: a text, or a list of ``{role, content}`` messages.
Input = str | list[dict[str, Any]]


class Classifier:
    """A sequence classifier and its tokenizer.

    Attributes:
        model: the ``*ForSequenceClassification`` model (eval mode).
        tokenizer: its transformers tokenizer.
        labels: the class names in id order.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (tokenizer.pad_token_id or 0)

    def encode(self, item: Input) -> list[int]:
        """Token ids of one input, as ``pyft data prepare`` encodes classify rows."""
        if isinstance(item, str):
            return list(self.tokenizer(item)["input_ids"])
        ids = self.tokenizer.apply_chat_template(item, tokenize=True, add_generation_prompt=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def logits(self, inputs: Sequence[Input], *, batch_size: int = 8, max_length: int | None = None) -> np.ndarray:
        """float32 ``[N, num_labels]`` logits (right-padded batches; the last real token is read)."""
        import torch

        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(inputs), batch_size):
            seqs = [self.encode(x)[:max_length] for x in inputs[start:start + batch_size]]
            longest = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s, dtype=torch.int64)
                mask[r, :len(s)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            out.append(logits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def probabilities(self, inputs: Sequence[Input], **kwargs: Any) -> np.ndarray:
        """Class probabilities ``[N, num_labels]`` (softmax of :meth:`logits`)."""
        z = self.logits(inputs, **kwargs)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def predict(self, inputs: Sequence[Input], **kwargs: Any) -> list[str]:
        """The predicted class name of each input."""
        return [self.labels[i] for i in self.logits(inputs, **kwargs).argmax(-1).tolist()]


def load_classifier(path: PathLike, *, adapter: PathLike | None = None, dtype: Any = "auto",
                    device: Any = None) -> Classifier:
    """Load a classifier: a saved sequence-classification model directory (``model/``), or a base
    causal LM plus a ``SEQ_CLS`` LoRA adapter directory (``adapter/``, classes from its ``pyft_run.json``).

    Raises:
        FileNotFoundError: no model, or an adapter without ``pyft_run.json``.
        DataError: ``pyft_run.json`` lists no ``labels`` (not a classifier's adapter).
    """
    from transformers import AutoTokenizer

    from pyft.models import check_model_dir, load_sequence_classifier

    if adapter is None:
        model = load_sequence_classifier(path, {}, dtype=dtype, device=device)
        return Classifier(model, AutoTokenizer.from_pretrained(str(check_model_dir(path)), local_files_only=True))
    from pyft.classify.labels import LabelMap
    from pyft.peft import load_adapter

    info_path = Path(adapter) / "pyft_run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: not found (a classifier adapter saved by pyft lists its classes there)")
    names = read_json_object(info_path).get("labels")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise DataError(f"{info_path}: field `labels`: expected the class names of a classifier, got {names!r:.80}")
    labels = LabelMap(tuple(names), np.arange(len(names))).model_config()
    tok = AutoTokenizer.from_pretrained(str(adapter), local_files_only=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = load_sequence_classifier(path, labels, dtype=dtype, device=device, pad_token_id=pad)
    load_adapter(model, adapter)
    return Classifier(model.eval(), tok)


def read_labelled_rows(path: PathLike, labels: Sequence[str]) -> tuple[list[Input], list[str]]:
    """Inputs and gold class names of a JSONL file of ``{"text" | "messages", "label"}`` rows; a label is
    a class name or a class index into ``labels``.

    Raises:
        DataError: a row without an input or label, or with a label that is not a class (file, line and
            field named).
    """
    inputs: list[Input] = []
    gold: list[str] = []
    known = set(labels)
    for where, rec in jsonl_records(path):
        x = rec.get("text") if rec.get("text") is not None else rec.get("messages")
        if not (isinstance(x, str) or (isinstance(x, list) and x and all(isinstance(m, dict) for m in x))):
            raise DataError(f"{where}: field `text`: needs a `text` (a string) or `messages` (a list of messages)")
        label = rec.get("label")
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            label = labels[label]
        if not isinstance(label, str) or label not in known:
            raise DataError(f"{where}: field `label`: {label!r:.80} is not a class of the model "
                            f"({', '.join(labels)}) nor an index of one")
        inputs.append(x)
        gold.append(label)
    if not inputs:
        raise DataError(f"{path}: no rows")
    return inputs, gold


def evaluate_classifier(classifier: Classifier, data: PathLike, *, batch_size: int = 8,
                        max_length: int | None = None) -> dict[str, Any]:
    """Predict every row of ``data`` (JSONL, see :func:`read_labelled_rows`) and score it.

    Returns:
        ``{"classification": {accuracy, macro_f1, invalid, per_class, confusion_matrix}, "predictions":
        [{...row input, "label", "predicted_label"}]}`` (:func:`pyft.eval.metrics.classification_metrics`,
        the classes in id order).
    """
    from pyft.eval.metrics import classification_metrics

    inputs, gold = read_labelled_rows(data, classifier.labels)
    predicted = classifier.predict(inputs, batch_size=batch_size, max_length=max_length)
    report = classification_metrics(predicted, gold, labels=classifier.labels)
    rows = [{("text" if isinstance(x, str) else "messages"): x, "label": g, "predicted_label": p}
            for x, g, p in zip(inputs, gold, predicted, strict=True)]
    return {"classification": report.as_dict(), "predictions": rows}
