"""Data formats users bring: per-record detection, either turn style in either list, `--columns`
mapping, the Stanford Alpaca prompt, and one source for `prepare`'s defaults.

References: transformers' `apply_chat_template` (ids and assistant masks), Stanford Alpaca's
`train.py` (prompt text and its source-masking), LLaMA-Factory's `dataset_info.json` vocabulary.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_nothing_written, write_jsonl

import pyft.data
from pyft import _core
from pyft.cli.main import build_parser
from pyft.data.prepare import PREPARE_DEFAULTS
from pyft.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

QA = [{"role": "user", "content": "What is the capital of France?"},
      {"role": "assistant", "content": "The capital of France is Paris."}]


def _rows(out: Path) -> list[dict[str, np.ndarray]]:
    ds = pyft.data.load(out, "train")
    return [ds[i] for i in range(len(ds))]


def _reference(hf_tok, messages) -> tuple[list[int], list[int]]:
    """transformers' ids and labels (pyft never trains on a sequence's first token)."""
    out = hf_tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    labels = [t if m else -100 for t, m in zip(ids, out["assistant_masks"])]
    labels[0] = -100
    return ids, labels


def _assert_rows_equal(out: Path, hf_tok, conversations: list[list[dict]]) -> None:
    rows = _rows(out)
    assert len(rows) == len(conversations)
    for row, messages in zip(rows, conversations, strict=True):
        ids, labels = _reference(hf_tok, messages)
        assert row["input_ids"].tolist() == ids
        assert row["labels"].tolist() == labels


# --- 1-2. either turn style, mixed files -----------------------------------------------------------


def test_mixed_chat_formats_in_one_file(tokenizer_dirs, hf_tokenizers, tmp_path):
    sharegpt = [{"from": "human", "value": QA[0]["content"]}, {"from": "gpt", "value": QA[1]["content"]}]
    records = [
        {"instruction": "What is the capital of France?", "output": "The capital of France is Paris."},
        {"conversations": sharegpt},
        {"messages": QA},
        {"conversations": QA},  # OpenAI-style turns under the ShareGPT key
        {"messages": sharegpt},  # ShareGPT turns under the OpenAI key
    ]
    src = write_jsonl(tmp_path / "mixed.jsonl", records)
    info = pyft.data.prepare(src, tokenizer_dirs["llama3"], tmp_path / "out")
    assert info.meta["inputs"][0]["format"] == "mixed"
    assert info.meta["inputs"][0]["formats"] == {"alpaca": 1, "sharegpt": 2, "messages": 2}
    _assert_rows_equal(tmp_path / "out", hf_tokenizers["llama3"], [QA] * len(records))


def test_role_content_under_conversations_keeps_the_system_field(tokenizer_dirs, hf_tokenizers, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"system": "Be brief.", "conversations": QA}])
    pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    _assert_rows_equal(tmp_path / "out", hf_tokenizers["chatml"], [[{"role": "system", "content": "Be brief."}, *QA]])


def test_one_kind_per_dataset_is_checked_per_record(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "k.jsonl", [{"messages": QA}, {"messages": QA}, {"text": "plain"}])
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    assert str(exc.value) == (f"{src}:3: a text record: holds text data but {src} holds chat data (from line 1); "
                              "prepare them into separate outputs")
    assert_nothing_written(tmp_path / "out")


def test_record_no_format_fits_is_named(tokenizer_dirs, tmp_path):
    # In a file of messages records, one with other keys is read as messages: the missing key is named.
    src = write_jsonl(tmp_path / "u.jsonl", [{"messages": QA}, {"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    assert str(exc.value) == f"{src}:2: field `messages`: missing"
    # One that lacks a required key is read as the format its other keys belong to.
    src = write_jsonl(tmp_path / "p.jsonl", [{"messages": QA}, {"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataError, match=re.escape(f"{src}:2: field `rejected`: missing")):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    # No record of the file has keys of any format.
    src = write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=re.escape(f"{src}:1: cannot detect the format from keys")) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    assert "--columns" in str(exc.value)


def test_forced_format_names_the_records_not_in_it(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "f.jsonl", [{"instruction": "i", "output": "o"}, {"messages": QA}])
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", format="alpaca")
    assert str(exc.value) == (f"{src}:2: field `instruction`: missing (the record looks like messages data, but "
                              "--format alpaca converts every record as alpaca)")
    # Skipped, it is counted and the alpaca record is kept.
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", format="alpaca", on_error="skip")
    assert (info.counts["kept"], info.counts["dropped"]["invalid"]) == (1, 1)


# --- 3. column mapping -----------------------------------------------------------------------------


def _same_as_plain(tmp_path, tok_dir, plain: list[dict], mapped: list[dict], columns, **kw) -> dict:
    """Prepare `plain` and `mapped` (with `columns`); the shards must be identical. Returns the
    mapped run's meta."""
    a = pyft.data.prepare(write_jsonl(tmp_path / "plain.jsonl", plain), tok_dir, tmp_path / "a", **kw)
    b = pyft.data.prepare(write_jsonl(tmp_path / "mapped.jsonl", mapped), tok_dir, tmp_path / "b",
                          columns=columns, **kw)
    assert a.counts["kept"] == b.counts["kept"] == len(plain)
    for ra, rb in zip(_rows(tmp_path / "a"), _rows(tmp_path / "b"), strict=True) if a.kind != "kto" else []:
        assert ra["input_ids"].tolist() == rb["input_ids"].tolist()
        assert ra["labels"].tolist() == rb["labels"].tolist()
    return b.meta


def test_columns_rename_record_fields(tokenizer_dirs, tmp_path):
    plain = [{"instruction": "Name a colour.", "input": "warm", "output": "Red."}]
    mapped = [{"question": "Name a colour.", "context": "warm", "answer": "Red."}]
    meta = _same_as_plain(tmp_path, tokenizer_dirs["chatml"], plain, mapped,
                          "instruction=question,input=context,output=answer")
    assert meta["options"]["columns"] == {"instruction": "question", "input": "context", "output": "answer"}
    assert meta["inputs"][0]["format"] == "alpaca"
    shown = pyft.data.inspect(tmp_path / "b", color=False)
    assert "columns:   question -> instruction, context -> input, answer -> output" in shown


def test_columns_rename_message_keys_and_roles(tokenizer_dirs, tmp_path):
    plain = [{"messages": QA}]
    mapped = [{"dialog": [{"speaker": "human", "text": QA[0]["content"]},
                          {"speaker": "bot", "text": QA[1]["content"]}]}]
    meta = _same_as_plain(tmp_path, tokenizer_dirs["llama3"], plain, mapped,
                          ["messages=dialog", "role=speaker,content=text", "user=human,assistant=bot"])
    assert meta["options"]["columns"] == {"messages": "dialog", "role": "speaker", "content": "text",
                                          "user_tag": "human", "assistant_tag": "bot"}


def test_columns_role_values_apply_to_sharegpt_turns(tokenizer_dirs, tmp_path):
    plain = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    mapped = [{"conversations": [{"from": "customer", "value": "Hi"}, {"from": "agent", "value": "Hello."}]}]
    _same_as_plain(tmp_path, tokenizer_dirs["chatml"], plain, mapped, {"user": "customer", "assistant": "agent"})


def test_column_errors_name_the_field_as_the_file_spells_it(tokenizer_dirs, tmp_path):
    tok = tokenizer_dirs["chatml"]
    good = {"question": "q", "answer": "a"}
    src = write_jsonl(tmp_path / "q.jsonl", [good, good, {"answer": "a"}])
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tok, tmp_path / "out", columns="instruction=question,output=answer")
    assert str(exc.value) == f"{src}:3: field `question`: missing (`question` mapped to `instruction` by --columns)"
    src = write_jsonl(tmp_path / "d.jsonl", [{"dialog": [{"speaker": "user", "text": "q"},
                                                         {"speaker": "assistant", "text": " "}]}])
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tok, tmp_path / "out", columns="messages=dialog,role=speaker,content=text")
    assert str(exc.value) == (f"{src}:1: field `dialog[1].text`: empty (`dialog` mapped to `messages`, `text` "
                              "mapped to `content` by --columns)")
    # A mapped name next to the field it is mapped to: which one to train on is not guessed.
    src = write_jsonl(tmp_path / "o.jsonl", [{"instruction": "i", "answer": "a", "output": "o"}])
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tok, tmp_path / "out", columns="output=answer")
    assert str(exc.value) == f"{src}:1: field `output`: present, and `answer` is also mapped to it by --columns"
    with pytest.raises(ConfigError, match="--columns `question=instruction`: unknown name `question`"):
        pyft.data.prepare(src, tok, tmp_path / "out", columns="question=instruction")
    assert_nothing_written(tmp_path / "out")


def test_kto_aliases_only_through_the_mapping(tokenizer_dirs, tmp_path):
    tok = tokenizer_dirs["chatml"]
    rows = [{"prompt": "Is water wet?", "response": "Yes.", "is_good": True},
            {"prompt": "Is fire cold?", "response": "Yes.", "is_good": False}]
    src = write_jsonl(tmp_path / "k.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{src}:1: cannot detect the format")):
        pyft.data.prepare(src, tok, tmp_path / "out")
    with pytest.raises(DataError, match=re.escape(f"{src}:1: field `completion`: missing")):
        pyft.data.prepare(src, tok, tmp_path / "out", format="kto")
    plain = [{"prompt": r["prompt"], "completion": r["response"], "label": r["is_good"]} for r in rows]
    _same_as_plain(tmp_path, tok, plain, rows, "completion=response,label=is_good")
    a, b = pyft.data.load(tmp_path / "a"), pyft.data.load(tmp_path / "b")
    for i in range(len(rows)):
        for key in a[i]:
            assert np.array_equal(a[i][key], b[i][key]), key


def test_cli_columns_and_defaults_reach_prepare(tokenizer_dirs, tmp_path, capsys):
    from pyft.cli.main import main

    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "q?", "answer": "a."}])
    rc = main(["data", "prepare", str(src), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out",
               str(tmp_path / "out"), "--columns", "instruction=question", "--columns", "output=answer"])
    assert rc == 0
    assert "columns:   question -> instruction, answer -> output" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    for key in ("format", "train_on", "max_len", "overlong", "truncation", "pack", "on_error", "dedup", "val_ratio",
                "seed", "shard_tokens"):
        assert meta["options"][key] == PREPARE_DEFAULTS[key], key


# --- 4. the Stanford Alpaca prompt -----------------------------------------------------------------

# tatsu-lab/stanford_alpaca, train.py (commit c8ea92b1c360269f787036fb3746b9e2dea120e5), PROMPT_DICT.
# Typed here from the source, not from pyft's template. Note: "### Response:" ends without a newline.
STANFORD_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep."},
    {"instruction": "Translate the sentence into German.", "input": "Good morning, how are you?",
     "output": "Guten Morgen, wie geht es dir?"},
]


@pytest.mark.parametrize("style", ["alpaca", "chatml"])  # with BOS added by the tokenizer (alpaca) and without
def test_alpaca_template_renders_the_stanford_prompt(style, tokenizer_dirs, hf_tokenizers, tmp_path):
    """Stanford's `preprocess`: ids = tokenizer(source + output + eos); labels = -100 on the first
    len(tokenizer(source)) tokens. pyft's ids and labels must equal those."""
    hf = hf_tokenizers[style]
    src = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    pyft.data.prepare(src, tokenizer_dirs[style], tmp_path / "out", template="alpaca")
    for rec, row in zip(ALPACA, _rows(tmp_path / "out"), strict=True):
        prompt = STANFORD_PROMPT_INPUT if rec["input"] else STANFORD_PROMPT_NO_INPUT
        source = prompt.format_map(rec)
        target = f"{rec['output']}{hf.eos_token}"
        ids = hf(source + target)["input_ids"]
        n_source = len(hf(source)["input_ids"])
        assert row["input_ids"].tolist() == ids
        assert row["labels"].tolist() == [-100] * n_source + ids[n_source:]
        # byte for byte: the trained tokens are exactly the response and EOS, the rest the prompt
        assert hf.decode(ids[n_source:]) == target
        assert hf.decode(ids[:n_source], skip_special_tokens=True) == source


def test_alpaca_template_system_replaces_the_preamble_and_history_adds_turns():
    template = _core.builtin_template("alpaca")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text, spans = _core.render_template(template, json.dumps(messages), True,
                                        json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    assert text == ("<s>Be brief.\n\n### Instruction:\nHi\n\n### Response:Hello.</s>"
                    "\n\n### Instruction:\nBye\n\n### Response:")
    assert [text[a:b] for a, b in spans] == ["Hello.</s>"]


def test_ollama_template_gives_the_training_prompt():
    """Export stays consistent with training: the Ollama TEMPLATE translated from the alpaca template
    produces Stanford's no-input prompt for a user message (llama.cpp adds BOS itself)."""
    from pyft.export.ollama import translate_template

    t = translate_template(_core.builtin_template("alpaca"), bos_token="<s>", eos_token="</s>")
    assert t.family == "alpaca" and t.strips_bos
    preamble = STANFORD_PROMPT_NO_INPUT.split("\n\n")[0]
    assert t.template == (
        '{{- $prev := "" }}\n{{- range $i, $_ := .Messages }}\n{{- if or (eq .Role "user") (eq .Role "assistant") }}'
        '\n{{- if eq .Role "user" }}{{ if eq $prev "" }}{{ if $.System }}{{ $.System }}\n\n{{ else }}'
        f'{preamble}\n\n{{{{ end }}}}### Instruction:\n{{{{ else }}}}</s>\n\n### Instruction:\n{{{{ end }}}}'
        '{{ else }}\n\n### Response:{{ end }}{{ .Content }}{{ $prev = .Role }}\n{{- end }}\n{{- end }}'
        '\n{{- if ne $prev "assistant" }}\n\n### Response:{{ end }}'
    )
    # What that Go template renders for one user message, with no SYSTEM: Stanford's prompt.
    rendered = preamble + "\n\n### Instruction:\n" + "Name a colour." + "\n\n### Response:"
    assert rendered == STANFORD_PROMPT_NO_INPUT.format(instruction="Name a colour.")
    assert t.stops == ["</s>", "### Instruction:", "### Response:"]


# --- 5. one source for the defaults ----------------------------------------------------------------


def test_prepare_defaults_have_one_source():
    """Rust's `PrepareOptions::new` gives the defaults; the Python signature and the CLI read them."""
    assert PREPARE_DEFAULTS == json.loads(_core.prepare_defaults())
    sig = inspect.signature(pyft.data.prepare)
    parser = build_parser()
    args = parser.parse_args(["data", "prepare", "x.jsonl", "--tokenizer", "t", "--out", "o"])
    for key, value in PREPARE_DEFAULTS.items():
        if key == "columns":
            assert value is None and sig.parameters[key].default is None and args.columns == []
            continue
        assert sig.parameters[key].default == value, key
        assert getattr(args, key) == value, key
    assert PREPARE_DEFAULTS["max_len"] == 2048 and PREPARE_DEFAULTS["pack"] == "none"


def test_readme_states_the_same_defaults():
    """The README's "Main options" table names each default in its `default` column (— for none)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Main options", 1)[1].split("\n\n", 2)[1]
    seen = set()
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        flags = [f.replace("-", "_") for f in re.findall(r"`--([a-z-]+)", cells[0])]
        stated = [d.strip().strip("`") for d in cells[1].split(",")]
        for key, text in zip(flags, stated, strict=True):
            seen.add(key)
            if key not in PREPARE_DEFAULTS or PREPARE_DEFAULTS[key] is None or PREPARE_DEFAULTS[key] is False:
                assert text == "—", key
            else:
                assert text == str(PREPARE_DEFAULTS[key]), key
    assert seen >= set(PREPARE_DEFAULTS) - {"overwrite"}, set(PREPARE_DEFAULTS) - seen
