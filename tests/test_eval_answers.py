"""SQuAD exact match and token F1 (reference: the published SQuAD v1.1 definition, with v2's rule for
empty answers, written out below; pyft adds NFC and Unicode punctuation, no-ops on ASCII)."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyft.errors import DataError
from pyft.eval.answers import answer_tokens, exact_match, normalize_answer, token_f1


def squad_normalize(s: str) -> str:
    """SQuAD v1.1's normalize_answer: lower, remove ASCII punctuation, remove articles, fix whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
    """SQuAD's token F1, with SQuAD v2's rule when either side has no token."""
    pred, gold = squad_normalize(prediction).split(), squad_normalize(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


ASCII_CASES = [
    ("The Eiffel Tower", "eiffel tower"),
    ("A cat's toy.", "cats toy"),
    ("an apple", "the apple"),
    ("  Hello,   world!  ", "hello world"),
    ("the the cat", "cat the"),
    ("the cat sat on the mat", "a cat on a mat"),
    ("$100", "100"),
    ("don't", "dont"),
    ("theater", "heater"),
    ("A", ""),
    ("", "something"),
    ("1,000", "1000"),
    ("U.S.A.", "usa"),
    ("a-b", "ab"),
    ("New\tYork\ncity", "new york city"),
    ("Anthem of the anther", "anthem anther"),
    ("red red red blue", "red blue blue"),
    ("x_y", "xy"),
]


@pytest.mark.parametrize("prediction, reference", ASCII_CASES)
def test_ascii_equals_the_squad_definition(prediction, reference):
    assert normalize_answer(prediction) == squad_normalize(prediction)
    assert exact_match(prediction, reference) == float(squad_normalize(prediction) == squad_normalize(reference))
    assert token_f1(prediction, reference) == squad_f1(prediction, reference)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aAnNtThHe xyz.,'!-_$\t\n01", max_size=40), st.text(alphabet="aAnThe xyz.,'-\n0", max_size=40))
def test_ascii_property_equals_the_squad_definition(prediction, reference):
    assert normalize_answer(prediction) == squad_normalize(prediction)
    assert exact_match(prediction, reference) == float(squad_normalize(prediction) == squad_normalize(reference))
    assert token_f1(prediction, reference) == squad_f1(prediction, reference)


def test_hand_computed_values():
    # "cat sat on mat" vs "cat on mat": 3 common tokens, P = 3/4, R = 1, F1 = 6/7
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7, abs=1e-15)
    # bag of tokens: "red red red blue" vs "red blue blue" share red×1 + blue×1: P = 2/4, R = 2/3
    assert token_f1("red red red blue", "red blue blue") == pytest.approx(4 / 7, abs=1e-15)
    assert exact_match("The  Eiffel-Tower!", "eiffeltower") == 1.0
    assert exact_match("Eiffel Tower", "Eiffel Towers") == 0.0


def test_empty_answers_follow_squad_v2():
    assert token_f1("the", "") == 1.0  # both normalise to nothing
    assert token_f1("", "an") == 1.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0
    assert exact_match("", "a") == 1.0


def test_several_references_take_the_best():
    assert exact_match("Paris", ["London", "paris."]) == 1.0
    assert exact_match("Paris", ["London", "Rome"]) == 0.0
    assert token_f1("the big red car", ["a car", "big red car"]) == 1.0
    assert token_f1("big red car", ["red", "big car"]) == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("big red car", ("red",)) == pytest.approx(0.5)


def test_unicode_punctuation_is_removed_where_squad_keeps_it():
    # «», ¿ and full-width/CJK punctuation are Unicode punctuation (P*): removed by pyft, kept by SQuAD
    for prediction, reference in [("«Café!»", "café"), ("¿Qué hora es?", "qué hora es"), ("東京。", "東京"),
                                  ("“Quoted” — text", "quoted text"), ("a，b", "ab")]:
        assert exact_match(prediction, reference) == 1.0, prediction
        assert squad_normalize(prediction) != squad_normalize(reference)
    # symbols (S*) are not punctuation: the euro sign and emoji stay
    assert normalize_answer("10 € ❤") == "10 € ❤"
    assert exact_match("I ❤ NY", "I NY") == 0.0


def test_unicode_text_is_compared_in_nfc():
    decomposed, composed = "Cafe\u0301", "Caf\u00e9"
    assert exact_match(decomposed, composed) == 1.0
    assert token_f1(f"{decomposed} noir", composed) == pytest.approx(2 / 3)
    # compatibility forms are kept (NFC, not NFKC): superscript two is not the digit 2
    assert exact_match("x²", "x2") == 0.0


def test_cjk_characters_are_tokens_for_f1():
    assert answer_tokens("abc北京d e") == ["abc", "北", "京", "d", "e"]
    assert answer_tokens("ひらがなカタカナ") == list("ひらがなカタカナ")
    assert answer_tokens("한국어 단어") == ["한국어", "단어"]  # Hangul is written with spaces: words stay whole
    # "北京大学" vs "北京": 2 common characters, P = 2/4, R = 1, F1 = 2/3 (SQuAD's whitespace split: 0)
    assert token_f1("北京大学", "北京") == pytest.approx(2 / 3)
    assert squad_f1("北京大学", "北京") == 0.0
    assert exact_match("北京大学", "北京") == 0.0


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="`prediction` must be a string, got NoneType") as err:
        exact_match(None, "x")
    assert err.value.field == "prediction"
    with pytest.raises(DataError, match="empty list") as err:
        token_f1("x", [])
    assert err.value.field == "reference"
    with pytest.raises(DataError, match=r"`reference\[1\]` must be a string, got int") as err:
        token_f1("x", ["a", 3])
    assert err.value.field == "reference[1]"
    with pytest.raises(DataError, match="must be a string or a list of strings"):
        exact_match("x", 7)
