"""Bad input: every problem names file:line and the field, and nothing is written."""

from __future__ import annotations

import json

import pytest

import pyft.data
from pyft.errors import ConfigError, DataError, TemplateError

from helpers import assert_nothing_written, write_jsonl

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

# (records as raw JSONL lines, expected message fragment after "FILE:LINE: ", line, field)
CASES = [
    ("missing_field", [json.dumps({"instruction": "Say hi"})], "field `output`: missing", 2, "output"),
    ("empty_field", [json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]})],
     "field `messages[0].content`: empty", 2, "messages[0].content"),
    ("unknown_role", [json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]})],
     "field `messages[1].role`: unknown role `bot`", 2, "messages[1].role"),
    ("no_assistant", [json.dumps({"messages": [{"role": "user", "content": "q"}]})],
     "field `messages`: no assistant turn", 2, "messages"),
    ("sharegpt_role", [json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]})],
     "field `conversations[1].from`: unknown role `robot`", 2, "conversations[1].from"),
    ("malformed_line", ['{"messages": [}'], "malformed JSON", 2, None),
    ("not_an_object", ["[1, 2]"], "expected a JSON object, got an array", 2, None),
    ("chosen_equals_rejected", [json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"})],
     "field `rejected`: identical to `chosen`", 2, "rejected"),
    ("empty_completion", [json.dumps({"prompt": "p", "chosen": "  ", "rejected": "r"})], "field `chosen`: empty", 2, "chosen"),
    ("preference_missing", [json.dumps({"prompt": "p", "chosen": "c"})], "field `rejected`: missing", 2, "rejected"),
    ("preference_null", [json.dumps({"prompt": "p", "chosen": "c", "rejected": None})],
     "field `rejected`: expected a string or a list of messages, got null", 2, "rejected"),
    ("null_content", [json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]})],
     "field `messages[1].content`: expected a string, got null", 2, "messages[1].content"),
    ("kto_label", [json.dumps({"prompt": "p", "completion": "c", "label": "yes"})],
     'field `label`: expected true or false, got "yes"', 2, "label"),
]


@pytest.mark.parametrize("name,lines,fragment,line,field", CASES, ids=[c[0] for c in CASES])
def test_bad_record_fails_with_location_and_writes_nothing(name, lines, fragment, line, field, tokenizer_dirs, tmp_path):
    first = GOOD
    if name.startswith(("chosen", "empty_completion", "preference")):
        first = {"prompt": "p", "chosen": "a", "rejected": "b"}
    elif name == "kto_label":
        first = {"prompt": "p", "completion": "c", "label": True}
    elif name == "missing_field":
        first = {"instruction": "Say hello", "output": "Hello"}
    elif name == "sharegpt_role":
        first = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(first) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], out)
    assert str(exc.value) == f"{src}:{line}: {fragment}" or str(exc.value).startswith(f"{src}:{line}: {fragment}")
    assert exc.value.file == str(src) and exc.value.line == line and exc.value.field == field
    assert_nothing_written(out)


def test_invalid_utf8_line(tokenizer_dirs, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid UTF-8"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], out)
    assert_nothing_written(out)


def test_malformed_json_array_names_line(tokenizer_dirs, tmp_path):
    src = tmp_path / "bad.json"
    src.write_text('[\n  {"text": "a"},\n  {"text": }\n]\n')
    with pytest.raises(DataError, match=r"bad\.json:3: malformed JSON array"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")


def test_template_exception_is_a_record_error(tokenizer_dirs, tmp_path):
    # mistral's template requires user/assistant alternation.
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                        {"role": "assistant", "content": "c"}]}
    src = write_jsonl(tmp_path / "c.jsonl", [GOOD, bad])
    with pytest.raises(DataError, match=r"c\.jsonl:2: .*alternate") as exc:
        pyft.data.prepare(src, tokenizer_dirs["alpaca"], tmp_path / "out", template="mistral")
    assert exc.value.line == 2
    assert_nothing_written(tmp_path / "out")


def test_skip_drops_and_reports(tokenizer_dirs, tmp_path):
    src = tmp_path / "mixed.jsonl"
    bad1 = {"messages": [{"role": "user", "content": "q"}]}
    src.write_text("\n".join([json.dumps(GOOD), json.dumps(bad1), "{oops", json.dumps(GOOD | {"x": 1})]) + "\n")
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", on_error="skip")
    assert info.counts["read"] == 4 and info.counts["kept"] == 2 and info.counts["dropped"]["invalid"] == 2
    assert any(p.startswith(f"{src}:2: field `messages`") for p in info.meta["problems"])
    assert any(p.startswith(f"{src}:3: malformed JSON") for p in info.meta["problems"])



def test_skip_that_drops_every_record_is_refused(tokenizer_dirs, tmp_path):
    # `--on-error skip` used to exit 0 with an empty dataset when no record was valid.
    src = tmp_path / "allbad.jsonl"
    src.write_text("\n".join(["{oops", json.dumps({"messages": [{"role": "user", "content": "q"}]}), "[1"]) + "\n")
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", on_error="skip")
    message = str(exc.value)
    assert message.startswith(f"{src}: ") and "all 3 records were dropped (3 invalid)" in message, message
    assert f"{src}:1: malformed JSON" in message and f"{src}:2: field `messages`" in message, message
    assert exc.value.file == str(src)
    assert_nothing_written(tmp_path / "out")

def test_existing_output_is_never_half_overwritten(tokenizer_dirs, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    out = tmp_path / "out"
    pyft.data.prepare(good, tokenizer_dirs["chatml"], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already exists.*--overwrite"):
        pyft.data.prepare(good, tokenizer_dirs["chatml"], out)
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"messages": []}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field `messages`: empty"):
        pyft.data.prepare(bad, tokenizer_dirs["chatml"], out, overwrite=True)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_output_may_not_contain_inputs(tokenizer_dirs, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    src = write_jsonl(d / "c.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="contains the input"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], d, overwrite=True)
    assert src.exists()


def test_bad_options(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="unknown train_on `everything`"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", train_on="everything")
    with pytest.raises(ConfigError, match="val_ratio"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", val_ratio=1.5)
    with pytest.raises(ConfigError, match="FILE:RATIO"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", mix=["nocolon"])
    with pytest.raises(TemplateError):
        bad = tmp_path / "t.jinja"
        bad.write_text("{% for %}")
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", template=str(bad))
    with pytest.raises(DataError, match="unsupported file extension `.csv`"):
        pyft.data.prepare(tmp_path / "x.csv", tokenizer_dirs["chatml"], tmp_path / "o")


def test_several_invalid_records_name_the_cli_flag(tokenizer_dirs, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join([json.dumps(GOOD), "{oops", json.dumps({"messages": []})]) + "\n")
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    assert str(exc.value).endswith("(and 1 more invalid records; pass --on-error skip to drop them)")
    assert "on_error" not in str(exc.value)
