"""pyft.io.shards: tensors read one at a time (or file-backed) equal safetensors' own reader;
malformed files are named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pyft.errors import DataError
from pyft.io.shards import SafetensorsShards


def test_read_and_map_equal_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(2, 2, dtype=torch.float16), "e": torch.zeros(0, 4),
               "u": torch.tensor([1, 2], dtype=torch.uint8)}
    save_file(dict(list(tensors.items())[:3]), str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(dict(list(tensors.items())[3:]), str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors", "e": "model-00002-of-00002.safetensors",
        "u": "model-00002-of-00002.safetensors"}}))
    shards = SafetensorsShards(tmp_path)
    assert sorted(shards.keys()) == sorted(tensors)
    reference = load_file(str(tmp_path / "model-00001-of-00002.safetensors"))
    reference.update(load_file(str(tmp_path / "model-00002-of-00002.safetensors")))
    for name, t in reference.items():
        for got in (shards.read(name), shards.map(name)):
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name
    mapped = shards.map("a")
    mapped.add_(1)  # private mapping: the file is untouched
    assert torch.equal(SafetensorsShards(tmp_path).read("a"), reference["a"])


def test_malformed_files_are_named(tmp_path):
    """Headers are validated by the Rust core (the reader behind merge and export)."""
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(DataError, match=r"model\.safetensors: not a valid safetensors file: invalid JSON in header"):
        SafetensorsShards(tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(DataError, match="tensor `w` ends at byte 16 of the 8-byte data section"):
        SafetensorsShards(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        SafetensorsShards(tmp_path)


def test_index_is_checked(tmp_path):
    """The index may only name shards inside the model directory, each tensor stored once."""
    model = tmp_path / "model"
    model.mkdir()
    save_file({"a": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    save_file({"a": torch.zeros(2)}, str(model / "one.safetensors"))
    save_file({"a": torch.ones(2)}, str(model / "two.safetensors"))
    index = model / "model.safetensors.index.json"
    for weight_map, needle in [({"a": "../outside.safetensors"},
                                r"`weight_map` entry `a` names `\.\./outside\.safetensors`, which is not a file inside"),
                               ({"a": str(tmp_path / "outside.safetensors")}, "is not a file inside"),
                               ({"a": 3}, r"`weight_map` entry `a` is not a file name"),
                               ({"a": "one.safetensors", "b": "two.safetensors"},
                                r"two\.safetensors: tensor `a` is also stored in one\.safetensors")]:
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(DataError, match=needle):
            SafetensorsShards(model)
    index.write_text("[]")
    with pytest.raises(DataError, match=r"index\.json: no `weight_map`"):
        SafetensorsShards(model)
