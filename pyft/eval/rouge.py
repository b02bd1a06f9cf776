"""ROUGE-L: the F-measure of the longest common subsequence (LCS) of tokens (Lin, 2004).

Computed as Google's ``rouge-score`` package computes ``rougeL`` (``RougeScorer(["rougeL"])``, no
stemming): precision = LCS / prediction tokens, recall = LCS / reference tokens,
F = 2PR / (P + R), and 0 when either side has no token.

Tokenization (:func:`rouge_tokens`) equals rouge-score's default on ASCII text — lowercase, every run of
letters and digits is a token, everything else separates — but is Unicode-aware where rouge-score's
default keeps only ``[a-z0-9]`` (it scores 0 for Chinese or Russian text and cuts ``café`` to ``caf``):

- text is put in NFC and lowercased (``str.lower``);
- a token is a run of Unicode letters and digits (general categories ``L*``, ``N*``) with their combining
  marks (``M*``); everything else (spaces, punctuation, symbols, emoji, ``_``), with any marks on it
  (e.g. the emoji variation selector U+FE0F), separates tokens;
- each Han or kana character is a token of its own (Chinese and Japanese are written without spaces;
  ranges in :mod:`pyft.eval._unicode`), the usual character-level ROUGE for these scripts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from pyft.eval._inputs import check_text, reference_list
from pyft.eval._unicode import is_mark, is_word_char, split_cjk

_ASCII_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """The tokens ROUGE-L compares (see the module docstring). ``"Café au lait!"`` ->
    ``["café", "au", "lait"]``; ``"北京 is big"`` -> ``["北", "京", "is", "big"]``."""
    text = text.lower()
    if text.isascii():  # the common case, and rouge-score's exact rule
        return _ASCII_TOKEN.findall(text)
    text = unicodedata.normalize("NFC", text)
    words: list[str] = []
    word = ""
    in_word = False  # whether the last base (non-mark) character was a letter or digit
    for ch in text:
        if not is_mark(ch):
            in_word = is_word_char(ch)
        if in_word:  # a mark goes with its base character: into the word, or out with a separator
            word += ch
        elif word:
            words.append(word)
            word = ""
    if word:
        words.append(word)
    return [piece for w in words for piece in split_cjk(w)]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of token lists ``a`` and ``b`` (dynamic programming,
    O(len(a)·len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a  # the shorter list indexes the row
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def _rouge_l_tokens(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(ref, pred)
    precision = lcs / len(pred)
    recall = lcs / len(ref)
    # rouge-score's order of operations, so that scores agree to the last bit
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_l(prediction: str, reference: str | Sequence[str]) -> float:
    """ROUGE-L F-measure in 0..1 of ``prediction`` against ``reference`` (the best of several references,
    as rouge-score's ``score_multi``).

    Raises:
        DataError: ``prediction`` or a reference is not a string, or ``reference`` is an empty list.
    """
    pred = rouge_tokens(check_text(prediction, "prediction"))
    refs = reference_list(reference, "reference")
    return max(_rouge_l_tokens(pred, rouge_tokens(ref)) for ref in refs)
