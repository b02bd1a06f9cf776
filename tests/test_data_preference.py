"""Preference and KTO data in `pyft.data.prepare`: prompt truncation (`truncation=keep_end|keep_start`),
the truncation counters of meta.json, and bad records (file:line, field, nothing written).

Record checks already covered by test_data_validation.py (text `chosen == rejected`, a blank `chosen`,
a null `rejected`, a string KTO label) are not repeated here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pyft.data
from pyft.cli.main import main
from pyft.errors import ConfigError, DataError

from helpers import assert_nothing_written, write_jsonl

MAX_LEN = 64


def _words(tag: str, n: int) -> str:
    """``n`` distinct words, so the start and the end of a long prompt tokenize differently."""
    return " ".join(f"{tag}{i}" for i in range(n))


# (prompt, chosen, rejected): prompt cut only, completion cut only, both cut, nothing cut.
PREFERENCE_TEXT = [
    {"prompt": "Summarize: " + _words("alpha", 60) + "\nSummary:", "chosen": " Short.", "rejected": " No."},
    {"prompt": "Q: list words.\nA:", "chosen": " " + _words("beta", 60), "rejected": " None."},
    {"prompt": "Context: " + _words("gamma", 60) + "\nAnswer:", "chosen": " " + _words("delta", 60),
     "rejected": " " + _words("eps", 50)},
    {"prompt": "Name a colour:", "chosen": " Blue.", "rejected": " Seven."},
]
EXPECTED_COUNTS = {"truncated": 3, "truncated_prompt": 2, "truncated_completion": 2}


def _as_messages(rec: dict) -> dict:
    return {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": rec["prompt"]}],
            "chosen": [{"role": "assistant", "content": rec["chosen"].strip()}],
            "rejected": [{"role": "assistant", "content": rec["rejected"].strip()}]}


def _rows(out: Path) -> list[dict[str, list[int]]]:
    ds = pyft.data.load(out)
    return [{k: v.tolist() for k, v in ds[i].items()} for i in range(len(ds))]


def _expected_cut(prompt: list[int], completions: list[list[int]], max_len: int, truncation: str):
    """The documented rule: completions are cut (keeping their start) so that the prompt keeps at
    least min(prompt_len, max_len // 2) tokens; the prompt gets the rest, from the end it keeps.
    Returns (prompt, completions, prompt_cut, completion_cut)."""
    longest = max(map(len, completions))
    if len(prompt) + longest <= max_len:
        return prompt, completions, False, False
    keep_completion = min(longest, max_len - min(len(prompt), max_len // 2))
    keep_prompt = max_len - keep_completion
    cut = len(prompt) > keep_prompt
    if cut:
        prompt = prompt[-keep_prompt:] if truncation == "keep_end" else prompt[:keep_prompt]
    return prompt, [c[:keep_completion] for c in completions], cut, longest > keep_completion


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "messages"])
@pytest.mark.parametrize("truncation", ["keep_end", "keep_start"])
def test_preference_prompt_keeps_its_end_or_start(truncation, conversational, tokenizer_dirs, tmp_path):
    recs = [_as_messages(r) for r in PREFERENCE_TEXT] if conversational else PREFERENCE_TEXT
    src = write_jsonl(tmp_path / "p.jsonl", recs)
    tok = tokenizer_dirs["chatml"]
    full = _rows(pyft.data.prepare(src, tok, tmp_path / "full", max_len=4096).out_dir)
    info = pyft.data.prepare(src, tok, tmp_path / "cut", max_len=MAX_LEN, truncation=truncation)
    cut = _rows(tmp_path / "cut")
    assert len(cut) == len(full) == len(recs)
    assert all(len(f["prompt"]) + max(len(f["chosen"]), len(f["rejected"])) > MAX_LEN for f in full[:3])
    prompt_cuts = completion_cuts = 0
    for f, c in zip(full, cut):
        n = len(c["prompt"])
        assert n <= len(f["prompt"])
        if n < len(f["prompt"]):
            prompt_cuts += 1
            # The kept tokens are exactly the start or the end of the untruncated prompt.
            kept = f["prompt"][:n] if truncation == "keep_start" else f["prompt"][-n:]
            assert c["prompt"] == kept
            assert c["prompt"] != (f["prompt"][-n:] if truncation == "keep_start" else f["prompt"][:n])
        prompt, (chosen, rejected), p_cut, c_cut = _expected_cut(
            f["prompt"], [f["chosen"], f["rejected"]], MAX_LEN, truncation)
        assert (c["prompt"], c["chosen"], c["rejected"]) == (prompt, chosen, rejected)
        assert f["chosen"][: len(c["chosen"])] == c["chosen"]  # completions keep their start
        completion_cuts += c_cut
        assert p_cut == (n < len(f["prompt"]))
    assert (prompt_cuts, completion_cuts) == (2, 2)
    assert {k: info.counts[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert info.meta["options"]["truncation"] == truncation
    assert f"truncated: prompt 2, completion 2  (truncation {truncation})" in info.summary()


@pytest.mark.parametrize("truncation", ["keep_end", "keep_start"])
def test_kto_prompt_keeps_its_end_or_start(truncation, tokenizer_dirs, tmp_path):
    recs = [{"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0}
            for i, r in enumerate(PREFERENCE_TEXT)]
    src = write_jsonl(tmp_path / "k.jsonl", recs)
    tok = tokenizer_dirs["llama3"]
    full = _rows(pyft.data.prepare(src, tok, tmp_path / "full", max_len=4096).out_dir)
    info = pyft.data.prepare(src, tok, tmp_path / "cut", max_len=MAX_LEN, truncation=truncation)
    cut = _rows(tmp_path / "cut")
    for f, c in zip(full, cut, strict=True):
        prompt, (completion,), _, _ = _expected_cut(f["prompt_ids"], [f["completion_ids"]], MAX_LEN, truncation)
        assert (c["prompt_ids"], c["completion_ids"], c["label"]) == (prompt, completion, f["label"])
        n = len(prompt)
        assert prompt == (f["prompt_ids"][:n] if truncation == "keep_start" else f["prompt_ids"][-n:])
    # Records 0 and 2 lose prompt tokens, 1 and 2 completion tokens (as for preference data).
    pairs = list(zip(full, cut))
    assert [len(c["prompt_ids"]) < len(f["prompt_ids"]) for f, c in pairs] == [True, False, True, False]
    assert [len(c["completion_ids"]) < len(f["completion_ids"]) for f, c in pairs] == [False, True, True, False]
    assert {k: info.counts[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS


def test_drop_counts_no_truncation(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", PREFERENCE_TEXT)
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", max_len=MAX_LEN, overlong="drop",
                             truncation="keep_start")
    assert info.counts["kept"] == 1 and info.counts["dropped"]["overlong"] == 3
    assert {k: info.counts[k] for k in EXPECTED_COUNTS} == dict.fromkeys(EXPECTED_COUNTS, 0)
    # Shown for preference data even when nothing was cut.
    assert "truncated: prompt 0, completion 0  (truncation keep_start)" in info.summary()


def test_chat_meta_has_zero_counters_and_no_summary_line(tokenizer_dirs, tmp_path):
    long = {"messages": [{"role": "user", "content": _words("w", 80)}, {"role": "assistant", "content": "ok"}]}
    src = write_jsonl(tmp_path / "c.jsonl", [long])
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", max_len=MAX_LEN, train_on="all")
    assert info.counts["truncated"] == 1
    assert info.counts["truncated_prompt"] == info.counts["truncated_completion"] == 0
    assert info.meta["options"]["truncation"] == "keep_end"
    assert "truncated:" not in info.summary()


def test_unknown_truncation_is_rejected(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", PREFERENCE_TEXT)
    with pytest.raises(ConfigError, match=r"unknown truncation `middle` \(expected keep_end or keep_start\)"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "o", truncation="middle")
    assert_nothing_written(tmp_path / "o")


def test_cli_truncation_flag(tokenizer_dirs, tmp_path, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", PREFERENCE_TEXT)
    tok = str(tokenizer_dirs["chatml"])
    assert main(["data", "prepare", str(src), "--tokenizer", tok, "--out", str(tmp_path / "full"), "--quiet"]) == 0
    assert main(["data", "prepare", str(src), "--tokenizer", tok, "--out", str(tmp_path / "cut"),
                 "--max-len", str(MAX_LEN), "--truncation", "keep_start"]) == 0
    assert "truncated: prompt 2, completion 2  (truncation keep_start)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["options"]["truncation"] == "keep_start"
    for f, c in zip(_rows(tmp_path / "full"), _rows(tmp_path / "cut")):
        assert c["prompt"] == f["prompt"][: len(c["prompt"])]
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", str(src), "--tokenizer", tok, "--out", str(tmp_path / "o"), "--truncation", "middle"])
    assert exc.value.code == 2
    assert "invalid choice: 'middle'" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "o")


# Bad records: (name, first good record, bad record on line 2, message after "FILE:2: ", field).
PREF = {"prompt": "p", "chosen": "a", "rejected": "b"}
KTO = {"prompt": "p", "completion": "c", "label": True}
USER = [{"role": "user", "content": "q"}]
ANSWER_A, ANSWER_B = [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]
BAD = [
    ("messages_identical", PREF,
     {"prompt": USER, "chosen": ANSWER_A, "rejected": list(ANSWER_A)},
     "field `rejected`: identical to `chosen`: the pair carries no preference", "rejected"),
    ("rejected_absent", PREF, {"prompt": "p", "chosen": "c"}, "field `rejected`: missing", "rejected"),
    ("kto_completion_empty", KTO, {"prompt": "p", "completion": "", "label": False}, "field `completion`: empty",
     "completion"),
    ("kto_label_absent", KTO, {"prompt": "p", "completion": "c"}, "field `label`: missing", "label"),
    ("kto_label_number", KTO, {"prompt": "p", "completion": "c", "label": 1},
     "field `label`: expected true or false, got 1", "label"),
]


def _bad_file(tmp_path: Path, first: dict, bad: dict) -> Path:
    return write_jsonl(tmp_path / "bad.jsonl", [first, bad])


@pytest.mark.parametrize("name,first,bad,message,field", BAD, ids=[b[0] for b in BAD])
def test_bad_record_fails_naming_file_line_field(name, first, bad, message, field, tokenizer_dirs, tmp_path):
    src = _bad_file(tmp_path, first, bad)
    out = tmp_path / "out"
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], out)
    assert str(exc.value) == f"{src}:2: {message}"
    assert (exc.value.file, exc.value.line, exc.value.field) == (str(src), 2, field)
    assert_nothing_written(out)


CLI_BAD = [
    ("chosen_empty_string", PREF, {"prompt": "p", "chosen": "", "rejected": "r"}, "field `chosen`: empty"),
    ("text_identical", PREF, {"prompt": "p", "chosen": "same", "rejected": "same"},
     "field `rejected`: identical to `chosen`"),
    ("kto_label_absent", KTO, {"prompt": "p", "completion": "c"}, "field `label`: missing"),
    ("kto_label_string", KTO, {"prompt": "p", "completion": "c", "label": "yes"},
     'field `label`: expected true or false, got "yes"'),
]


@pytest.mark.parametrize("name,first,bad,message", CLI_BAD, ids=[b[0] for b in CLI_BAD])
def test_cli_bad_record_exits_nonzero(name, first, bad, message, tokenizer_dirs, tmp_path, capsys):
    src = _bad_file(tmp_path, first, bad)
    out = tmp_path / "out"
    assert main(["data", "prepare", str(src), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"pyft: error: {src}:2: {message}" in captured.err
    assert captured.out == ""
    assert_nothing_written(out)


# A template that never renders assistant messages: every conversational completion tokenizes to nothing.
NO_ASSISTANT = (
    "{%- for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("kind", ["preference", "kto"])
def test_completion_empty_after_tokenization(kind, tokenizer_dirs, tmp_path):
    (tmp_path / "t.jinja").write_text(NO_ASSISTANT)
    if kind == "preference":
        good, bad, field = PREF, {"prompt": USER, "chosen": ANSWER_A, "rejected": ANSWER_B}, "chosen"
    else:
        good, bad, field = KTO, {"prompt": USER, "completion": ANSWER_A, "label": True}, "completion"
    src = _bad_file(tmp_path, good, bad)
    common = dict(template=str(tmp_path / "t.jinja"))
    # on_error=fail (default): an error naming the record and field, nothing written.
    with pytest.raises(DataError) as exc:
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "fail", **common)
    assert str(exc.value) == f"{src}:2: field `{field}`: empty completion after tokenization"
    assert (exc.value.line, exc.value.field) == (2, field)
    assert_nothing_written(tmp_path / "fail")
    # on_error=skip: dropped, counted as invalid and reported.
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "skip", on_error="skip", **common)
    assert info.counts["kept"] == 1 and info.counts["dropped"]["invalid"] == 1
    assert info.meta["problems"] == [f"{src}:2: field `{field}`: empty completion after tokenization"]
