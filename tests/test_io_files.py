"""pyft.io.files: the one reader of the small files in model, adapter and data directories."""

from __future__ import annotations

import os
import threading

import pytest

from pyft.errors import DataError
from pyft.io.files import (
    MAX_JSON_BYTES,
    check_fields,
    check_model_config,
    check_regular,
    child_path,
    json_field,
    read_bytes,
    read_json_object,
    read_text,
)


def test_json_objects_only_named_with_line_and_column(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}')  # a UTF-8 BOM is accepted (Windows editors write one)
    assert read_json_object(p) == {"a": 1}
    for content, needle in [(b"[1, 2]", "expected a JSON object, got an array"),
                            (b'"text"', 'expected a JSON object, got a string "text"'),
                            (b"null", "expected a JSON object, got null"),
                            (b'{"a": 1,\n "b": }', "malformed JSON at line 2, column 7: Expecting value"),
                            (b"{\"a\": \"\xff\"}", r"not UTF-8 text \(byte 7: invalid start byte\)"),
                            (b"[" * 100_000, "malformed JSON: nested too deeply")]:
        p.write_bytes(content)
        with pytest.raises(DataError, match=needle) as info:
            read_json_object(p)
        assert str(info.value).startswith(f"{p}: ") and info.value.file == str(p)


def test_fields_are_typed(tmp_path):
    p = tmp_path / "adapter_config.json"
    data = {"r": 8, "alpha": True, "name": None, "targets": ["q", 1]}
    assert json_field(data, p, "r", "positive_int") == 8
    assert json_field(data, p, "missing", "str", "x") == "x" and json_field(data, p, "name", "str", "y") == "y"
    for key, kind, kwargs, needle in [("alpha", "number", {}, "field `alpha` must be a number, got true"),
                                      ("name", "str", {"nullable": False}, "field `name` must be a string, got null"),
                                      ("missing", "str", {"required": True}, "field `missing` is missing"),
                                      ("targets", "str_list", {}, "field `targets` must be an array of strings")]:
        with pytest.raises(DataError, match=needle) as info:
            json_field(data, p, key, kind, **kwargs)
        assert info.value.field == key
    config = {"model_type": "llama", "hidden_size": 64, "head_dim": None, "text_config": {"vocab_size": 0}}
    with pytest.raises(DataError, match="field `text_config.vocab_size` must be a positive integer, got an integer 0"):
        check_model_config(config, tmp_path / "config.json")


def test_schema_of_files_pyft_reads_back(tmp_path):
    schema = {"kind": "str", "splits": {"*": {"shards": [{"file": "str", "rows": "int"}]}}, "note?": "str"}
    check_fields({"kind": "chat", "splits": {"train": {"shards": [{"file": "a", "rows": 2}]}}}, "m.json", schema)
    with pytest.raises(DataError, match=r"field `splits\.train\.shards\[1\]\.rows` must be an integer, got null"):
        check_fields({"kind": "chat", "splits": {"train": {"shards": [{"file": "a", "rows": 2},
                                                                      {"file": "b", "rows": None}]}}}, "m.json", schema)
    with pytest.raises(DataError, match="field `splits` is missing"):
        check_fields({"kind": "chat"}, "m.json", schema)
    assert child_path(tmp_path, "train/shard.safetensors", "m.json", "f") == tmp_path / "train" / "shard.safetensors"
    for name in ("../x", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(DataError, match="is not a file inside"):
            child_path(tmp_path, name, "m.json", "f")


def test_special_files_are_refused_before_reading(tmp_path):
    """A FIFO is refused without waiting for a writer; /dev/zero without reading it. The reads run
    in a thread joined with a timeout, so a regression fails instead of hanging."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    zero = tmp_path / "tokenizer_config.json"
    zero.symlink_to("/dev/zero")
    (tmp_path / "dir.json").mkdir()
    errors: dict[str, str] = {}

    def read_all() -> None:
        for path, reader in [(fifo, read_json_object), (zero, read_json_object), (fifo, read_text),
                             (zero, read_bytes), (tmp_path / "dir.json", check_regular)]:
            try:
                reader(path)
            except DataError as e:
                errors[f"{path.name}:{reader.__name__}"] = str(e)

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "a read blocked"
    assert errors == {
        "config.json:read_json_object": f"{fifo}: is a FIFO, not a regular file (pyft reads only regular files; "
                                        "symlinks are followed to what they point at)",
        "tokenizer_config.json:read_json_object": f"{zero}: is a character device, not a regular file (pyft reads "
                                                  "only regular files; symlinks are followed to what they point at)",
        "config.json:read_text": errors["config.json:read_json_object"],
        "tokenizer_config.json:read_bytes": errors["tokenizer_config.json:read_json_object"],
        "dir.json:check_regular": f"{tmp_path / 'dir.json'}: is a directory, not a regular file (pyft reads only "
                                  "regular files; symlinks are followed to what they point at)",
    }


def test_size_limit(tmp_path):
    p = tmp_path / "big.json"
    with open(p, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: no disk used
    with pytest.raises(DataError, match=f"is {MAX_JSON_BYTES + 1} bytes, more than the {MAX_JSON_BYTES} bytes"):
        read_json_object(p)


def test_train_config_that_is_not_utf8_is_named(tmp_path):
    from pyft.train import load_config

    p = tmp_path / "run.yaml"
    p.write_bytes(b"model: \xff\n")
    with pytest.raises(DataError, match=r"run\.yaml: not UTF-8 text \(byte 7: invalid start byte\)"):
        load_config(p)
