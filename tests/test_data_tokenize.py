"""pyft's tokenizer gives the same ids as HF `tokenizers` (the fast path and the fallback)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyft import _core
from pyft.testing import CORPUS_PATH

EDGE_CASES = [
    "", " ", "  ", "\n", "\r\n", "\t\t x", "a  b   c    d", "Hello,   world!!  ", "I'm 'S 'LL we've they'RE",
    "1234567 12 3.14159 1e-9", "<|im_start|>user\nhi<|im_end|>\n", "<|im_end|><|im_start|>", "x<|im_end|>y",
    "naïve café Zürich Brasília", "你好，世界", "🌍🎉👩‍💻", "Привет мир", "مرحبا", "\u00a0nbsp\u2003em",
    "line1\n\n\nline2   \n  ", "def f(x):\n    return x  *  2\n", "   leading and trailing   ",
]


@pytest.fixture(scope="module")
def pairs(tokenizer_dirs):
    from tokenizers import Tokenizer

    return {s: (_core.Tokenizer.from_file(str(d / "tokenizer.json")), Tokenizer.from_file(str(d / "tokenizer.json")))
            for s, d in tokenizer_dirs.items()}


@pytest.mark.parametrize("style", ["chatml", "llama3", "alpaca"])
def test_fixture_tokenizers_take_the_fast_path(style, pairs):
    assert pairs[style][0].backend == "fast-bpe"


@pytest.mark.parametrize("style", ["chatml", "llama3", "alpaca"])
@pytest.mark.parametrize("add_special", [False, True])
def test_edge_cases_and_corpus_match_hf(style, add_special, pairs):
    ours, ref = pairs[style]
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()[:400]
    for text in EDGE_CASES + lines + ["\n".join(lines[:50])]:
        ids, offsets = ours.encode(text, add_special_tokens=add_special)
        assert ids == ref.encode(text, add_special_tokens=add_special).ids, repr(text)
        assert len(offsets) == len(ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list("aAbZ 0123456789'\n\r\t.,!?-_é中😊\u00a0") + ["<|im_end|>", "'s", "  "]),
                     max_size=60).map("".join))
def test_random_text_matches_hf(text, pairs):
    for style in ("chatml", "llama3"):
        ours, ref = pairs[style]
        assert ours.encode(text)[0] == ref.encode(text, add_special_tokens=False).ids, (style, repr(text))


def test_batch_and_decode(pairs):
    ours, ref = pairs["chatml"]
    texts = CORPUS_PATH.read_text(encoding="utf-8").splitlines()[:200]
    assert ours.encode_batch(texts) == [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    ids = ours.encode(texts[0])[0]
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)
