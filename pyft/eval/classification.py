"""Classification metrics for label-valued tasks (sentiment, NLI, multiple choice), and the mapping of a
generated text onto one of a row's choices.

Labels are strings. A prediction may be ``None`` (the generation matched no choice, see
:func:`match_choice`) or a string outside the label set: both are *invalid* predictions, always wrong,
counted in the confusion matrix's last column and never silently dropped.

Label order (rows and columns of the confusion matrix, keys of ``per_class``) is ``labels`` as given,
or, when ``labels`` is None, the sorted union (by Unicode code point, as ``sorted`` and scikit-learn's
``unique_labels``) of the references and the string predictions; then no string prediction is invalid.

Definitions (equal to scikit-learn's with ``zero_division=0``): per class, precision = TP / predicted,
recall = TP / support, F1 = 2·TP / (2·TP + FP + FN), each 0 where its denominator is 0; macro-F1 is the
unweighted mean of the per-class F1 over the label set; accuracy is the fraction of predictions equal to
their reference, invalid ones counting as wrong. All scores are in 0..1.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pyft.errors import ConfigError
from pyft.eval._inputs import check_column, check_same_length, check_text, data_error
from pyft.eval._unicode import is_punctuation, is_word_char

#: Display name of the confusion matrix's last column: predictions outside the label set (or ``None``).
OTHER_COLUMN = "(other)"


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of (reference, prediction) pairs.

    Attributes:
        labels: the label order, for rows and for the first ``len(labels)`` columns.
        counts: ``int64`` array of shape ``(len(labels), len(labels) + 1)``; ``counts[i, j]`` is the number
            of examples with reference ``labels[i]`` predicted as ``labels[j]``; the last column counts those
            whose prediction was invalid (``None`` or not in ``labels``).
    """

    labels: tuple[str, ...]
    counts: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"labels": [...], "columns": [...labels, "(other)"], "counts": [[int, ...], ...]}``."""
        return {"labels": list(self.labels), "columns": [*self.labels, OTHER_COLUMN],
                "counts": self.counts.tolist()}


@dataclass(frozen=True)
class ClassScores:
    """One class's scores: ``precision``, ``recall``, ``f1`` in 0..1 and ``support`` (references with this
    label)."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Everything :func:`classification_metrics` computes.

    Attributes:
        accuracy: fraction of examples predicted right, 0..1.
        macro_f1: mean per-class F1 over ``confusion.labels``, 0..1.
        per_class: label -> its scores, in label order.
        confusion: the confusion matrix.
        invalid: number of invalid predictions (the confusion matrix's last column, summed).
    """

    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: ConfusionMatrix
    invalid: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (plain floats, ints, lists and dicts)."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "invalid": self.invalid,
                "per_class": {label: asdict(s) for label, s in self.per_class.items()},
                "confusion_matrix": self.confusion.as_dict()}


def _label_set(labels: Sequence[str] | None, references: list[str], predictions: list[str | None]) -> list[str]:
    if labels is None:
        return sorted(set(references) | {p for p in predictions if p is not None})
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise ConfigError(f"`labels` must be a non-empty list of strings, got {labels!r:.80}")
    order = list(labels)
    for i, label in enumerate(order):
        if not isinstance(label, str):
            raise ConfigError(f"`labels[{i}]` must be a string, got {type(label).__name__}: {label!r:.80}")
    if len(set(order)) != len(order):
        dup = next(label for i, label in enumerate(order) if label in order[:i])
        raise ConfigError(f"`labels` lists {dup!r} more than once")
    known = set(order)
    for i, ref in enumerate(references):
        if ref not in known:
            raise data_error(f"`references[{i}]` is {ref!r:.80}, which is not one of the labels {order!r:.200}",
                             f"references[{i}]")
    return order


def confusion_matrix(predictions: Sequence[str | None], references: Sequence[str],
                     labels: Sequence[str] | None = None) -> ConfusionMatrix:
    """The confusion matrix (rows = reference, columns = prediction, then the invalid column).

    Args:
        predictions: one predicted label per example; ``None`` for no valid label.
        references: one reference label per example.
        labels: the label set and its order; None for the sorted union of references and predictions.

    Raises:
        DataError: lengths differ or are 0, a reference is not a string or not in ``labels``, a prediction is
            neither a string nor None.
        ConfigError: ``labels`` is empty, holds a non-string or a duplicate.
    """
    preds, refs = _checked(predictions, references)
    order = _label_set(labels, refs, preds)
    index = {label: i for i, label in enumerate(order)}
    other = len(order)
    counts = np.zeros((len(order), len(order) + 1), dtype=np.int64)
    for pred, ref in zip(preds, refs):
        counts[index[ref], index.get(pred, other) if pred is not None else other] += 1
    return ConfusionMatrix(tuple(order), counts)


def classification_metrics(predictions: Sequence[str | None], references: Sequence[str],
                           labels: Sequence[str] | None = None) -> ClassificationReport:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Arguments and errors as :func:`confusion_matrix`.
    """
    return classification_report(confusion_matrix(predictions, references, labels))


def classification_report(cm: ConfusionMatrix) -> ClassificationReport:
    """The scores of :func:`classification_metrics` from a confusion matrix (counts summed elsewhere,
    e.g. over batches and ranks during training).

    Raises:
        DataError: the matrix holds no example.
    """
    counts = cm.counts
    if counts.shape != (len(cm.labels), len(cm.labels) + 1) or counts.sum() <= 0:
        raise data_error(f"a confusion matrix of {len(cm.labels)} labels needs shape ({len(cm.labels)}, "
                         f"{len(cm.labels) + 1}) and at least one example, got {counts.shape}", "confusion")
    n = len(cm.labels)
    tp = np.diag(counts[:, :n])
    support = counts.sum(axis=1)  # references per class
    predicted = counts[:, :n].sum(axis=0)  # valid predictions per class
    per_class = {}
    for i, label in enumerate(cm.labels):
        t, p, s = int(tp[i]), int(predicted[i]), int(support[i])
        fp, fn = p - t, s - t
        per_class[label] = ClassScores(precision=t / p if p else 0.0, recall=t / s if s else 0.0,
                                       f1=2 * t / (2 * t + fp + fn) if t + fp + fn else 0.0, support=s)
    total = int(counts.sum())
    macro_f1 = sum(s.f1 for s in per_class.values()) / n
    return ClassificationReport(accuracy=int(tp.sum()) / total, macro_f1=macro_f1, per_class=per_class,
                                confusion=cm, invalid=int(counts[:, n].sum()))


def _checked(predictions: Any, references: Any) -> tuple[list[str | None], list[str]]:
    predictions = check_column(predictions, "predictions")
    references = check_column(references, "references")
    check_same_length(predictions, references)
    refs = [check_text(r, f"references[{i}]") for i, r in enumerate(references)]
    preds = [None if p is None else check_text(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    return preds, refs


def choice_key(text: str) -> str:
    """The form :func:`match_choice` compares: NFC, lowercase, punctuation and whitespace stripped from both
    ends, inner whitespace collapsed to single spaces (inner punctuation is kept: ``"B) Paris"`` ->
    ``"b) paris"``). Articles are kept, since choices are often the letters ``A``..``D``."""
    text = " ".join(unicodedata.normalize("NFC", text).lower().split())
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or is_punctuation(text[start])):
        start += 1
    while end > start and (text[end - 1].isspace() or is_punctuation(text[end - 1])):
        end -= 1
    return text[start:end]


def match_choice(text: str, choices: Sequence[str]) -> str | None:
    """The choice a generated ``text`` picks, or None when it picks none (an invalid prediction).

    Rules, on :func:`choice_key` forms of the text and of each choice:

    1. the text equals a choice (``"(B)"``, ``" b. "`` and ``"B"`` all pick ``B``);
    2. else the text *starts with* a choice followed by a character that is not a letter, digit or mark
       (``"B) Paris"``, ``"B, because..."``, ``"Paris is the capital"`` pick ``B``/``Paris``, but
       ``"Berlin"`` does not pick ``B``); of several such choices, the longest;
    3. else None.

    Returns:
        The matching element of ``choices``, as given.

    Raises:
        DataError: ``text`` is not a string.
        ConfigError: ``choices`` is empty, holds a non-string or a choice of nothing but punctuation and
            spaces, or two choices have the same key (``"Yes"`` and ``"yes."``).
    """
    key = choice_key(check_text(text, "text"))
    keys = _choice_keys(choices)
    if key in keys:
        return keys[key]
    prefixes = [k for k in keys if key.startswith(k) and not is_word_char(key[len(k)])]
    return keys[max(prefixes, key=len)] if prefixes else None


def _choice_keys(choices: Any) -> dict[str, str]:
    """``{choice_key(choice): choice}``, checked."""
    if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
        raise ConfigError(f"`choices` must be a non-empty list of strings, got {choices!r:.80}")
    keys: dict[str, str] = {}
    for i, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise ConfigError(f"`choices[{i}]` must be a string, got {type(choice).__name__}: {choice!r:.80}")
        k = choice_key(choice)
        if not k:
            raise ConfigError(f"`choices[{i}]` is {choice!r:.80}: a choice needs a character other than "
                              "punctuation and spaces")
        if k in keys:
            raise ConfigError(f"`choices` {keys[k]!r:.80} and {choice!r:.80} are the same after normalisation "
                              f"({k!r:.80}): a generated answer could not tell them apart")
        keys[k] = choice
    return keys
