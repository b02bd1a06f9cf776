"""Readers (JSONL, JSON array, Parquet), several inputs, mixing, dedup and the split."""

from __future__ import annotations

import json

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
