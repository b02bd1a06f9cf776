"""Property tests of the command line on hostile inputs (hypothesis, derandomized).

Each test feeds one entry point (`pyft data prepare`, `pyft data inspect`, `pyft inspect`,
`pyft quantize`, `pyft-merge`, `pyft-export`) inputs built from valid ones and then damaged:
random JSON and JSONL records, wrong encodings and truncations, config files with values of
the wrong type, safetensors files whose header length, offsets, shapes or dtypes lie, GGUF
files with damaged headers. The command runs in-process and must:

- return 0 (the damage left a valid input) or 1 with exactly one line on stderr, starting with
  the program's ``error:`` prefix (no traceback, no other exception);
- leave nothing in the output's directory on failure (no output, no staging file), and only the
  output on success;
- never write to its inputs.

Examples are derandomized (hypothesis derives them from the test's name) and bounded, so the
file is deterministic and runs in well under a minute; the Rust readers themselves are fuzzed
much harder by ``rust/pyft-core/tests/fuzz_*.rs``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyft.cli.export import main as export_main
from pyft.cli.main import main
from pyft.cli.merge import main as merge_main

from helpers import CONVERSATIONS

pytest.importorskip("torch")  # the fixtures build a model with it


def fuzz_settings(examples: int) -> settings:
    """Deterministic (derandomized, no example database), no deadline (cores are shared);
    ``examples`` times ``PYFT_FUZZ_SCALE`` (default 1; ``tools/fuzz`` raises it) examples."""
    import os

    scale = max(1, int(os.environ.get("PYFT_FUZZ_SCALE", "1")))
    return settings(derandomize=True, database=None, deadline=None, max_examples=examples * scale,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


# ---------------------------------------------------------------------------------------------
# Fixtures: one valid model, adapter, prepared dataset and GGUF file; damaged copies per example


@pytest.fixture(scope="module")
def world(tokenizer_dirs, tmp_path_factory) -> dict[str, Path]:
    import pyft
    from pyft.peft import LoraConfig, apply_lora
    from pyft.peft.adapter_io import save_adapter
    from pyft.testing.models import make_tiny_model

    root = tmp_path_factory.mktemp("cli-fuzz")
    tok = tokenizer_dirs["chatml"]
    model = make_tiny_model(root / "model", tok, arch="llama")
    m = pyft.load_model(model, dtype="float32")
    apply_lora(m, LoraConfig(r=2, alpha=4, targets="all-linear"))
    save_adapter(m, root / "adapter")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    assert main(["data", "prepare", str(data), "--tokenizer", str(tok), "--out", str(root / "prepared"),
                 "--quiet"]) == 0
    assert export_main([str(model), "--to", "gguf", "--out", str(root / "model.gguf")]) == 0
    return {"tokenizer": tok, "model": model, "adapter": root / "adapter", "prepared": root / "prepared",
            "gguf": root / "model.gguf", "root": root}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_checked(capsys, call: Callable[[], int], inputs: Path, out: Path, prefix: str, writes: bool = True) -> int:
    """Run one command and check the contract of this file (see the module docstring); a
    command that ``writes`` nothing must leave ``out``'s directory empty either way. Returns the
    exit status."""
    before = _digest(inputs)
    capsys.readouterr()
    rc = call()
    err = capsys.readouterr().err
    assert rc in (0, 1), f"exit {rc}: {err}"
    # Lines as a terminal shows them (str.splitlines would also split at \x1c-\x1e, \x85, ...).
    lines = [line for line in err.split("\n") if line.strip()]
    if rc == 1:
        assert len(lines) == 1 and lines[0].startswith(prefix), f"expected one `{prefix}` line, got:\n{err}"
        assert list(out.parent.iterdir()) == [], f"left behind: {sorted(p.name for p in out.parent.iterdir())}"
    else:
        assert "Traceback" not in err, err
        expected = [out.name] if writes else []
        assert sorted(p.name for p in out.parent.iterdir()) == expected, sorted(out.parent.iterdir())
        _reference_accepts_safetensors(inputs)
    assert _digest(inputs) == before, "the command wrote to its inputs"
    return rc


def _reference_accepts_safetensors(inputs: Path) -> None:
    """After a success, every safetensors input must be one the reference reader (the
    ``safetensors`` package) loads too: pyft must not accept what it should have refused."""
    from safetensors import safe_open

    for p in sorted(inputs.rglob("*.safetensors")):
        try:
            with safe_open(p, "np") as f:
                for name in f.keys():
                    f.get_slice(name)
        except Exception as e:  # the reference's error types vary by version
            raise AssertionError(f"pyft accepted {p.name}, which the safetensors package refuses: {e}") from e


class Case:
    """A fresh work directory: ``inputs/`` (damaged copies) and ``out/`` (the output's parent)."""

    def __init__(self, base: Path):
        self.dir = Path(tempfile.mkdtemp(dir=base))
        self.inputs = self.dir / "inputs"
        self.inputs.mkdir()
        (self.dir / "out").mkdir()

    def copy(self, src: Path, name: str | None = None) -> Path:
        dst = self.inputs / (name or src.name)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    def out(self, name: str) -> Path:
        return self.dir / "out" / name

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cases(tmp_path):
    made: list[Case] = []

    def new() -> Case:
        made.append(Case(tmp_path))
        return made[-1]

    yield new
    for c in made:
        c.close()


# ---------------------------------------------------------------------------------------------
# Damage

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                         st.sampled_from(["", "x" * 300, "\ufdd0", "\u0000", "<|im_end|>", "{{ x }}", -1, 0, 2**63]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=10)
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "bot", "", None, 1])


@st.composite
def records(draw) -> object:
    """A record shaped like one of the supported formats, with hostile values mixed in."""
    text = st.one_of(st.text(max_size=30), JSON_VALUES)
    message = st.fixed_dictionaries({"role": ROLES, "content": text})
    shape = draw(st.sampled_from(["messages", "sharegpt", "alpaca", "text", "preference", "kto", "any"]))
    if shape == "messages":
        return {"messages": draw(st.lists(message, max_size=4))}
    if shape == "sharegpt":
        turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "x"]), "value": text})
        return {"conversations": draw(st.lists(turn, max_size=4))}
    if shape == "alpaca":
        return {"instruction": draw(text), "input": draw(text), "output": draw(text)}
    if shape == "text":
        return {"text": draw(text)}
    if shape == "preference":
        return {"prompt": draw(text), "chosen": draw(text), "rejected": draw(text)}
    if shape == "kto":
        return {"prompt": draw(text), "completion": draw(text), "label": draw(JSON_SCALARS)}
    return draw(JSON_VALUES)


def damage_bytes(data, raw: bytes) -> bytes:
    """Byte-level damage: truncation, flipped bytes, an inserted chunk, or nothing."""
    kind = data.draw(st.sampled_from(["none", "truncate", "flip", "insert"]))
    if kind == "none" or not raw:
        return raw
    if kind == "truncate":
        return raw[:data.draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        out = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(out) - 1))
            out[i] = data.draw(st.integers(0, 255))
        return bytes(out)
    at = data.draw(st.integers(0, len(raw)))
    return raw[:at] + data.draw(st.binary(min_size=1, max_size=16)) + raw[at:]


def damage_safetensors(data, raw: bytes) -> bytes:
    """A safetensors file whose header lies: its length, a tensor's offsets, shape or dtype, a
    duplicated name, a header that is not an object; or byte-level damage."""
    (n,) = struct.unpack("<Q", raw[:8])
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    names = sorted(k for k in header if k != "__metadata__")
    kind = data.draw(st.sampled_from(["length", "offsets", "shape", "dtype", "duplicate", "header", "bytes"]))
    if kind == "length":
        length = data.draw(st.sampled_from([0, 1, n - 1, n + 1, 2**63, 2**64 - 1, len(raw)]))
        return struct.pack("<Q", length) + raw[8:]
    if kind == "bytes":
        return damage_bytes(data, raw)
    text = None
    if kind == "header":
        header = data.draw(JSON_VALUES)
    else:
        name = data.draw(st.sampled_from(names))
        t = header[name]
        start, end = t["data_offsets"]
        if kind == "offsets":
            t["data_offsets"] = data.draw(st.sampled_from(
                [[0, end - start], [start, end + 4], [end, start], [0, 2**63], [-1, end], [start - 2, end - 2]]))
        elif kind == "shape":
            t["shape"] = data.draw(st.sampled_from([[-1], [0], [2**63], [1.5], "x", [], t["shape"] * 2,
                                                    [*t["shape"][:-1], t["shape"][-1] + 1]]))
        elif kind == "dtype":
            t["dtype"] = data.draw(st.sampled_from(["X", "I64", "F8_E4M3", "U8", 1, None, "f32"]))
        else:
            text = json.dumps(header)[:-1] + f", {json.dumps(name)}: {json.dumps(t)}}}"
    text = text if text is not None else json.dumps(header)
    encoded = text.encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


def damage_json_file(data, path: Path) -> None:
    """Damage a JSON config: one key set to a hostile value, the whole file replaced by another
    JSON value, or byte-level damage."""
    raw = path.read_bytes()
    kind = data.draw(st.sampled_from(["key", "value", "bytes", "delete"]))
    if kind == "delete":
        path.unlink()
        return
    if kind == "bytes":
        path.write_bytes(damage_bytes(data, raw))
        return
    if kind == "value":
        path.write_text(json.dumps(data.draw(JSON_VALUES)))
        return
    obj = json.loads(raw)
    keys = sorted(obj) if isinstance(obj, dict) and obj else ["x"]
    key = data.draw(st.sampled_from(keys))
    obj[key] = data.draw(st.one_of(JSON_SCALARS, JSON_VALUES))
    path.write_text(json.dumps(obj))


def damage_model_dir(data, d: Path) -> None:
    """One or two damaged files of a model or adapter directory."""
    files = sorted(p.name for p in d.iterdir() if p.is_file())
    for name in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2, unique=True)):
        p = d / name
        if name.endswith(".safetensors"):
            p.write_bytes(damage_safetensors(data, p.read_bytes()))
        elif name.endswith(".json"):
            damage_json_file(data, p)
        else:
            p.write_bytes(damage_bytes(data, p.read_bytes()))


# ---------------------------------------------------------------------------------------------
# The commands


@fuzz_settings(40)
@given(data=st.data())
def test_data_prepare_on_hostile_records(world, cases, capsys, data):
    case = cases()
    recs = data.draw(st.lists(records(), max_size=6))
    layout = data.draw(st.sampled_from(["jsonl", "json", "json-bom", "utf16", "lines"]))
    if layout == "jsonl":
        name, raw = "d.jsonl", "".join(json.dumps(r) + "\n" for r in recs).encode()
    elif layout == "json":
        name, raw = "d.json", json.dumps(recs, indent=1).encode()
    elif layout == "json-bom":
        name, raw = "d.json", b"\xef\xbb\xbf" + json.dumps(recs).encode()
    elif layout == "utf16":
        name, raw = "d.jsonl", "\n".join(json.dumps(r) for r in recs).encode("utf-16")
    else:
        name, raw = "d.jsonl", "\n".join(json.dumps(r) for r in recs).encode()
    src = case.inputs / name
    src.write_bytes(damage_bytes(data, raw))
    out = case.out("prepared")
    argv = ["data", "prepare", str(src), "--tokenizer", str(world["tokenizer"]), "--out", str(out), "--quiet",
            "--on-error", data.draw(st.sampled_from(["fail", "skip"])), "--max-len", "64"]
    if run_checked(capsys, lambda: main(argv), case.inputs, out, "pyft: error:") == 0:
        # An output of 0 rows (`--on-error skip` dropped everything) has nothing to show: exit 1.
        rows = json.loads((out / "meta.json").read_text())["splits"]["train"]["rows"]
        capsys.readouterr()
        assert main(["data", "inspect", str(out), "--no-color"]) == (0 if rows else 1), capsys.readouterr().err


def test_data_prepare_that_drops_every_record_writes_nothing(world, tmp_path, capsys):
    """Found by the test above: `data prepare --on-error skip` whose records were all dropped wrote
    a directory without rows (whose `data inspect` then ended in an IndexError traceback). It is
    refused now, in one line, and nothing is written."""
    src = tmp_path / "d.jsonl"
    src.write_text('{"messages": []}\n')
    out = tmp_path / "out"
    assert main(["data", "prepare", str(src), "--tokenizer", str(world["tokenizer"]), "--out", str(out), "--quiet",
                 "--on-error", "skip"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "all 1 records were dropped (1 invalid)" in err, err
    assert not out.exists()


@fuzz_settings(20)
@given(data=st.data())
def test_data_inspect_on_a_damaged_prepared_directory(world, cases, capsys, data):
    case = cases()
    prepared = case.copy(world["prepared"])
    files = sorted(str(p.relative_to(prepared)) for p in prepared.rglob("*") if p.is_file())
    target = prepared / data.draw(st.sampled_from(files))
    if target.suffix == ".json":
        damage_json_file(data, target)
    else:
        target.write_bytes(damage_bytes(data, target.read_bytes()))
    run_checked(capsys, lambda: main(["data", "inspect", str(prepared), "--no-color"]), case.inputs,
                case.out("none"), "pyft: error:", writes=False)


@fuzz_settings(40)
@given(data=st.data())
def test_inspect_on_damaged_models_and_files(world, cases, capsys, data):
    case = cases()
    what = data.draw(st.sampled_from(["model-dir", "safetensors", "gguf", "adapter-dir"]))
    if what == "model-dir":
        target = case.copy(world["model"])
        damage_model_dir(data, target)
    elif what == "adapter-dir":
        target = case.copy(world["adapter"])
        damage_model_dir(data, target)
    elif what == "safetensors":
        target = case.copy(world["adapter"] / "adapter_model.safetensors")
        target.write_bytes(damage_safetensors(data, target.read_bytes()))
    else:
        target = case.copy(world["gguf"])
        raw = bytearray(target.read_bytes())
        field = data.draw(st.sampled_from([None, 4, 8, 16, 24]))  # version, tensor count, KV count, first key length
        if field is not None:
            raw[field:field + 8] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, 2**63, 2**64 - 1, 3 << 32])))
        head = damage_bytes(data, bytes(raw[:4096]))
        target.write_bytes(head + bytes(raw[4096:]))
    run_checked(capsys, lambda: main(["inspect", str(target), "--tensors"]), case.inputs, case.out("none"),
                "pyft: error:", writes=False)


@fuzz_settings(25)
@given(data=st.data())
def test_quantize_on_damaged_models(world, cases, capsys, data):
    case = cases()
    model = case.copy(world["model"])
    damage_model_dir(data, model)
    out = case.out("nf4")
    run_checked(capsys, lambda: main(["quantize", str(model), str(out)]), case.inputs, out, "pyft: error:")


@fuzz_settings(25)
@given(data=st.data())
def test_merge_on_damaged_base_and_adapter(world, cases, capsys, data):
    case = cases()
    base, adapter = case.copy(world["model"]), case.copy(world["adapter"])
    for d in data.draw(st.lists(st.sampled_from([base, adapter]), min_size=1, max_size=2, unique=True)):
        damage_model_dir(data, d)
    out = case.out("merged")
    run_checked(capsys, lambda: merge_main([str(base), str(adapter), str(out)]), case.inputs, out,
                "pyft-merge: error:")


@fuzz_settings(25)
@given(data=st.data())
def test_export_on_damaged_models_and_adapters(world, cases, capsys, data):
    case = cases()
    base, adapter = case.copy(world["model"]), case.copy(world["adapter"])
    target = data.draw(st.sampled_from(["gguf", "gguf-adapter", "vllm-merge", "gguf-lora"]))
    damage_model_dir(data, adapter if target != "gguf" and data.draw(st.booleans()) else base)
    if target == "gguf":
        out, argv = case.out("m.gguf"), [str(base), "--to", "gguf"]
    elif target == "gguf-adapter":
        out, argv = case.out("m.gguf"), [str(base), "--adapter", str(adapter), "--to", "gguf", "--qtype", "q8_0"]
    elif target == "gguf-lora":
        out, argv = case.out("a.gguf"), [str(adapter), "--base", str(base), "--to", "gguf-lora"]
    else:
        out, argv = case.out("vllm"), [str(adapter), "--base", str(base), "--to", "vllm", "--merge"]
    run_checked(capsys, lambda: export_main([*argv, "--out", str(out)]), case.inputs, out, "pyft-export: error:")
