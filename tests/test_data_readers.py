"""Readers (JSONL, JSON array, Parquet), several inputs, mixing, dedup and the split."""

from __future__ import annotations

import json
import os
import re

import pytest

import pyft.data
from pyft.errors import DataError

from helpers import CONVERSATIONS, write_jsonl


def _all_ids(out, split="train"):
    ds = pyft.data.load(out, split)
    return [tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds))]


def test_jsonl_json_and_parquet_give_identical_shards(tokenizer_dirs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"messages": m} for m in CONVERSATIONS]
    jsonl = write_jsonl(tmp_path / "c.jsonl", records)
    arr = tmp_path / "c.json"
    arr.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    outs = {}
    for src in (jsonl, arr, parquet):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / src.suffix[1:])
        outs[src.suffix] = _all_ids(tmp_path / src.suffix[1:])
    assert outs[".jsonl"] == outs[".json"] == outs[".parquet"]
    assert len(outs[".jsonl"]) == len(CONVERSATIONS)


def test_json_array_and_parquet_errors_are_located(tokenizer_dirs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arr = tmp_path / "c.json"
    arr.write_text('[\n{"text": "ok"},\n\n{"text": ""}\n]')
    with pytest.raises(DataError, match=r"c\.json:4: field `text`: empty"):
        pyft.data.prepare(arr, tokenizer_dirs["chatml"], tmp_path / "o1")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]), parquet)
    with pytest.raises(DataError, match=r"c\.parquet:2: field `output`: empty"):
        pyft.data.prepare(parquet, tokenizer_dirs["chatml"], tmp_path / "o2")


def test_several_inputs_dedup_and_kind_mismatch(tokenizer_dirs, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": m} for m in CONVERSATIONS])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": m} for m in CONVERSATIONS[:2]])
    info = pyft.data.prepare([a, b], tokenizer_dirs["chatml"], tmp_path / "o", dedup=True)
    assert info.counts["read"] == 7 and info.counts["dropped"]["duplicate"] == 2 and info.counts["kept"] == 5
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    with pytest.raises(DataError, match="holds text data but .*a.jsonl holds chat data"):
        pyft.data.prepare([a, t], tokenizer_dirs["chatml"], tmp_path / "o2")


def test_split_is_deterministic_and_seeded(tokenizer_dirs, tmp_path):
    recs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(50)]
    src = write_jsonl(tmp_path / "c.jsonl", recs)
    runs = [pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / f"o{i}", val_ratio=0.2, seed=s)
            for i, s in enumerate([3, 3, 4])]
    assert [r.splits["validation"]["examples"] for r in runs] == [10, 10, 10]
    v = [_all_ids(tmp_path / f"o{i}", "validation") for i in range(3)]
    assert v[0] == v[1] != v[2]
    assert not set(v[0]) & set(_all_ids(tmp_path / "o0", "train"))


def test_mix_ratio(tokenizer_dirs, tmp_path):
    task = write_jsonl(tmp_path / "task.jsonl", [{"messages": [{"role": "user", "content": f"t{i}"},
                                                               {"role": "assistant", "content": "x"}]} for i in range(90)])
    general = write_jsonl(tmp_path / "gen.jsonl", [{"messages": [{"role": "user", "content": f"g{i}"},
                                                                 {"role": "assistant", "content": "y"}]} for i in range(100)])
    info = pyft.data.prepare(task, tokenizer_dirs["chatml"], tmp_path / "o", mix=[f"{general}:0.1"], val_ratio=0.1)
    # 81 task examples in train; 10% of the final training set from general -> 9 records.
    assert info.splits["train"]["examples"] == 90 and info.splits["validation"]["examples"] == 9
    assert info.counts["mix"][str(general)] == {"requested": 9, "taken": 9}


def _cli(*args: str, timeout: float = 60, memory_limit: int | None = None):
    """Run ``pyft ARGS`` in a subprocess: a read that blocks or never ends fails the test at
    ``timeout`` instead of hanging the run, and ``memory_limit`` (bytes of address space) makes
    one that reads without end fail fast instead of filling memory."""
    import resource
    import subprocess
    import sys

    def limit():
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return subprocess.run([sys.executable, "-m", "pyft.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_prepare_refuses_a_fifo_and_dev_zero(tokenizer_dirs, tmp_path):
    fifo = tmp_path / "chats.jsonl"
    os.mkfifo(fifo)
    r = _cli("data", "prepare", str(fifo), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "chats.jsonl: is a FIFO, not a regular file" in r.stderr, r.stderr
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    r = _cli("data", "prepare", str(zero), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(tmp_path / "o"),
             memory_limit=3 << 30)
    assert r.returncode == 1 and "zero.jsonl: is a character device, not a regular file" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_data_inspect_refuses_a_fifo_tokenizer(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp_path / "o"
    pyft.data.prepare(src, tokenizer_dirs["chatml"], out)
    tok = out / "tokenizer" / "tokenizer.json"
    tok.unlink()
    os.mkfifo(tok)
    r = _cli("data", "inspect", str(out))
    assert r.returncode == 1 and "tokenizer.json: is a FIFO, not a regular file" in r.stderr, r.stderr


def test_a_file_where_nothing_parses_reports_the_first_parse_error(tokenizer_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^.*bad\.jsonl:1: malformed JSON: .*\(no record of the file could be read\)"):
        pyft.data.prepare(bad, tokenizer_dirs["chatml"], tmp_path / "o")
    # A pretty-printed JSON object is not an array of records, nor one record per line.
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"data": [{"text": "a"}]}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"obj\.json:1: malformed JSON: .*a \.json file holds one JSON array"):
        pyft.data.prepare(obj, tokenizer_dirs["chatml"], tmp_path / "o")
    arrays = write_jsonl(tmp_path / "arrays.jsonl", [[1, 2], [3]])  # type: ignore[list-item]
    with pytest.raises(DataError, match=r"arrays\.jsonl:1: expected a JSON object, got an array; no record"):
        pyft.data.prepare(arrays, tokenizer_dirs["chatml"], tmp_path / "o")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records found: the file is empty"):
        pyft.data.prepare(empty, tokenizer_dirs["chatml"], tmp_path / "o")


def test_utf16_input_is_named_and_utf8_bom_accepted(tokenizer_dirs, tmp_path):
    records = [{"messages": m} for m in CONVERSATIONS]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    for name, encoding, what in [("le.jsonl", "utf-16", "UTF-16 (little-endian byte-order mark FF FE)"),
                                 ("nobom.jsonl", "utf-16-le", "UTF-16 or UTF-32 without a byte-order mark")]:
        (tmp_path / name).write_bytes(text.encode(encoding))
        pattern = re.escape(f"{name}: the text is {what}") + ".*; pyft reads JSON and JSON Lines only as UTF-8"
        with pytest.raises(DataError, match=pattern):
            pyft.data.prepare(tmp_path / name, tokenizer_dirs["chatml"], tmp_path / "o")
    # The UTF-8 byte-order mark (Windows editors write it) is accepted in .json arrays and .jsonl.
    arr = tmp_path / "bom.json"
    arr.write_bytes(json.dumps(records, ensure_ascii=False, indent=2).encode("utf-8-sig"))
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(text.encode("utf-8-sig"))
    for src in (arr, lines):
        info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / src.suffix[1:])
        assert info.counts["kept"] == len(CONVERSATIONS)
    assert _all_ids(tmp_path / "json") == _all_ids(tmp_path / "jsonl")
