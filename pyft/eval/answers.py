"""SQuAD exact match and token F1 for short generated answers.

The definitions are those of the official SQuAD v1.1 evaluation script, with SQuAD v2's rule for empty
answers. The answer normalisation (:func:`normalize_answer`) is SQuAD's — lowercase, drop punctuation,
drop the articles ``a``/``an``/``the``, collapse whitespace — with two deliberate Unicode extensions,
both no-ops on ASCII text, so that ASCII scores equal SQuAD's exactly:

- text is first put in Unicode normal form NFC, so that composed and decomposed accents compare equal
  (NFC only: compatibility forms such as ``x²`` or full-width letters are kept as written);
- punctuation is ASCII ``string.punctuation`` (SQuAD's set) **plus** every Unicode punctuation character
  (general category ``P*``: ``«»``, ``¿``, ``、``, ``。``, curly quotes...); non-ASCII symbols (``€``, emoji)
  are kept.

Token F1 splits the normalised answer on whitespace as SQuAD does, and in addition splits every Han and
kana character into its own token (scripts written without spaces; see :mod:`pyft.eval._unicode`), as the
MLQA evaluation does for Chinese, so that a partly right Chinese or Japanese answer gets partial credit.

Scores are floats in 0..1; with several references an example scores its best one.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

from pyft.eval._inputs import check_text, reference_list
from pyft.eval._unicode import is_punctuation, split_cjk

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation, Unicode-aware (see the module docstring).

    Steps: NFC, ``str.lower``, delete punctuation characters (not replaced by spaces: ``"don't"`` ->
    ``"dont"``), replace the whole words ``a``, ``an``, ``the`` with spaces, join the whitespace-separated
    words with single spaces.
    """
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if not is_punctuation(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The tokens token F1 compares: the words of :func:`normalize_answer`, CJK characters one per token."""
    return [piece for word in normalize_answer(text).split() for piece in split_cjk(word)]


def exact_match(prediction: str, reference: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals the normalised reference (any of several), else 0.0.

    Raises:
        DataError: ``prediction`` or a reference is not a string, or ``reference`` is an empty list.
    """
    pred = normalize_answer(check_text(prediction, "prediction"))
    refs = reference_list(reference, "reference")
    return float(any(pred == normalize_answer(ref) for ref in refs))


def _f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)  # SQuAD v2: both empty is a match, one empty scores 0
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str | Sequence[str]) -> float:
    """SQuAD's token-overlap F1 between the prediction's and the reference's :func:`answer_tokens`.

    Overlap counts tokens with multiplicity (bag of tokens); precision is over the prediction's tokens,
    recall over the reference's. Both empty (e.g. an answer that is only an article) scores 1.0, one empty
    0.0. With several references, the best F1.

    Raises:
        DataError: ``prediction`` or a reference is not a string, or ``reference`` is an empty list.
    """
    pred = answer_tokens(check_text(prediction, "prediction"))
    refs = reference_list(reference, "reference")
    return max(_f1(pred, answer_tokens(ref)) for ref in refs)
