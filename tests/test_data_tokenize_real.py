"""pyft's tokenizer on real vocabularies: the ids and offsets of HF `tokenizers`, and the fast path taken.

The vocabularies are llama.cpp's ``ggml-vocab-*.gguf`` files (Llama 2 and 3, Qwen2, Phi-3, GPT-2,
DeepSeek, StarCoder, Falcon, ...) rebuilt into a ``tokenizer.json`` by transformers
(:func:`real_vocab.real_tokenizer_dir`). transformers writes every pre-tokenizer it rebuilds as one shape per
family, so the shapes published files carry (Llama-2's space normalizer, StarCoder's and Falcon's digit
splits, ...) are tested too, as edits of the rebuilt files. Texts: each vocabulary's llama.cpp edge cases,
the bundled corpus (:data:`pyft.testing.CORPUS_PATH`) and the multilingual / whitespace / code list below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyft import _core
from pyft.testing import CORPUS_PATH

real_vocab = pytest.importorskip("real_vocab")
tokenizers = pytest.importorskip("tokenizers")

SKIP_REASON = ""
try:
    VOCABS = real_vocab.vocab_names()
except RuntimeError as e:  # llama.cpp's sources are not fetched
    VOCABS = []
    SKIP_REASON = str(e)

#: Vocabularies the fast path must take (all that transformers converts today).
FAST = {
    "llama-bpe", "qwen2", "qwen35", "gpt-2", "deepseek-llm", "deepseek-coder", "aquila", "starcoder",
    "falcon", "llama-spm", "phi-3",
}

#: Vocabularies transformers (5.x) does not rebuild, and why; skipped without trying (a failed conversion is
#: not cached, and trying costs over a minute in all). A vocabulary in neither set is tried, and must match.
UNCONVERTIBLE = {
    "baichuan": "architecture baichuan is not supported", "bert-bge": "architecture bert is not supported",
    "command-r": "architecture command-r is not supported",
    "gpt-neox": "architecture gptneox is not supported", "mpt": "architecture mpt is not supported",
    "nomic-bert-moe": "architecture nomic-bert-moe is not supported",
    "refact": "architecture refact is not supported",
    "gemma-4": "its config fails validation (per-layer num_key_value_heads)",
}

TEXTS = [
    "", " ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "   leading", "trailing   ", "a  b   c    d",
    "x\n y\n\n  z",
    "Hello world", " Hello", "  Hello  ", "Hello\u00a0world\u2003em\u3000ideographic", "\u2581 \u2581\u2581x",
    "naïve café Zürich Ærøskøbing Straße İstanbul", "Привет, мир! Как дела?", "Ελληνικά γράμματα",
    "你好，世界。我们今天学习机器学习。", "日本語のテキストとカタカナ", "한국어 문장입니다.", "مرحبا بالعالم", "שלום עולם",
    "हिन्दी भाषा", "ภาษาไทย", "Tiếng Việt có dấu", "e\u0301 a\u0300\u0301 \u0041\u030a", "😀 🚀🔥 👩‍💻 👍🏽 🇫🇷",
    "x²+y³ ½ ¼ ①②③ Ⅻ ٣٤٥ १२३", "1234567890 3.14159 1,234,567.89 0x1F 1e-9 (555) 123-4567",
    "def f(x):\n    return x**2 + 1\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "    if err != nil {\n        return err\n    }\n", '{"key": "value", "n": [1, 2, 3]}',
    "<div class=\"a\">Hello &amp; welcome</div>", "SELECT id FROM users WHERE age >= 21;\r\n",
    "I'm, you're, he's, we've, they'll, she'd; DON'T STOP", "\x00\x01\x7f\ufeff\u200b\U0010ffff\ue000",
]


def corpus_texts() -> list[str]:
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    return lines[:300] + ["\n".join(lines[300:360]), "  ".join(lines[360:380])]


def char_offsets(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """pyft's byte offsets as the char offsets the Python package reports."""
    char_at = {}
    pos = 0
    for i, ch in enumerate(text):
        char_at[pos] = i
        pos += len(ch.encode())
    char_at[pos] = len(text)
    return [(char_at[a], char_at[b]) for a, b in offsets]


def assert_parity(path: Path, texts: list[str]) -> tuple[str, str | None]:
    """ids and offsets of pyft == the `tokenizers` package on every text; returns pyft's backend and
    why it fell back."""
    ours, ref = _core.Tokenizer.from_file(str(path)), tokenizers.Tokenizer.from_file(str(path))
    for text in texts:
        for add_special in (False, True):
            ids, offsets = ours.encode(text, add_special_tokens=add_special)
            expected = ref.encode(text, add_special_tokens=add_special)
            assert ids == expected.ids, (path.parent.name, text, add_special)
            got = char_offsets(text, offsets)
            assert got == list(expected.offsets), (path.parent.name, text, add_special)
    return ours.backend, ours.fallback_reason


def converted(name: str) -> Path:
    if not VOCABS:
        pytest.skip(SKIP_REASON)
    if name in UNCONVERTIBLE:
        pytest.skip(f"transformers cannot rebuild {name}: {UNCONVERTIBLE[name]}")
    try:
        return real_vocab.real_tokenizer_dir(name) / "tokenizer.json"
    except Exception as e:  # noqa: BLE001 - whatever transformers raises for a vocabulary it cannot convert
        if name in FAST:
            raise
        pytest.skip(f"transformers cannot convert {name}: {type(e).__name__}: {e}"[:300])


@pytest.mark.parametrize("name", VOCABS or ["(none)"])
def test_real_vocab_matches_hf(name):
    path = converted(name)
    backend, reason = assert_parity(path, real_vocab.edge_texts(name) + TEXTS + corpus_texts())
    assert backend == ("fast-bpe" if name in FAST else "hf"), (name, reason)


def test_every_listed_vocab_is_shipped():
    if not VOCABS:
        pytest.skip(SKIP_REASON)
    assert FAST | set(UNCONVERTIBLE) <= set(VOCABS)


# The shapes of published files, as (vocabulary, what, edit of its rebuilt tokenizer.json).
SPACE_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
PUBLISHED = [
    # Llama 2 / Mistral v0.1 / Phi-3 as on the Hub: the space normalizer, no pre-tokenizer; older
    # conversions also mark <unk>, <s>, </s> normalized (HF then matches "▁<s>" on normalized text).
    ("llama-spm", "legacy normalizer", {"normalizer": SPACE_NORMALIZER, "pre_tokenizer": None}),
    ("llama-spm", "legacy normalizer, normalized specials",
     {"normalizer": SPACE_NORMALIZER, "pre_tokenizer": None, "normalized_specials": True}),
    ("phi-3", "Metaspace pre-tokenizer", {"normalizer": None, "pre_tokenizer": {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}}),
    # Gemma's shape: Replace only (no prepended ▁).
    ("llama-spm", "gemma-style Replace", {"normalizer": {
        "type": "Replace", "pattern": {"String": " "}, "content": "▁"}, "pre_tokenizer": None}),
    # Older conversions split at every ▁.
    ("llama-spm", "Metaspace with split", {"normalizer": None, "pre_tokenizer": {
        "type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}}),
    ("starcoder", "published pre-tokenizer", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}}),
    ("falcon", "published pre-tokenizer", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Contiguous"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated",
         "invert": False}]}}),
]


@pytest.mark.parametrize(("name", "what", "edit"), PUBLISHED, ids=[f"{n}-{w}" for n, w, _ in PUBLISHED])
def test_published_shapes_take_the_fast_path(name, what, edit, tmp_path):
    data = json.loads(converted(name).read_text(encoding="utf-8"))
    edit = dict(edit)
    if edit.pop("normalized_specials", False):
        for token in data["added_tokens"]:
            token["normalized"] = True
    data.update(edit)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    specials = ["<s>Hi</s>", " <s> x</s> ", "a<s>b", "<unk> <s>  </s>"]
    texts = real_vocab.edge_texts(name) + TEXTS + specials + corpus_texts()[:150]
    assert assert_parity(path, texts) == ("fast-bpe", None), what
