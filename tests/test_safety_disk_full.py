"""A full disk while ``pyft data prepare``, ``pyft-merge`` and ``pyft-export`` write (issue 13).

Two ways to fill it: a file-size limit (``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored: a write past it
fails with ``EFBIG``, "File too large"), and, where this process may mount one, a small tmpfs
(``ENOSPC``, "No space left on device"). Either way: exit code 1, one error line naming the file
being written and the OS reason, no traceback, no staging left, inputs and any previous output
byte-identical.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
from crashing import Inputs, build_inputs, command, run, snapshot, staging_entries

#: Every case writes a file larger than this: prepare's train shard (~3.5 MB), the merged
#: safetensors (21 MB), the GGUF files (f16 10.8 MB, Q8_0 5.8 MB); the inputs' largest copied file,
#: tokenizer.json, is 0.27 MB.
LIMIT = 1 << 20

#: The OS reasons, as strerror words them ("File too large", "No space left on device").
EFBIG, ENOSPC = os.strerror(errno.EFBIG), os.strerror(errno.ENOSPC)

CASES = ["prepare", "merge", "export-gguf", "export-ollama", "export-vllm-merge"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("disk-full-inputs"), hidden_size=256, intermediate_size=704, rows=6000)


def _command(case: str, inp: Inputs, out: Path) -> list[str]:
    a1, _ = inp.adapters
    return {
        "prepare": lambda: command("pyft", "data", "prepare", inp.data, "--tokenizer", inp.tokenizer, "--out", out,
                                   "--quiet"),
        "merge": lambda: command("pyft-merge", inp.base, a1, out),
        "export-gguf": lambda: command("pyft-export", inp.base, "--to", "gguf", "--out", out),
        "export-ollama": lambda: command("pyft-export", inp.base, "--adapter", a1, "--to", "ollama", "--out", out),
        "export-vllm-merge": lambda: command("pyft-export", a1, "--base", inp.base, "--to", "vllm", "--merge",
                                             "--out", out),
    }[case]()


def _out(case: str, parent: Path) -> Path:
    return parent / ("model.gguf" if case == "export-gguf" else "result")


def _assert_clean_failure(done: subprocess.CompletedProcess, out: Path, reason: str) -> None:
    """Exit 1 and one line ``PROG: error: ...`` naming a path under ``out``'s parent that mentions
    ``out``'s name (the output or its staging) and the OS ``reason``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.match(r"pyft(-merge|-export)?: error: ", lines[0]), lines[0]
    assert reason in lines[0], lines[0]
    named = re.findall(re.escape(str(out.parent)) + r"/\S*", lines[0])
    assert any(out.name in p for p in named), f"the error names no file of {out.name}: {lines[0]}"
    assert staging_entries(out) == [], f"staging left: {staging_entries(out)}"


@pytest.mark.parametrize("case", CASES)
def test_file_size_limit_fails_cleanly(case, inputs, tmp_path):
    inputs_before = snapshot(inputs.root)
    out = _out(case, tmp_path / "first")
    out.parent.mkdir()
    _assert_clean_failure(run(_command(case, inputs, out), limit_bytes=LIMIT), out, EFBIG)
    assert not out.exists()

    out = _out(case, tmp_path / "replace")
    out.parent.mkdir()
    done = run(_command(case, inputs, out))
    assert done.returncode == 0, done.stderr
    previous = snapshot(out)
    _assert_clean_failure(run(_command(case, inputs, out) + ["--overwrite"], limit_bytes=LIMIT), out, EFBIG)
    assert snapshot(out) == previous, f"{case}: the previous output changed"
    assert snapshot(inputs.root) == inputs_before, f"{case}: an input changed"


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """Mount a tmpfs at ``tmp_path/fs`` and yield a function that sets its size in bytes; skipped
    where this process may not mount (not root, no CAP_SYS_ADMIN, a restricted container)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "pyft-disk-full", str(mount)],
                              check=False, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs here: no `mount` command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def resize(size: int) -> Path:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True, capture_output=True)
        return mount

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


@pytest.mark.parametrize("case", CASES)
def test_no_space_left_fails_cleanly(case, inputs, tmp_path, small_tmpfs):
    inputs_before = snapshot(inputs.root)
    ref = _out(case, tmp_path / "ref")
    ref.parent.mkdir()
    assert run(_command(case, inputs, ref)).returncode == 0
    size = _bytes(ref)

    # Room for one output and a half: the first write fits, a replacement (staged beside the old
    # one until it is complete) does not, nor does a second output beside the first.
    fs = small_tmpfs(size * 3 // 2)
    out = _out(case, fs / "replace")
    out.parent.mkdir()
    done = run(_command(case, inputs, out))
    assert done.returncode == 0, done.stderr
    assert snapshot(out) == snapshot(ref)
    _assert_clean_failure(run(_command(case, inputs, out) + ["--overwrite"]), out, ENOSPC)
    assert snapshot(out) == snapshot(ref), f"{case}: the previous output changed"

    other = _out(case, fs / "first")
    other.parent.mkdir()
    _assert_clean_failure(run(_command(case, inputs, other)), other, ENOSPC)
    assert not other.exists()
    assert snapshot(out) == snapshot(ref)
    assert snapshot(inputs.root) == inputs_before, f"{case}: an input changed"
