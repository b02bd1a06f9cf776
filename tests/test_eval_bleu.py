"""BLEU and the 13a tokenizer (reference: ``sacrebleu`` with default options: ``corpus_bleu``,
``sentence_bleu`` and its ``13a`` tokenizer), plus hand-computed scores."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from pyft.errors import DataError
from pyft.eval.bleu import corpus_bleu, sentence_bleu, tokenize_13a

TOL = 1e-9

# (hypothesis, references of this example)
CASES = {
    "identical": ("The quick brown fox jumps over the lazy dog.", ["The quick brown fox jumps over the lazy dog."]),
    "partial": ("The cat sat on the mat.", ["The cat is sitting on the mat."]),
    "reordered": ("on the mat the cat sat", ["the cat sat on the mat"]),
    "no overlap": ("Completely unrelated words here", ["Nothing matches at all"]),
    "empty hypothesis": ("", ["There is a reference."]),
    "empty reference": ("There is a hypothesis.", [""]),
    "both empty": ("", [""]),
    "short": ("Hello world", ["Hello world"]),
    "case": ("THE CAT SAT ON THE MAT", ["the cat sat on the mat"]),
    "multiple references": ("It is a guide to action which ensures that the military always obeys the commands",
                            ["It is a guide to action that ensures that the military will forever heed commands",
                             ("It is the guiding principle which guarantees the military forces always being "
                              "under the command of the Party"),
                             "It is the practical guide for the army always to heed the directions of the party"]),
    "closest reference tie": ("a b c d e f", ["a b c d e", "a b c d e f g", "x"]),
    "accents": ("Le café était très chaud, n'est-ce pas ?", ["Le café était vraiment très chaud, n'est-ce pas ?"]),
    "cjk": ("我喜欢吃苹果。 我 喜欢 苹果", ["我喜欢吃苹果。 我 爱 苹果"]),
    "emoji": ("I ❤️ pizza 🍕 and 🍣!", ["I ❤️ pizza 🍕 and sushi!"]),
    "punctuation and numbers": ("In 1990-2000, GDP grew by 3.5% (from $1,000.50 to $1,035) -- see p.5/6.",
                                ["From 1990-2000 GDP grew 3.5% ($1,000.50 to $1,035); see p. 5/6."]),
    "entities and markup": ("A &amp; B &lt;tag&gt; &quot;x&quot; <skipped> word-\nbreak",
                            ['A & B <tag> "x" wordbreak']),
    "trailing whitespace": ("trailing hyphen-\n", ["trailing hyphen-"]),
}


def _streams(refs_per_example):
    """sacrebleu's layout: one stream per reference position, ``None`` where an example has fewer."""
    width = max(len(r) for r in refs_per_example)
    return [[r[k] if k < len(r) else None for r in refs_per_example] for k in range(width)]


def _same(ours, theirs):
    assert ours.score == pytest.approx(theirs.score, abs=TOL)
    assert list(ours.precisions) == pytest.approx(theirs.precisions, abs=TOL)
    assert ours.brevity_penalty == pytest.approx(theirs.bp, abs=TOL)
    assert (ours.stats.hyp_len, ours.stats.ref_len) == (theirs.sys_len, theirs.ref_len)


@pytest.mark.parametrize("name", CASES)
def test_sentence_bleu_equals_sacrebleu(name):
    hyp, refs = CASES[name]
    _same(sentence_bleu(hyp, refs), sacrebleu.sentence_bleu(hyp, refs))


@pytest.mark.parametrize("name", CASES)
def test_one_segment_corpus_bleu_equals_sacrebleu(name):
    hyp, refs = CASES[name]
    _same(corpus_bleu([hyp], [refs]), sacrebleu.corpus_bleu([hyp], [[r] for r in refs]))


def test_corpus_bleu_equals_sacrebleu():
    hyps = [h for h, _ in CASES.values()]
    refs = [r for _, r in CASES.values()]  # 1 to 3 references per example
    ours, theirs = corpus_bleu(hyps, refs), sacrebleu.corpus_bleu(hyps, _streams(refs))
    _same(ours, theirs)
    assert 0 < ours.score < 100
    # a string reference is one reference
    single = [r[0] for r in refs]
    _same(corpus_bleu(hyps, single), sacrebleu.corpus_bleu(hyps, [single]))


def test_the_scores_are_not_trivial():
    # the fixed cases exercise every branch: full match, zero, smoothing, brevity penalty, effective order
    scores = {name: sentence_bleu(h, r) for name, (h, r) in CASES.items()}
    assert scores["identical"].score == pytest.approx(100)
    assert scores["no overlap"].score == 0.0 and scores["empty hypothesis"].score == 0.0
    assert scores["short"].score == pytest.approx(100)  # effective order: only 1- and 2-grams
    assert corpus_bleu(["Hello world"], ["Hello world"]).score == 0.0  # corpus BLEU: no 4-gram, score 0
    assert scores["case"].score == 0.0  # case-sensitive
    assert scores["partial"].brevity_penalty < 1
    assert 0 < scores["multiple references"].score < 100


def test_hand_computed_scores():
    # "a b c d e" vs "a b c d f": precisions 4/5, 3/4, 2/3, 1/2; no brevity penalty
    assert sentence_bleu("a b c d e", "a b c d f").score == pytest.approx(100 * 0.2 ** 0.25, abs=TOL)
    # "a b c d" vs "a b x d": 3/4, 1/3, then exp smoothing for the orders with no match: 1/(2·2), 1/(4·1)
    score = sentence_bleu("a b c d", "a b x d")
    assert score.precisions == pytest.approx((75, 100 / 3, 25, 25))
    assert score.score == pytest.approx(100 * (0.75 / 3 / 16) ** 0.25, abs=TOL)
    # brevity penalty: 4 hypothesis tokens, closest reference 6 tokens
    bp = sentence_bleu("a b c d", "a b c d e f").brevity_penalty
    assert bp == pytest.approx(math.exp(1 - 6 / 4))
    # clipping: "the" ×4 in the hypothesis, at most ×2 in one reference
    assert sentence_bleu("the the the the", ["the cat the", "the"]).stats.correct[0] == 2


TOKENIZER_CASES = [
    "Hello, world! It's 3.14 -- isn't it?",
    "1,000,000.50 and 1990-2000; e-mail: a@b.com /path/to",
    "x.y,z 5.x x.5 ,5 5, a-5 5-a",
    "{braces} [brackets] (parens) <angles> `tick` ~tilde ^caret |pipe _underscore",
    "&amp;&amp;lt; &quot;q&quot; &gt;&lt; &unknown;",
    "<skipped>skip line-\nbreak\nnew line\r\nwindows",
    "café… «guillemets» 東京。 ❤️🍕 ａｂｃ，",
    "\u00a0non-breaking\u2003em-space\u3000ideographic",
    "",
    "   ",
]


@pytest.mark.parametrize("text", TOKENIZER_CASES)
def test_tokenizer_equals_sacrebleu_13a(text):
    assert tokenize_13a(text) == Tokenizer13a()(text).split()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab1 2.,-'\"&;<>/()[]{}!?$%@\n\t\u00e9\u3002q", max_size=60))
def test_tokenizer_property_equals_sacrebleu_13a(text):
    assert tokenize_13a(text) == Tokenizer13a()(text).split()


def test_tokenizer_by_hand():
    assert tokenize_13a("Hello, world!") == ["Hello", ",", "world", "!"]
    assert tokenize_13a("It costs $1,000.50.") == ["It", "costs", "$", "1,000.50", "."]
    assert tokenize_13a("1990-2000 e-mail") == ["1990", "-", "2000", "e-mail"]
    assert tokenize_13a("don't &amp; can't") == ["don't", "&", "can't"]
    assert tokenize_13a("北京。你好") == ["北京。你好"]  # 13a splits no non-ASCII character


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(DataError, match=r"`references\[1\]` must be a string or a list of strings, got NoneType"):
        corpus_bleu(["a", "b"], ["a", None])
    with pytest.raises(DataError, match="`hypotheses` must be a list"):
        corpus_bleu("a b", ["a"])
    with pytest.raises(DataError, match="empty"):
        corpus_bleu([], [])
    with pytest.raises(DataError, match="`hypothesis` must be a string"):
        sentence_bleu(None, "x")
