"""Task metrics for ``pyft eval``: per-example scores and corpus aggregates of generated text, and
classification metrics of predicted labels.

Units: exact match, token F1 and ROUGE-L are in 0..1 (per example and as means), BLEU in 0..100 (as
sacrebleu reports it), classification scores in 0..1. The definitions live in :mod:`pyft.eval.answers`,
:mod:`pyft.eval.rouge`, :mod:`pyft.eval.bleu` and :mod:`pyft.eval.classification`; this module gathers
them. Nothing here imports torch (or matplotlib, except :func:`confusion_matrix_png` when called).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyft.eval._inputs import text_pairs
from pyft.eval.answers import answer_tokens, exact_match, normalize_answer, token_f1
from pyft.eval.bleu import BleuScore, corpus_bleu, sentence_bleu, tokenize_13a
from pyft.eval.classification import (
    OTHER_COLUMN,
    ClassificationReport,
    ClassScores,
    ConfusionMatrix,
    classification_metrics,
    classification_report,
    confusion_matrix,
    match_choice,
)
from pyft.eval.plots import confusion_matrix_png
from pyft.eval.rouge import rouge_l, rouge_tokens

#: The keys of :func:`generation_scores` rows and (with ``"n"``) of :func:`generation_metrics`.
GENERATION_KEYS = ("exact_match", "token_f1", "rouge_l", "bleu")


def generation_scores(predictions: Sequence[str],
                      references: Sequence[str | Sequence[str]]) -> list[dict[str, float]]:
    """Per-example scores of generated text, one dict per example.

    Args:
        predictions: one generated text per example.
        references: per example, its reference text or a list of acceptable references (each score takes the
            best reference).

    Returns:
        ``[{"exact_match": 0|1, "token_f1": 0..1, "rouge_l": 0..1, "bleu": 0..100}, ...]``, where ``bleu``
        is sentence BLEU (:func:`~pyft.eval.bleu.sentence_bleu`).

    Raises:
        DataError: lengths differ or are 0, a prediction or reference is not a string, an example has an
            empty reference list.
    """
    preds, refs = text_pairs(predictions, references)
    return [{"exact_match": exact_match(p, r), "token_f1": token_f1(p, r), "rouge_l": rouge_l(p, r),
             "bleu": sentence_bleu(p, r).score} for p, r in zip(preds, refs)]


def generation_metrics(predictions: Sequence[str],
                       references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Corpus metrics of generated text.

    Arguments and errors as :func:`generation_scores`.

    Returns:
        ``{"n": examples, "exact_match": mean 0..1, "token_f1": mean 0..1, "rouge_l": mean 0..1,
        "bleu": corpus BLEU 0..100}``. Corpus BLEU pools n-gram counts over all examples
        (:func:`~pyft.eval.bleu.corpus_bleu`); it is not the mean of sentence BLEU.
    """
    preds, refs = text_pairs(predictions, references)
    n = len(preds)
    return {"n": n,
            "exact_match": sum(exact_match(p, r) for p, r in zip(preds, refs)) / n,
            "token_f1": sum(token_f1(p, r) for p, r in zip(preds, refs)) / n,
            "rouge_l": sum(rouge_l(p, r) for p, r in zip(preds, refs)) / n,
            "bleu": corpus_bleu(preds, refs).score}


__all__ = [
    "GENERATION_KEYS",
    "OTHER_COLUMN",
    "BleuScore",
    "ClassScores",
    "ClassificationReport",
    "ConfusionMatrix",
    "answer_tokens",
    "classification_metrics",
    "classification_report",
    "confusion_matrix",
    "confusion_matrix_png",
    "corpus_bleu",
    "exact_match",
    "generation_metrics",
    "generation_scores",
    "match_choice",
    "normalize_answer",
    "rouge_l",
    "rouge_tokens",
    "sentence_bleu",
    "token_f1",
    "tokenize_13a",
]
