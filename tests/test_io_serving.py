"""pyft.io.serving: template lookup, end-of-turn tokens, serving files (transformers is the reference)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyft import _core
from pyft.errors import ConfigError, DataError
from pyft.io.serving import (
    default_system_prompt,
    end_of_turn_tokens,
    load_chat_template,
    render,
    serving_files,
    special_tokens,
)

CHATML = _core.builtin_template("chatml")
LLAMA3 = _core.builtin_template("llama3")

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!\nHow can I help?"},
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "5"},
]


def write_tokenizer(out: Path, specials: list[str], *, bos: str | None, eos: str, pad: str | None = None,
                    template: str | None = None) -> Path:
    """A tiny word-level tokenizer saved by transformers, with the given special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token="<unk>")
    if template is not None:
        fast.chat_template = template
    fast.save_pretrained(out)
    return out


# --- load_chat_template ---------------------------------------------------------------------------------


def test_load_chat_template_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert load_chat_template(a, b) is None
    (b / "chat_template.json").write_text(json.dumps({"chat_template": "from-json"}))
    assert load_chat_template(a, b) == "from-json"
    (b / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from-config"}))
    assert load_chat_template(a, b) == "from-config"
    (b / "chat_template.jinja").write_text("from-jinja")
    assert load_chat_template(a, b) == "from-jinja"
    # the first directory wins, whatever file holds its template
    (a / "tokenizer_config.json").write_text(json.dumps({"eos_token": "x"}))
    assert load_chat_template(a, b) == "from-jinja"
    (a / "chat_template.json").write_text(json.dumps({"chat_template": "adapter-json"}))
    assert load_chat_template(a, b) == "adapter-json"


def test_load_chat_template_list_form(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert load_chat_template(tmp_path) == "D"
    only_tools = {"chat_template": [{"name": "tool_use", "template": "T"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(only_tools))
    with pytest.raises(ConfigError, match="without a `default`"):
        load_chat_template(tmp_path)


def test_load_chat_template_matches_transformers(tokenizer_dirs: dict[str, Path], hf_tokenizers) -> None:
    for style, d in tokenizer_dirs.items():
        assert load_chat_template(d) == hf_tokenizers[style].chat_template


# --- rendering and end-of-turn tokens --------------------------------------------------------------------


@pytest.mark.parametrize("name", _core.builtin_template_names())
def test_probe_renderer_matches_transformers(name: str, hf_tokenizers) -> None:
    """The renderer the probes use agrees with transformers' apply_chat_template."""
    tok = hf_tokenizers["alpaca"]  # <s> / </s>
    source = _core.builtin_template(name)
    tokens = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
    for conv in (CONVERSATION[1:], CONVERSATION[1:4], CONVERSATION):
        for gen in (False, True):
            expected = tok.apply_chat_template(conv, chat_template=source, tokenize=False, add_generation_prompt=gen)
            assert render(source, conv, add_generation_prompt=gen, tokens=tokens) == expected


def test_end_of_turn_tokens_fixture_styles(tokenizer_dirs: dict[str, Path], hf_tokenizers) -> None:
    expected = {"chatml": ["<|im_end|>"], "llama3": ["<|eot_id|>"], "alpaca": ["</s>"]}
    for style, d in tokenizer_dirs.items():
        got = end_of_turn_tokens(load_chat_template(d), d)
        tok = hf_tokenizers[style]
        assert got == [(t, tok.convert_tokens_to_ids(t)) for t in expected[style]]
        assert got[0][1] == tok.eos_token_id


def test_end_of_turn_tokens_eos_first(tmp_path: Path, hf_tokenizers) -> None:
    """A ChatML model whose eos is <|endoftext|> (Qwen base style): eos first, then <|im_end|>."""
    d = write_tokenizer(tmp_path / "t", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None,
                        eos="<|endoftext|>")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    got = end_of_turn_tokens(CHATML, d)
    assert got == [("<|endoftext|>", tok.convert_tokens_to_ids("<|endoftext|>")),
                   ("<|im_end|>", tok.convert_tokens_to_ids("<|im_end|>"))]
    assert got[0][1] != got[1][1]


@pytest.mark.parametrize(("name", "specials", "bos", "eos", "expected"), [
    ("gemma", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", ["<eos>", "<end_of_turn>"]),
    ("mistral", ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", ["</s>"]),
    ("zephyr", ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"], "<s>", "</s>", ["</s>"]),
    ("llama3", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
     "<|begin_of_text|>", "<|end_of_text|>", ["<|end_of_text|>", "<|eot_id|>"]),
])
def test_end_of_turn_tokens_families(tmp_path: Path, name: str, specials: list[str], bos: str, eos: str,
                                     expected: list[str]) -> None:
    from transformers import AutoTokenizer

    d = write_tokenizer(tmp_path / name, specials, bos=bos, eos=eos)
    tok = AutoTokenizer.from_pretrained(d)
    got = end_of_turn_tokens(_core.builtin_template(name), d)
    assert got == [(t, tok.convert_tokens_to_ids(t)) for t in expected]


def test_end_of_turn_tokens_skips_non_tokens(tmp_path: Path) -> None:
    """<|im_end|> that is not a token of this tokenizer cannot be an eos id: only eos is returned."""
    d = write_tokenizer(tmp_path / "t", ["</s>"], bos=None, eos="</s>")
    assert end_of_turn_tokens(CHATML, d) == [("</s>", 3)]  # vocab has ids 0-2


# --- default_system_prompt -----------------------------------------------------------------------------


def test_default_system_prompt(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert default_system_prompt(a, b) is None
    (b / "pyft_run.json").write_text(json.dumps({"system_prompt": "Base prompt.", "other": 1}))
    assert default_system_prompt(a, b) == "Base prompt."
    (a / "pyft_run.json").write_text(json.dumps({"system_prompt": None}))
    assert default_system_prompt(a, b) == "Base prompt."
    (a / "pyft_run.json").write_text(json.dumps({"system_prompt": "Adapter\nprompt."}))
    assert default_system_prompt(a, b) == "Adapter\nprompt."
    (a / "pyft_run.json").write_text("{oops")
    with pytest.raises(DataError, match=r"pyft_run\.json: malformed JSON at line 1, column 2"):
        default_system_prompt(a)


# --- serving_files -------------------------------------------------------------------------------------


def _materialize(files: dict[str, bytes], base: Path, out: Path) -> Path:
    """A merged-model directory: the base files copied, then the serving files written over them."""
    shutil.copytree(base, out)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def test_serving_files_loaded_by_transformers(tmp_path: Path, tokenizer_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    base = tmp_path / "base"
    shutil.copytree(tokenizer_dirs["llama3"], base)
    (base / "chat_template.jinja").unlink()  # only the base's inline template is left ...
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ bos_token }}old"
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    (base / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "temperature": 0.6, "top_p": 0.9, "do_sample": True}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "chat_template.jinja").write_text(LLAMA3)  # ... and the adapter's template wins

    files = serving_files([adapter, base])
    assert set(files) == {"generation_config.json", "tokenizer_config.json", "chat_template.jinja"}
    out = _materialize(files, base, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == LLAMA3
    assert json.loads(files["tokenizer_config.json"])["chat_template"] == LLAMA3
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == render(
        LLAMA3, CONVERSATION, tokens=special_tokens(base))
    gen = GenerationConfig.from_pretrained(out)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert gen.eos_token_id == [1, eot]  # the base's <|end_of_text|> kept first, <|eot_id|> added
    assert (gen.temperature, gen.top_p, gen.do_sample) == (0.6, 0.9, True)
    assert gen.pad_token_id == tok.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    # key order of the base file is kept, new keys come last
    assert list(json.loads(files["generation_config.json"])) == [
        "bos_token_id", "eos_token_id", "temperature", "top_p", "do_sample", "pad_token_id"]


def test_serving_files_single_eos_is_an_int(tmp_path: Path, tokenizer_dirs: dict[str, Path]) -> None:
    files = serving_files([tokenizer_dirs["chatml"]])
    gen = json.loads(files["generation_config.json"])
    assert gen == {"eos_token_id": 2, "pad_token_id": 0}  # ChatML fixture: eos = <|im_end|>, no bos
    assert files["chat_template.jinja"].decode() == CHATML


def test_serving_files_list_form_template(tmp_path: Path, tokenizer_dirs: dict[str, Path]) -> None:
    base = tmp_path / "base"
    shutil.copytree(tokenizer_dirs["chatml"], base)
    (base / "chat_template.jinja").unlink()
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "T"}]
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    files = serving_files([base])
    assert json.loads(files["tokenizer_config.json"])["chat_template"] == cfg["chat_template"]
    assert files["chat_template.jinja"].decode() == CHATML


def test_serving_files_without_template(tmp_path: Path) -> None:
    d = write_tokenizer(tmp_path / "t", ["<s>", "</s>"], bos="<s>", eos="</s>")
    assert load_chat_template(d) is None
    files = serving_files([d])
    assert set(files) == {"generation_config.json"}
    assert json.loads(files["generation_config.json"]) == {"eos_token_id": 4, "bos_token_id": 3}


# --- layering -------------------------------------------------------------------------------------


def test_io_never_imports_export() -> None:
    """Imports go one way, ``pyft.export`` -> ``pyft.io``: no module of ``pyft.io`` imports ``pyft.export``,
    not even lazily inside a function (the former ``merge`` -> ``export.chat`` cycle)."""
    import ast

    import pyft.io

    offenders = []
    for path in sorted(Path(pyft.io.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.startswith("pyft.export")]
    assert offenders == []
