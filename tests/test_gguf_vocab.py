"""GGUF tokenizer metadata (`tokenizer.*`) against llama.cpp's own converter.

For each tokenizer (byte-level BPE in the chatml / llama3 / alpaca styles, and a SentencePiece
model trained here), a tiny model is converted by `convert_hf_to_gguf.py` and every `tokenizer.*`
key, type and value it wrote must equal `_core.gguf_tokenizer_metadata` for the same directory.
The test tokenizers are unknown to the converter's chkhsh table, so the converter is told the
`tokenizer.ggml.pre` that pyft's policy picks.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import llamacpp
import pytest

from pyft import _core
from pyft.errors import DataError
from pyft.testing import CORPUS_PATH, make_tiny_model, make_tokenizer

pytest.importorskip("sentencepiece")


def _gguf():
    sys.path.insert(0, str(llamacpp.llama_cpp_src() / "gguf-py"))
    import gguf

    return gguf


def ours(model_dir: Path, arch: str, pre: str | None = None, base_dir: Path | None = None) -> tuple[dict, list[str]]:
    text, warnings = _core.gguf_tokenizer_metadata(str(model_dir), arch, pre, None if base_dir is None else str(base_dir))
    return json.loads(text), warnings


def as_rows(meta: dict) -> list[tuple]:
    return [(kv["key"], kv["type"], kv["subtype"], kv["value"]) for kv in meta["kvs"]]


def converter_rows(model_dir: Path, out: Path, pre: str | None) -> list[tuple]:
    """Every `tokenizer.*` key llama.cpp's converter writes, in file order, as (key, type, subtype, value)."""
    llamacpp.convert_hf_to_gguf(model_dir, out, "f32", pre=pre)
    reader = _gguf().GGUFReader(out)
    rows = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        main = field.types[0].name
        sub = field.types[-1].name if main == "ARRAY" else None
        rows.append((name, main, sub, field.contents()))
    return rows


def assert_same(ours_rows: list[tuple], theirs: list[tuple]) -> None:
    assert [r[0] for r in ours_rows] == [r[0] for r in theirs]
    for a, b in zip(ours_rows, theirs):
        assert a[:3] == b[:3], a[0]
        assert a[3] == b[3], a[0]


@pytest.fixture(scope="module")
def bpe_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("vocab_tok")
    return {s: make_tokenizer(base / s, style=s, vocab_size=512) for s in ("chatml", "llama3", "alpaca")}


def train_sentencepiece(out: Path) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(CORPUS_PATH), model_writer=buf, vocab_size=480, byte_fallback=True, character_coverage=0.99,
        user_defined_symbols=["<tool>"], model_type="bpe", minloglevel=2, num_threads=1,
    )
    out.write_bytes(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm") / "tokenizer.model")


@pytest.mark.parametrize(
    ("style", "arch", "expected_pre"),
    [("chatml", "qwen2", "gpt-2"), ("llama3", "llama", "llama-bpe"), ("alpaca", "llama", "gpt-2"),
     ("chatml", "llama", "gpt-2")],
)
def test_bpe_matches_converter(tmp_path, bpe_tokenizers, style, arch, expected_pre):
    model = make_tiny_model(tmp_path / "model", bpe_tokenizers[style], arch=arch)
    meta, warnings = ours(model, arch)
    assert meta["pre"] == expected_pre
    assert any("guessed" in w for w in warnings)
    theirs = converter_rows(model, tmp_path / "m.gguf", meta["pre"])
    assert_same(as_rows(meta), theirs)
    keys = {r[0]: r for r in theirs}
    assert keys["tokenizer.ggml.model"][3] == "gpt2"
    assert keys["tokenizer.ggml.merges"][3][0].count(" ") == 1
    assert "tokenizer.chat_template" in keys


def test_bpe_padded_beyond_the_tokenizer(tmp_path, bpe_tokenizers):
    model = make_tiny_model(tmp_path / "model", bpe_tokenizers["llama3"], arch="llama")
    config = json.loads((model / "config.json").read_text())
    n_tok = config["vocab_size"]
    config["vocab_size"] = n_tok + 9
    (model / "config.json").write_text(json.dumps(config))
    meta, _ = ours(model, "llama")
    rows = as_rows(meta)
    tokens = next(r[3] for r in rows if r[0] == "tokenizer.ggml.tokens")
    types = next(r[3] for r in rows if r[0] == "tokenizer.ggml.token_type")
    assert len(tokens) == n_tok + 9 and len(set(tokens)) == len(tokens)
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, n_tok + 9)]
    assert types[n_tok:] == [5] * 9
    assert_same(rows, converter_rows(model, tmp_path / "m.gguf", meta["pre"]))


def _spm_model_dir(tmp_path: Path, bpe_tokenizers: dict[str, Path], spm_model: Path, arch: str) -> Path:
    """A tiny model (512 embedding rows) whose tokenizer is the 480-piece SentencePiece model:
    the vocabulary is padded to 512; tokenizer_config adds tokens past the pieces."""
    model = make_tiny_model(tmp_path / "model", bpe_tokenizers["llama3"], arch=arch)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    shutil.copy(spm_model, model / "tokenizer.model")
    config = json.loads((model / "config.json").read_text())
    config.update(vocab_size=512, bos_token_id=1, eos_token_id=2)
    config.pop("pad_token_id", None)
    (model / "config.json").write_text(json.dumps(config))
    decoder = {
        "480": {"content": "<|im_start|>", "special": True},
        "481": {"content": "<|im_end|>", "special": True},
        "482": {"content": "\u2581tool_call", "special": False},
        "5": {"content": "<|replaced|>", "special": False},
    }
    tc = {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": False, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "added_tokens_decoder": decoder,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
    }
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sentencepiece_matches_converter(tmp_path, bpe_tokenizers, spm_model, arch):
    model = _spm_model_dir(tmp_path, bpe_tokenizers, spm_model, arch)
    meta, _ = ours(model, arch)
    assert meta["pre"] == "default"
    rows = as_rows(meta)
    theirs = converter_rows(model, tmp_path / "m.gguf", None)
    assert_same(rows, theirs)
    by_key = {r[0]: r for r in rows}
    tokens = by_key["tokenizer.ggml.tokens"][3]
    types = by_key["tokenizer.ggml.token_type"][3]
    assert len(tokens) == 512 and tokens[-1] == "[PAD511]" and len(set(tokens)) == 512
    assert tokens[481] == "<|im_end|>" and types[481] == 3
    assert tokens[482] == " tool_call" and types[482] == 4
    assert (tokens[3], types[3]) == ("<tool>", 1)  # a USER_DEFINED piece is written NORMAL, as the converter does
    assert ("tokenizer.ggml.add_space_prefix" in by_key) == (arch == "llama")
    assert 481 in meta["end_of_turn_ids"] and 2 in meta["end_of_turn_ids"]


def test_pre_policy(tmp_path, bpe_tokenizers):
    model = make_tiny_model(tmp_path / "model", bpe_tokenizers["chatml"], arch="qwen2")
    meta, warnings = ours(model, "qwen2", pre="qwen2")
    assert meta["pre"] == "qwen2" and not any("guessed" in w for w in warnings)
    with pytest.raises(Exception, match="llama-bpe"):
        ours(model, "qwen2", pre="not-a-pre-tokenizer")
    # Reusing the base model's name needs a base tokenizer that the table knows; an unknown one
    # falls through to the family guess with the reason reported.
    meta, warnings = ours(model, "qwen2", base_dir=model)
    assert meta["pre"] == "gpt-2"
    assert any("base model" in w for w in warnings)
    # A pre-tokenizer no llama.cpp type reproduces: the key is omitted, loudly.
    tj = json.loads((model / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                tj["pre_tokenizer"]]}
    (model / "tokenizer.json").write_text(json.dumps(tj))
    meta, warnings = ours(model, "qwen2")
    assert meta["pre"] is None
    assert "tokenizer.ggml.pre" not in [kv["key"] for kv in meta["kvs"]]
    assert any("NOT RECOGNIZED" in w for w in warnings)


def test_chkhsh_probe_text():
    """The probe text pyft embeds is the converter's (checked in Rust against the same SHA-256)."""
    src = (llamacpp.llama_cpp_src() / "conversion" / "base.py").read_text(encoding="utf-8")
    import ast
    import re

    block = src[src.index("def get_vocab_base_pre"):]
    chktxt = ast.literal_eval(re.search(r"chktxt = ('.*')\n", block).group(1))
    assert hashlib.sha256(chktxt.encode()).hexdigest() == "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
    # chkhsh is sha256 of Python's str(list of ids).
    assert hashlib.sha256(str([1, 2, 3]).encode()).hexdigest().startswith("a36b1f2c")


def test_malformed_files_name_the_file(tmp_path, bpe_tokenizers, spm_model):
    model = make_tiny_model(tmp_path / "model", bpe_tokenizers["chatml"], arch="qwen2")
    (model / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(DataError, match=r"tokenizer\.json.*not valid JSON"):
        ours(model, "qwen2")
    (model / "tokenizer.model").write_bytes(spm_model.read_bytes()[:100])
    with pytest.raises(DataError, match=r"tokenizer\.model.*not a SentencePiece model"):
        ours(model, "llama")
    (model / "tokenizer.model").write_bytes(b"\x0a\x02\x0a")
    with pytest.raises(DataError, match=r"tokenizer\.model.*pieces\[0\]"):
        ours(model, "llama")


def _hf_spm_tokenizer_json(spm_model: Path) -> dict:
    """An HF tokenizer.json in the shape of a SentencePiece model converted by transformers (BPE
    with byte_fallback, a Sequence decoder), so Llama's converter takes `_set_vocab_llama_hf`."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    n = sp.vocab_size()

    def added(i: int, content: str, special: bool) -> dict:
        return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": special}

    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", True),
                         added(n, "<|im_end|>", True), added(n + 1, "<tool_x>", False)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos,
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def test_llama_hf_spm_style_tokenizer_json_matches_converter(tmp_path, bpe_tokenizers, spm_model):
    model = make_tiny_model(tmp_path / "model", bpe_tokenizers["llama3"], arch="llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    tj = _hf_spm_tokenizer_json(spm_model)
    (model / "tokenizer.json").write_text(json.dumps(tj))
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
          "additional_special_tokens": ["<|im_end|>"], "add_bos_token": True}
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    config = json.loads((model / "config.json").read_text())
    config.update(vocab_size=len(tj["model"]["vocab"]) + 2, bos_token_id=1, eos_token_id=2)
    config.pop("pad_token_id", None)
    (model / "config.json").write_text(json.dumps(config))
    meta, _ = ours(model, "llama")
    rows = as_rows(meta)
    assert_same(rows, converter_rows(model, tmp_path / "m.gguf", None))
    by_key = {r[0]: r for r in rows}
    assert by_key["tokenizer.ggml.model"][3] == "llama" and meta["pre"] == "default"
    types = by_key["tokenizer.ggml.token_type"][3]
    # unk/bos/eos are special (CONTROL); the SentencePiece user-defined piece `<tool>` is a plain vocab entry
    # (NORMAL); `<0x00>` is BYTE; the added tokens past the vocabulary come last.
    assert types[:5] == [3, 3, 3, 1, 6]
    assert by_key["tokenizer.ggml.tokens"][3][-2:] == ["<|im_end|>", "<tool_x>"] and types[-2:] == [3, 4]


@pytest.mark.parametrize("style", ["chatml", "llama3", "alpaca"])
def test_chkhsh_matches_the_converters_method(bpe_tokenizers, style):
    """The chkhsh pyft reports is the converter's: sha256(str(AutoTokenizer.encode(chktxt)))."""
    import ast
    import re

    from transformers import AutoTokenizer

    src = (llamacpp.llama_cpp_src() / "conversion" / "base.py").read_text(encoding="utf-8")
    chktxt = ast.literal_eval(re.search(r"chktxt = ('.*')\n", src[src.index("def get_vocab_base_pre"):]).group(1))
    tok = AutoTokenizer.from_pretrained(bpe_tokenizers[style])
    chkhsh = hashlib.sha256(str(tok.encode(chktxt)).encode()).hexdigest()
    model = bpe_tokenizers[style]
    (model / "config.json").write_text(json.dumps({"vocab_size": 512}))
    try:
        _, warnings = ours(model, "llama")
    finally:
        (model / "config.json").unlink()
    assert any(f"chkhsh {chkhsh}" in w for w in warnings), warnings
