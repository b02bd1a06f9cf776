"""`pyft data inspect` (and every reader of a prepared directory) on damaged or hostile directories:
refused naming the file and the field or tensor, exit 1, never a traceback or a hang."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import CONVERSATIONS

from pyft.cli.main import main
from pyft.data import PreparedDataset
from pyft.errors import DataError


@pytest.fixture(scope="module")
def prepared(tokenizer_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("data-inspect")
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    assert main(["data", "prepare", str(data), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out",
                 str(root / "prepared"), "--quiet"]) == 0
    return root / "prepared"


def _shard(d):
    return d / json.loads((d / "meta.json").read_text())["splits"]["train"]["shards"][0]["file"]


def _split(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _edit_meta(edit):
    def spoil(d):
        meta = json.loads((d / "meta.json").read_text())
        edit(meta)
        (d / "meta.json").write_text(json.dumps(meta))
        return d / "meta.json"
    return spoil


def _edit_header(edit):
    def spoil(d):
        header, data = _split(_shard(d))
        edit(header)
        _join(_shard(d), header, data)
        return _shard(d)
    return spoil


def _edit_tensor(name, values):
    """Overwrite the first values of a shard tensor (int32) in place: a valid file, inconsistent data."""
    def spoil(d):
        path = _shard(d)
        header, data = _split(path)
        start = header[name]["data_offsets"][0]
        raw = b"".join(int(v).to_bytes(4, "little", signed=True) for v in values)
        data = data[:start] + raw + data[start + len(raw):]
        _join(path, header, data)
        return path
    return spoil


def _swap_offsets(header):
    header["labels"]["data_offsets"], header["input_ids"]["data_offsets"] = \
        header["input_ids"]["data_offsets"], header["input_ids"]["data_offsets"]


def _negative_dim(header):
    header["labels"]["shape"] = [-1]


DAMAGE = {
    "meta_array": (lambda d: ((d / "meta.json").write_text("[]"), d / "meta.json")[1],
                   "expected a JSON object, got an array"),
    "meta_counts_missing": (_edit_meta(lambda m: m.pop("counts")), "field `counts` is missing"),
    "meta_rows_string": (_edit_meta(lambda m: m["splits"]["train"]["shards"][0].update(rows="3")),
                         r'field `splits\.train\.shards\[0\]\.rows` must be an integer, got a string "3"'),
    "meta_shard_outside": (_edit_meta(lambda m: m["splits"]["train"]["shards"][0].update(file="../../etc/passwd")),
                           r"field `splits\.train\.shards`: '\.\./\.\./etc/passwd' is not a file inside"),
    "meta_kind": (_edit_meta(lambda m: m.update(kind="poetry")), "field `kind` is 'poetry'"),
    "header_overlap": (_edit_header(_swap_offsets), "invalid offset for tensor `"),
    "header_negative_dim": (_edit_header(_negative_dim), r"tensor `labels` has shape \[-1\]"),
    "offsets_past_tokens": (_edit_tensor("doc_offsets", [0, 10**6]),
                            r"tensor `doc_offsets` (must start at 0 and never decrease|ends at \d+, past the)"),
    "offsets_decrease": (_edit_tensor("row_offsets", [0, 5, 1]), "tensor `row_offsets` must start at 0 and never"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_prepared_directories_are_named(prepared, tmp_path, capsys, case):
    d = tmp_path / "prepared"
    shutil.copytree(prepared, d)
    spoil, needle = DAMAGE[case]
    culprit = spoil(d)
    assert main(["data", "inspect", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyft: error: {culprit}: ") and re.search(needle, err) and err.count("\n") == 1, err
    with pytest.raises(DataError, match=needle) as info:
        PreparedDataset(d)
    assert info.value.file == str(culprit)


_GUARDED = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            "from pyft.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_special_shard_files_are_refused_without_blocking(prepared, tmp_path, kind):
    """A shard that is a FIFO used to block `pyft data inspect` for ever. Run in a subprocess with a
    timeout and a 2 GiB address-space cap (the command imports no torch), so the old behaviour fails
    the test instead of hanging it."""
    d = tmp_path / "prepared"
    shutil.copytree(prepared, d)
    shard = _shard(d)
    shard.unlink()
    os.mkfifo(shard) if kind == "fifo" else shard.symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-c", _GUARDED.format(limit=2 * 2**30), "data", "inspect", str(d)],
                       check=False, capture_output=True, text=True, timeout=60)
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert r.returncode == 1 and r.stderr.startswith(f"pyft: error: {shard}: is {what}, not a regular file"), r.stderr


def test_index_out_of_range_names_the_flag(prepared, capsys):
    n = len(PreparedDataset(prepared))
    assert main(["data", "inspect", str(prepared), "--index", str(n)]) == 1
    assert capsys.readouterr().err == f"pyft: error: --index {n}: the train split of {prepared} has {n} rows\n"
    assert main(["data", "inspect", str(prepared), "--index", "-1", "--no-color"]) == 0


def test_token_ids_outside_the_vocabulary_are_named(prepared, tmp_path, capsys):
    """A damaged token id used to end in an OverflowError traceback from the tokenizer."""
    d = tmp_path / "prepared"
    shutil.copytree(prepared, d)
    _edit_tensor("input_ids", [-5])(d)
    assert main(["data", "inspect", str(d)]) == 1
    assert capsys.readouterr().err == (f"pyft: error: {d}: row 0 of the train split holds token id -5 in `input_ids`, "
                                       "outside the tokenizer's 4096 ids\n")
