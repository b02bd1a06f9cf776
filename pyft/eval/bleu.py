"""BLEU (Papineni et al., 2002) exactly as ``sacrebleu`` computes it by default.

``corpus_bleu`` equals ``sacrebleu.corpus_bleu(hyps, ref_streams)`` and ``sentence_bleu`` equals
``sacrebleu.sentence_bleu(hyp, refs)``: case-sensitive, the 13a tokenizer (:func:`tokenize_13a`), n-grams
of orders 1..4, clipped counts against the per-n-gram maximum over the references, the closest
reference length (ties: the shorter) for the brevity penalty, and the ``exp`` smoothing of mteval-v13a
(the k-th order with no match counts as 1 / 2^k matches). Scores are in 0..100.

Corpus BLEU sums the counts over all segments before taking the ratio; a corpus whose hypotheses have
no 4-gram at all scores 0. Sentence BLEU uses the *effective order* (orders the hypothesis is too short
to have are left out of the geometric mean), as sacrebleu's ``sentence_bleu`` does.

References here are given per example (``references[i]`` = the references of hypothesis ``i``), not
as sacrebleu's reference streams; examples may have different numbers of references.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pyft.eval._inputs import check_text, reference_list, text_pairs

#: Highest n-gram order.
MAX_ORDER = 4

# mteval-v13a's tokenization rules (its "language-dependent part, assuming Western languages"), in order:
# 1. every ASCII punctuation character except  ' , - .  becomes a token: the code point ranges
#    {-~  [-`  space-&  (-+  :-@  and /;
# 2.-3. a period or comma becomes a token unless it sits between digits on that side (1.5, 1,000 stay);
# 4. a dash after a digit becomes a token (1990-2000 -> 1990 - 2000).
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
# mteval-v13a's language-independent part: the SGML entities it unescapes, in its order.
_13A_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize_13a(text: str) -> list[str]:
    """Tokens of ``text`` under mteval-v13a's rules (the WMT standard; sacrebleu's ``13a``), case kept.

    Removes ``<skipped>``, joins lines hyphenated at their end (``-\\n``), turns newlines into spaces,
    unescapes ``&quot; &amp; &lt; &gt;``, splits off punctuation (rules above), then splits on whitespace
    (``str.split``, i.e. Unicode whitespace). Non-ASCII characters are never split off: ``«``, ``。`` or
    an emoji stay attached to the word beside them, and a CJK sentence without spaces is one token.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in text:
        for entity, char in _13A_ENTITIES:
            text = text.replace(entity, char)
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def _ngrams(tokens: list[str]) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of ``tokens``, 1 <= n <= MAX_ORDER."""
    return Counter(tuple(tokens[i:i + n]) for n in range(1, MAX_ORDER + 1) for i in range(len(tokens) - n + 1))


def _closest_length(hyp_len: int, ref_lens: list[int]) -> int:
    """The reference length closest to ``hyp_len``; of two equally close, the shorter."""
    return min(ref_lens, key=lambda n: (abs(hyp_len - n), n))


@dataclass(frozen=True)
class BleuStats:
    """BLEU's sufficient statistics, summable over segments.

    Attributes:
        correct: clipped matching n-grams per order 1..4.
        total: hypothesis n-grams per order 1..4.
        hyp_len: hypothesis tokens.
        ref_len: tokens of the closest reference of each segment, summed.
    """

    correct: tuple[int, ...]
    total: tuple[int, ...]
    hyp_len: int
    ref_len: int

    def __add__(self, other: BleuStats) -> BleuStats:
        return BleuStats(tuple(a + b for a, b in zip(self.correct, other.correct)),
                         tuple(a + b for a, b in zip(self.total, other.total)),
                         self.hyp_len + other.hyp_len, self.ref_len + other.ref_len)


def segment_stats(hypothesis: str, references: Sequence[str]) -> BleuStats:
    """The statistics of one hypothesis against its references (trailing whitespace stripped first, as
    sacrebleu does, then :func:`tokenize_13a`)."""
    hyp = tokenize_13a(hypothesis.rstrip())
    refs = [tokenize_13a(ref.rstrip()) for ref in references]
    max_ref: Counter[tuple[str, ...]] = Counter()
    for ref in refs:
        max_ref |= _ngrams(ref)  # per n-gram, the highest count of any reference
    correct = [0] * MAX_ORDER
    total = [0] * MAX_ORDER
    for gram, count in _ngrams(hyp).items():
        total[len(gram) - 1] += count
        correct[len(gram) - 1] += min(count, max_ref[gram])
    return BleuStats(tuple(correct), tuple(total), len(hyp), _closest_length(len(hyp), [len(r) for r in refs]))


@dataclass(frozen=True)
class BleuScore:
    """A BLEU score with its parts (as sacrebleu's ``BLEUScore``).

    Attributes:
        score: BLEU in 0..100.
        precisions: the n-gram precisions of orders 1..4 in percent (0..100), smoothed where an order had no
            match; all 0 when nothing matched, 0 for orders the hypotheses are too short to have.
        brevity_penalty: in 0..1; ``exp(1 - ref_len / hyp_len)`` when the hypotheses are shorter.
        stats: the counts the score is computed from.
    """

    score: float
    precisions: tuple[float, ...]
    brevity_penalty: float
    stats: BleuStats


def score_from_stats(stats: BleuStats, effective_order: bool) -> BleuScore:
    """BLEU from summed statistics, with ``exp`` smoothing; ``effective_order`` drops the orders with no
    hypothesis n-gram from the geometric mean (sentence BLEU) instead of scoring 0 (corpus BLEU)."""
    bp = 1.0
    if stats.hyp_len < stats.ref_len:
        bp = math.exp(1 - stats.ref_len / stats.hyp_len) if stats.hyp_len > 0 else 0.0
    precisions = [0.0] * MAX_ORDER
    if not any(stats.correct):
        return BleuScore(0.0, tuple(precisions), bp, stats)
    smooth = 1.0
    order = MAX_ORDER
    for n in range(MAX_ORDER):
        if stats.total[n] == 0:
            break
        if effective_order:
            order = n + 1
        if stats.correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * stats.total[n])
        else:
            precisions[n] = 100.0 * stats.correct[n] / stats.total[n]
    used = precisions[:order]
    if min(used) == 0.0:  # an order without any hypothesis n-gram: the geometric mean is 0
        return BleuScore(0.0, tuple(precisions), bp, stats)
    score = bp * math.exp(sum(math.log(p) for p in used) / order)
    return BleuScore(score, tuple(precisions), bp, stats)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> BleuScore:
    """Corpus BLEU (0..100) of ``hypotheses`` against ``references[i]`` (a string or a list of strings)
    for each hypothesis ``i``; equals ``sacrebleu.corpus_bleu`` with default options.

    Raises:
        DataError: the lists differ in length or are empty, or an entry is not a string.
    """
    hyps, refs = text_pairs(hypotheses, references, ("hypotheses", "references"))
    total = BleuStats((0,) * MAX_ORDER, (0,) * MAX_ORDER, 0, 0)
    for hyp, ref in zip(hyps, refs):
        total = total + segment_stats(hyp, ref)
    return score_from_stats(total, effective_order=False)


def sentence_bleu(hypothesis: str, references: str | Sequence[str]) -> BleuScore:
    """Sentence BLEU (0..100) of one hypothesis against one or several references, with the effective
    order; equals ``sacrebleu.sentence_bleu`` with default options.

    Raises:
        DataError: an entry is not a string, or ``references`` is an empty list.
    """
    hyp = check_text(hypothesis, "hypothesis")
    return score_from_stats(segment_stats(hyp, reference_list(references, "references")), effective_order=True)

