"""pyft.eval.metrics: corpus aggregates over lists (references: a string or a list per example), input
errors, and the package's promise to import without torch or any oracle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

import pyft.eval
from pyft.errors import DataError
from pyft.eval import metrics
from pyft.eval.metrics import GENERATION_KEYS, generation_metrics, generation_scores

PREDICTIONS = ["The Eiffel Tower", "the cat sat on the mat", "Paris", "1990-2000, roughly.", ""]
REFERENCES = ["Eiffel Tower", ["a cat on a mat", "the dog"], ["London", "paris!"], "From 1990 to 2000", "nothing"]


def test_generation_metrics_by_hand_and_against_the_oracles():
    result = generation_metrics(PREDICTIONS, REFERENCES)
    assert set(result) == {"n", *GENERATION_KEYS}
    assert result["n"] == 5
    assert result["exact_match"] == pytest.approx(2 / 5)  # examples 0 and 2
    # token F1: 1, 6/7 (best reference), 1, "19902000 roughly" vs "from 1990 to 2000": 0, empty vs word: 0
    assert result["token_f1"] == pytest.approx((1 + 6 / 7 + 1 + 0 + 0) / 5)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = [[r] if isinstance(r, str) else r for r in REFERENCES]
    rouge = [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, refs)]
    assert result["rouge_l"] == pytest.approx(sum(rouge) / 5, abs=1e-15)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(2)]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, streams).score, abs=1e-9)
    assert result["bleu"] > 0


def test_generation_scores_per_example():
    rows = generation_scores(PREDICTIONS, REFERENCES)
    assert [set(r) for r in rows] == [set(GENERATION_KEYS)] * 5
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert rows[1]["token_f1"] == pytest.approx(6 / 7)
    refs = [[r] if isinstance(r, str) else r for r in REFERENCES]
    for row, p, r in zip(rows, PREDICTIONS, refs):
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(p, r).score, abs=1e-9)
    means = generation_metrics(PREDICTIONS, REFERENCES)
    for key in ("exact_match", "token_f1", "rouge_l"):
        assert means[key] == pytest.approx(sum(r[key] for r in rows) / len(rows))


def test_unicode_example():
    result = generation_metrics(["北京大学", "«Café»"], ["北京", "café"])
    assert result["exact_match"] == 0.5
    assert result["token_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["rouge_l"] == pytest.approx((2 / 3 + 1) / 2)


@pytest.mark.parametrize("predictions, references, message, field", [
    (["a", "b", "c"], ["a", "b"], "3 predictions but 2 references", "predictions"),
    (["a", "b"], ["a", 5], r"`references\[1\]` must be a string or a list of strings, got int", "references[1]"),
    (["a"], [["x", None]], r"`references\[0\]\[1\]` must be a string, got NoneType", "references[0][1]"),
    (["a"], [[]], r"`references\[0\]` is an empty list", "references[0]"),
    (["a", None], ["a", "b"], r"`predictions\[1\]` must be a string, got NoneType", "predictions[1]"),
    ("abc", ["a", "b", "c"], "`predictions` must be a list", "predictions"),
    ([], [], "no examples", "predictions"),
])
def test_bad_inputs_raise_data_errors(predictions, references, message, field):
    for fn in (generation_metrics, generation_scores):
        with pytest.raises(DataError, match=message) as err:
            fn(predictions, references)
        assert err.value.field == field


def test_public_api_is_reexported():
    for name in metrics.__all__:
        assert getattr(metrics, name) is not None
    assert {"exact_match", "token_f1", "rouge_l", "corpus_bleu", "sentence_bleu", "classification_metrics",
            "confusion_matrix", "match_choice", "confusion_matrix_png"} <= set(metrics.__all__)


def test_imports_neither_torch_nor_plotting_nor_oracles():
    code = ("import sys, pyft.eval.metrics\n"
            "heavy = ['torch', 'matplotlib', 'sklearn', 'sacrebleu', 'rouge_score', 'nltk', 'regex']\n"
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


#: The metric modules: never torch, not even lazily (the model-evaluation modules beside them may).
METRIC_MODULES = {"__init__", "_inputs", "_unicode", "answers", "bleu", "classification", "metrics", "plots",
                  "rouge"}


def test_no_source_imports_torch_even_lazily():
    root = Path(pyft.eval.__file__).parent
    assert METRIC_MODULES <= {p.stem for p in root.glob("*.py")}
    for path in sorted(root.glob("*.py")):
        forbidden = {"sklearn", "sacrebleu", "rouge_score"} | ({"torch"} if path.stem in METRIC_MODULES else set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in forbidden]
            assert not bad, f"{path.name} imports {bad}"
