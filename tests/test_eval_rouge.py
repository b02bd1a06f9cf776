"""ROUGE-L F-measure (reference: Google's ``rouge-score``, ``RougeScorer(["rougeL"])``; on Unicode text
the same scorer given an independent tokenizer, written with the ``regex`` package's script classes,
that tokenizes as pyft documents)."""

from __future__ import annotations

import unicodedata

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenizers
from rouge_score import tokenize as rouge_tokenize

from pyft.errors import DataError
from pyft.eval.rouge import lcs_length, rouge_l, rouge_tokens


class UnicodeTokenizer(tokenizers.Tokenizer):
    """pyft's documented rule: NFC + lowercase; each Han/kana character (with its marks) is a token; other
    tokens are runs of letters and digits, each with its marks."""

    CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}]"
    PATTERN = regex.compile(rf"{CJK}\p{{M}}*|(?:(?!{CJK})[\p{{L}}\p{{N}}]\p{{M}}*)+")

    def tokenize(self, text):
        return self.PATTERN.findall(unicodedata.normalize("NFC", text.lower()))


DEFAULT = rouge_scorer.RougeScorer(["rougeL"])
UNICODE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer())

ASCII_CASES = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat was sitting on a mat"),
    ("on the mat the cat sat", "the cat sat on the mat"),
    ("completely different words", "nothing in common here"),
    ("", "a reference"),
    ("a prediction", ""),
    ("!!! ...", "..."),
    ("In 1990-2000, GDP grew 3.5%.", "GDP grew 3.5% from 1990 to 2000"),
    ("foo_bar BAZ", "Foo bar baz"),
    ("a a a b", "a b a b a"),
    ("The quick brown fox jumps over the lazy dog. " * 3, "A quick brown dog jumps over the lazy fox. " * 2),
    ("It's 5 o'clock; isn't it?", "it is five o clock"),
]


@pytest.mark.parametrize("prediction, reference", ASCII_CASES)
def test_ascii_equals_rouge_score(prediction, reference):
    assert rouge_tokens(prediction) == rouge_tokenize.tokenize(prediction, None)
    assert rouge_l(prediction, reference) == DEFAULT.score(reference, prediction)["rougeL"].fmeasure


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="abcAB 019.,_-'\n", max_size=40), st.text(alphabet="abcC 01.-\t", max_size=40))
def test_ascii_property_equals_rouge_score(prediction, reference):
    assert rouge_tokens(prediction) == rouge_tokenize.tokenize(prediction, None)
    assert rouge_l(prediction, reference) == DEFAULT.score(reference, prediction)["rougeL"].fmeasure


UNICODE_CASES = [
    ("北京大学是一所大学", "北京大学很大"),
    ("東京タワーに行きました", "東京タワーへ行った"),
    ("Café au lait très chaud", "un café au lait"),
    ("Привет, мир! Как дела?", "привет мир"),
    ("नमस्ते दुनिया", "नमस्ते"),
    ("안녕하세요 세계", "안녕하세요"),
    ("GPT-4 说：你好，世界", "GPT 4 说 你好"),
    ("I ❤️ pizza 🍕", "I love pizza"),
    ("Straße über Äpfel", "strasse uber apfel"),
]


@pytest.mark.parametrize("prediction, reference", UNICODE_CASES)
def test_unicode_equals_rouge_score_with_the_documented_tokenizer(prediction, reference):
    assert rouge_tokens(prediction) == UnicodeTokenizer().tokenize(prediction)
    assert rouge_tokens(reference) == UnicodeTokenizer().tokenize(reference)
    assert rouge_l(prediction, reference) == UNICODE.score(reference, prediction)["rougeL"].fmeasure


def test_rouge_score_default_drops_non_ascii_where_pyft_does_not():
    prediction, reference = UNICODE_CASES[0]
    assert DEFAULT.score(reference, prediction)["rougeL"].fmeasure == 0.0
    # "北京大学是一所大学" vs "北京大学很大": LCS 北京大学+大 = 5 of 9 and 6 characters
    assert rouge_l(prediction, reference) == pytest.approx(2 * (5 / 9) * (5 / 6) / (5 / 9 + 5 / 6))
    assert rouge_tokenize.tokenize("café", None) == ["caf"]
    assert rouge_tokens("café") == ["café"]


def test_tokens_by_hand():
    assert rouge_tokens("Café au lait!") == ["café", "au", "lait"]
    assert rouge_tokens("北京 is big") == ["北", "京", "is", "big"]
    assert rouge_tokens("cafe\u0301") == ["café"]  # decomposed accent: NFC, one token
    assert rouge_tokens("नमस्ते") == ["नमस्ते"]  # vowel signs are marks: the word stays whole
    assert rouge_tokens("foo_bar ❤️x") == ["foo", "bar", "x"]
    assert rouge_tokens("ＡＢＣ１２") == ["ａｂｃ１２"]  # full-width letters are letters (lowercased, not NFKC)


def test_lcs_and_f_measure_by_hand():
    assert lcs_length(["a", "b", "c", "d"], ["a", "c", "b", "d"]) == 3
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    # 3 of 3 prediction tokens, 3 of 6 reference tokens: P = 1, R = 1/2, F = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 0.0  # rouge-score: no tokens, no score


def test_several_references_take_the_best_as_score_multi():
    refs = ["the dog barked", "a cat sat on a mat", "cat"]
    prediction = "the cat sat on the mat"
    expected = DEFAULT.score_multi(refs, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, refs) == expected
    assert expected > max(DEFAULT.score(r, prediction)["rougeL"].fmeasure for r in refs[::2])


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="`prediction` must be a string"):
        rouge_l(b"bytes", "x")
    with pytest.raises(DataError, match=r"`reference\[0\]` must be a string, got NoneType"):
        rouge_l("x", [None])
