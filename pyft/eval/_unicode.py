"""Character classes shared by the text metrics: punctuation, word characters and CJK characters.

All predicates take one character (a ``str`` of length 1). Categories are Unicode general categories
(``unicodedata.category``) of the Python build's Unicode database.
"""

from __future__ import annotations

import string
import unicodedata
from bisect import bisect_right

#: SQuAD's punctuation: ASCII ``string.punctuation``, including the symbols ``$+<=>^`|~``.
ASCII_PUNCTUATION = frozenset(string.punctuation)

#: Code point ranges (inclusive) whose letters, digits and marks are split into one token per character:
#: the scripts written without spaces between words (Chinese Han, Japanese kana). Korean Hangul is not
#: here: it is written with spaces, so its words stay whole.
CJK_RANGES = (
    (0x2E80, 0x2FDF),  # CJK Radicals Supplement, Kangxi Radicals
    (0x3005, 0x3007),  # 々 〆 〇 (iteration mark, closing mark, ideographic zero)
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3038, 0x303B),  # more Hangzhou numerals, vertical iteration mark
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x31F0, 0x31FF),  # Katakana Phonetic Extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF66, 0xFF9F),  # halfwidth Katakana
    (0x1B000, 0x1B16F),  # Kana Supplement, Kana Extended-A, Small Kana Extension
    (0x20000, 0x3FFFF),  # Supplementary and Tertiary Ideographic Planes (Extensions B and later)
)
_CJK_STARTS = [lo for lo, _ in CJK_RANGES]


def is_punctuation(ch: str) -> bool:
    """ASCII punctuation (SQuAD's set) or any Unicode punctuation (general category ``P*``).

    Non-ASCII symbols (``S*``: ``€``, ``©``, emoji) are not punctuation: they can carry meaning.
    """
    return ch in ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def is_word_char(ch: str) -> bool:
    """A letter, digit or mark (general categories ``L*``, ``N*``, ``M*``).

    Marks are included so that words in scripts with combining vowel signs (Devanagari, Thai) or in
    decomposed form stay whole; the underscore (``Pc``) is not a word character.
    """
    return unicodedata.category(ch)[0] in "LNM"


def is_mark(ch: str) -> bool:
    """A combining mark (general category ``M*``): it belongs to the character before it."""
    return unicodedata.category(ch).startswith("M")


def is_cjk(ch: str) -> bool:
    """Whether ``ch`` lies in one of :data:`CJK_RANGES`."""
    cp = ord(ch)
    i = bisect_right(_CJK_STARTS, cp) - 1
    return i >= 0 and cp <= CJK_RANGES[i][1]


def split_cjk(token: str) -> list[str]:
    """Split every CJK character of ``token`` off as its own piece; the other characters stay in runs.

    Combining marks stay with the character before them. Example: ``"abc北京d"`` ->
    ``["abc", "北", "京", "d"]``.
    """
    if token.isascii():
        return [token]
    pieces: list[str] = []
    run = ""  # the piece being built; a CJK piece is closed as soon as a non-mark follows
    run_is_cjk = False
    for ch in token:
        if run and is_mark(ch):
            run += ch
        elif is_cjk(ch):
            if run:
                pieces.append(run)
            run, run_is_cjk = ch, True
        else:
            if run and run_is_cjk:
                pieces.append(run)
                run = ""
            run += ch
            run_is_cjk = False
    if run:
        pieces.append(run)
    return pieces
