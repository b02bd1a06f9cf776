"""Classification metrics (reference: scikit-learn's ``accuracy_score``, ``f1_score(average="macro",
zero_division=0)``, ``precision_recall_fscore_support`` and ``confusion_matrix``), hand-counted confusion
matrices, and the mapping of generated text onto choices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.utils.multiclass import unique_labels

from pyft.errors import ConfigError, DataError
from pyft.eval.classification import OTHER_COLUMN, classification_metrics, confusion_matrix, match_choice

#: What scikit-learn is given for a ``None`` (invalid) prediction: a string in no label set.
INVALID = "\0invalid"

# name: (predictions, references, labels)
CASES = {
    "basic": (["cat", "cat", "cat", "bird", "dog", "dog"], ["cat", "dog", "cat", "bird", "dog", "cat"], None),
    "class never predicted": (["a", "b", "a", "a"], ["a", "b", "c", "a"], None),
    "class only predicted": (["a", "c", "a"], ["a", "b", "a"], None),
    "class only predicted, outside labels": (["a", "c", "a"], ["a", "b", "a"], ["a", "b"]),
    "single class": (["x", "x", "x"], ["x", "x", "x"], None),
    "single class, one invalid": (["x", None], ["x", "x"], None),
    "label in no example": (["a", "a", None], ["a", "b", "a"], ["b", "a", "z"]),
    "unicode labels": (["положительный", "中立", "😀", "中立", "отрицательный", None],
                       ["положительный", "отрицательный", "😀", "中立", "отрицательный", "😀"], None),
    "all invalid": ([None, "maybe"], ["yes", "no"], ["yes", "no"]),
}


# scikit-learn's confusion_matrix warns about a 1×1 result even when given `labels` (the single-class cases)
@pytest.mark.filterwarnings("ignore:A single label was found in 'y_true' and 'y_pred':UserWarning")
@pytest.mark.parametrize("name", CASES)
def test_equals_scikit_learn(name):
    predictions, references, labels = CASES[name]
    report = classification_metrics(predictions, references, labels)
    order = list(report.confusion.labels)
    if labels is None:
        assert order == list(unique_labels(references, [p for p in predictions if p is not None]))
    else:
        assert order == labels
    y_pred = [INVALID if p is None else p for p in predictions]

    assert report.accuracy == pytest.approx(skm.accuracy_score(references, y_pred), abs=1e-15)
    assert report.macro_f1 == pytest.approx(
        skm.f1_score(references, y_pred, labels=order, average="macro", zero_division=0), abs=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(references, y_pred, labels=order, zero_division=0)
    assert [c.precision for c in report.per_class.values()] == pytest.approx(p, abs=1e-12)
    assert [c.recall for c in report.per_class.values()] == pytest.approx(r, abs=1e-12)
    assert [c.f1 for c in report.per_class.values()] == pytest.approx(f, abs=1e-12)
    assert [c.support for c in report.per_class.values()] == s.tolist()
    assert list(report.per_class) == order

    counts = report.confusion.counts
    assert counts.dtype == np.int64 and counts.shape == (len(order), len(order) + 1)
    np.testing.assert_array_equal(counts[:, :-1], skm.confusion_matrix(references, y_pred, labels=order))
    invalid_per_row = [sum(1 for pr, rf in zip(y_pred, references) if rf == label and pr not in order)
                       for label in order]
    assert counts[:, -1].tolist() == invalid_per_row
    assert counts.sum() == len(references)  # nothing dropped
    assert report.invalid == sum(invalid_per_row)


def test_confusion_matrix_counts_by_hand():
    predictions, references, _ = CASES["basic"]
    cm = confusion_matrix(predictions, references)
    assert cm.labels == ("bird", "cat", "dog")  # sorted
    # rows = reference, columns = predicted bird, cat, dog, (other)
    assert cm.counts.tolist() == [[1, 0, 0, 0],
                                  [0, 2, 1, 0],
                                  [0, 1, 1, 0]]
    cm = confusion_matrix(["no", None, "maybe", "yes"], ["yes", "yes", "no", "yes"], labels=["yes", "no"])
    assert cm.labels == ("yes", "no")  # as given
    assert cm.counts.tolist() == [[1, 1, 1],
                                  [0, 0, 1]]
    assert cm.as_dict() == {"labels": ["yes", "no"], "columns": ["yes", "no", OTHER_COLUMN],
                            "counts": [[1, 1, 1], [0, 0, 1]]}


def test_report_by_hand_and_as_json():
    report = classification_metrics(["a", "b", None, "a"], ["a", "b", "b", "b"], labels=["a", "b"])
    assert report.accuracy == 0.5
    # a: TP 1, FP 1, FN 0 -> P 1/2, R 1, F1 2/3; b: TP 1, FP 0, FN 2 -> P 1, R 1/3, F1 1/2
    assert report.per_class["a"].f1 == pytest.approx(2 / 3) and report.per_class["b"].f1 == pytest.approx(0.5)
    assert report.macro_f1 == pytest.approx(7 / 12)
    assert report.invalid == 1
    data = json.loads(json.dumps(report.as_dict()))
    assert data["per_class"]["b"] == {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1": 0.5, "support": 3}
    assert data["confusion_matrix"]["counts"] == [[1, 0, 0], [1, 1, 1]]


def test_bad_inputs():
    with pytest.raises(DataError, match="2 predictions but 3 references") as err:
        classification_metrics(["a", "b"], ["a", "b", "c"])
    assert err.value.field == "predictions"
    with pytest.raises(DataError, match=r"`references\[1\]` must be a string, got int") as err:
        classification_metrics(["a", "b"], ["a", 1])
    assert err.value.field == "references[1]"
    with pytest.raises(DataError, match=r"`predictions\[0\]` must be a string, got float"):
        classification_metrics([1.0], ["a"])
    with pytest.raises(DataError, match=r"`references\[1\]` is 'c', which is not one of the labels"):
        classification_metrics(["a", "b"], ["a", "c"], labels=["a", "b"])
    with pytest.raises(ConfigError, match="`labels` lists 'a' more than once"):
        classification_metrics(["a"], ["a"], labels=["a", "b", "a"])
    with pytest.raises(ConfigError, match="`labels` must be a non-empty list"):
        classification_metrics(["a"], ["a"], labels=[])
    with pytest.raises(DataError, match="empty"):
        classification_metrics([], [])


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), (" b. ", "B"), ("**C**", "C"),  # rule 1: equal after normalisation
    ("B) Paris", "B"), ("B, because it is", "B"), ("a. the first one", "A"), ("C\nexplanation", "C"),  # rule 2
    ("Berlin", None), ("Answer: B", None), ("", None), ("D", None), ("...", None),  # invalid
])
def test_match_choice_letters(text, expected):
    assert match_choice(text, ["A", "B", "C"]) == expected


def test_match_choice_words_and_unicode():
    choices = ["Paris", "New York", "New York City", "Sí", "北京"]
    assert match_choice("paris!", choices) == "Paris"
    assert match_choice("Paris is the capital.", choices) == "Paris"
    assert match_choice("Parisian", choices) is None  # a prefix must end at a word boundary
    assert match_choice("new york city, of course", choices) == "New York City"  # the longest prefix
    assert match_choice("New York.", choices) == "New York"
    assert match_choice("¡SÍ!", choices) == "Sí"
    assert match_choice("Si\u0301", choices) == "Sí"  # decomposed accent: NFC
    assert match_choice("Si", choices) is None
    assert match_choice("北京。", choices) == "北京"
    assert match_choice("北京大学", choices) is None  # CJK letters continue the word


def test_match_choice_rejects_bad_choices():
    with pytest.raises(ConfigError, match="are the same after normalisation"):
        match_choice("yes", ["Yes", "yes."])
    with pytest.raises(ConfigError, match="a choice needs a character other than punctuation"):
        match_choice("x", ["A", "?!"])
    with pytest.raises(ConfigError, match="non-empty list"):
        match_choice("x", [])
    with pytest.raises(ConfigError, match="non-empty list"):
        match_choice("x", "AB")
    with pytest.raises(ConfigError, match=r"`choices\[1\]` must be a string"):
        match_choice("x", ["A", 2])
    with pytest.raises(DataError, match="`text` must be a string"):
        match_choice(None, ["A"])
