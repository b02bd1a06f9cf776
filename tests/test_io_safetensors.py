"""pyft.io.safetensors: the one reader of safetensors headers and model indexes (the Rust core's).

Every former Python parser of headers (``pyft inspect``, the vLLM adapter check, the token-shard
dataset, :class:`pyft.io.shards.SafetensorsShards`) now refuses a hostile file with the very same
:class:`DataError`, naming the file; the ``safetensors`` package (the independent reference) refuses
each of these files too, and reads the valid ones as we do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pyft.errors import DataError
from pyft.io.safetensors import model_files, read_header


def _file(header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _f32(name: str, shape: list[int], start: int, end: int) -> dict:
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}}


HOSTILE = {
    "truncated-length": (b"\x01\x02\x03", "header too small"),
    "length-past-end": (_file(b"{}", length=2**63), "header too large"),
    "non-utf8": (_file(b'{"\xff": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
                 "invalid UTF-8 in header"),
    "not-json": (_file(b"{nope"), "invalid JSON in header"),
    "not-object": (_file(b"[1]"), "invalid JSON in header"),
    "unknown-dtype": (_file({"x": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                      'tensor `x` has unknown dtype "F17"'),
    "negative-dim": (_file({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
                     "tensor `x` has shape [-1]"),
    "size-mismatch": (_file(_f32("x", [3], 0, 8), b"\0" * 8), "F32[3] needs 12 bytes but data_offsets [0, 8] hold 8"),
    "overlapping": (_file({**_f32("x", [2], 0, 8), **_f32("y", [2], 4, 12)}, b"\0" * 12),
                    "invalid offset for tensor `y`"),
    "gap": (_file(_f32("x", [1], 4, 8), b"\0" * 8), "invalid offset for tensor `x`"),
    "past-end": (_file(_f32("x", [4], 0, 16), b"\0" * 8), "tensor `x` ends at byte 16 of the 8-byte data section"),
    "trailing": (_file(_f32("x", [1], 0, 4), b"\0" * 8), "the tensors cover 4 of the 8 data bytes"),
    "bad-metadata": (_file({"__metadata__": {"a": 1}}), "invalid JSON in header"),
}


def _callers(path: Path) -> dict[str, object]:
    """Each former parser, called on ``path`` (a file named ``model.safetensors`` /
    ``adapter_model.safetensors`` where the caller reads a directory)."""
    from pyft.data.dataset import read_safetensors_mmap
    from pyft.export.vllm import safetensors_names
    from pyft.inspect import inspect_path, read_safetensors_header

    calls = {
        "pyft.io.safetensors.read_header": lambda: read_header(path),
        "pyft.inspect.read_safetensors_header": lambda: read_safetensors_header(path),
        "pyft.inspect.inspect_path": lambda: inspect_path(path),
        "pyft.export.vllm.safetensors_names": lambda: safetensors_names(path),
        "pyft.data.dataset.read_safetensors_mmap": lambda: read_safetensors_mmap(path),
    }
    try:
        from pyft.io.shards import SafetensorsShards  # needs torch
    except ImportError:
        return calls
    calls["pyft.io.shards.SafetensorsShards"] = lambda: SafetensorsShards(path.parent)
    return calls


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_every_reader_rejects_a_hostile_header_with_the_same_error(tmp_path, case):
    content, needle = HOSTILE[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    messages = {}
    for caller, call in _callers(path).items():
        with pytest.raises(DataError) as info:
            call()
        assert info.value.file == str(path), caller
        messages[caller] = str(info.value)
    assert len(set(messages.values())) == 1, messages  # one error, whoever reads the file
    message = next(iter(messages.values()))
    assert message.startswith(f"{path}: not a valid safetensors file: ") and needle in message, message


@pytest.mark.parametrize("case", sorted(set(HOSTILE) - {"bad-metadata"}))
def test_the_safetensors_package_also_refuses_them(tmp_path, case):
    """The reference refuses the same files (it accepts non-string `__metadata__` values only in
    some versions, so that case is not compared)."""
    safetensors = pytest.importorskip("safetensors")
    path = tmp_path / "model.safetensors"
    path.write_bytes(HOSTILE[case][0])
    with pytest.raises(Exception) as info, safetensors.safe_open(str(path), framework="numpy") as f:
        list(f.keys())  # SafetensorError (or OSError in some versions) is raised by safe_open already
    assert not isinstance(info.value, (KeyboardInterrupt, SystemExit))


def test_valid_file_matches_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"b": np.arange(6, dtype=np.int64).reshape(2, 3), "a": np.full((4,), 1.5, dtype=np.float32),
               "empty": np.zeros((0, 3), dtype=np.float16), "u": np.arange(5, dtype=np.uint8)}
    path = tmp_path / "x.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "np", "note": "é"})
    header = read_header(path)
    assert header.metadata == {"format": "np", "note": "é"}
    assert header.file_size == path.stat().st_size
    assert sorted(header.names()) == sorted(tensors)
    assert [t.start for t in header.tensors] == sorted(t.start for t in header.tensors)  # data order
    raw = path.read_bytes()
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8}
    for t in header.tensors:
        ref = tensors[t.name]
        assert t.shape == ref.shape and t.nbytes == ref.nbytes, t
        got = np.frombuffer(raw[t.start:t.end], dtype=dtypes[t.dtype]).reshape(t.shape)
        np.testing.assert_array_equal(got, ref)  # exact: the bytes themselves


def test_model_files_reads_the_index_as_merge_does(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = tmp_path / "model"
    model.mkdir()
    for name in ("b.safetensors", "a.safetensors"):
        st.save_file({name[0]: np.zeros(2, dtype=np.float32)}, str(model / name))
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"b": "b.safetensors", "a": "./a.safetensors", "c": "a.safetensors"}}))
    assert model_files(model) == [model / "a.safetensors", model / "b.safetensors"]
    for weight_map, needle in [({"a": "../x.safetensors"}, "which is not a file inside"),
                               ({"a": "/etc/passwd"}, "which is not a file inside"),
                               ({"a": "missing.safetensors"}, "missing.safetensors which does not exist"),
                               ({"a": 1}, "`weight_map` entry `a` is not a file name")]:
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(DataError, match=needle) as info:
            model_files(model)
        assert info.value.file == str(index)
    index.write_bytes(b'{"weight_map": {"\xff": "a.safetensors"}}')
    with pytest.raises(DataError, match="malformed JSON") as info:
        model_files(model)
    assert info.value.file == str(index)
    index.unlink()
    with pytest.raises(DataError, match="no model.safetensors or model.safetensors.index.json"):
        model_files(model)


def test_a_fifo_is_refused_before_it_is_read(tmp_path):
    import os

    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    with pytest.raises(DataError, match="is a FIFO, not a regular file") as info:
        read_header(path)
    assert info.value.file == str(path)
