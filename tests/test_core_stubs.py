"""pyft/_core.pyi against the built extension: `mypy.stubtest` must find no difference.

stubtest imports `pyft._core` and compares every name, signature (parameter names, kinds and
defaults from the Rust `#[pyo3(signature)]`), class and `__all__` with the stub, so a function added
to the extension without a stub, or a parameter renamed on one side only, fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "pyft" / "_core.pyi"
ALLOWLIST = Path(__file__).with_name("stubtest_allowlist.txt")

pytest.importorskip("mypy.stubtest")


def _stubtest(stub_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`stubtest pyft._core` with the stubs of ``stub_dir`` (runtime: the installed extension)."""
    env = {**os.environ, "MYPYPATH": str(stub_dir)}
    cmd = [sys.executable, "-m", "mypy.stubtest", "pyft._core", "--allowlist", str(ALLOWLIST),
           "--mypy-config-file", str(cwd / "mypy.ini")]
    (cwd / "mypy.ini").write_text("[mypy]\ncache_dir = /dev/null\n")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _stub_tree(tmp: Path, text: str) -> Path:
    """A stub-only package `pyft` under ``tmp`` whose `_core.pyi` is ``text``."""
    (tmp / "stubs" / "pyft").mkdir(parents=True)
    (tmp / "stubs" / "pyft" / "__init__.pyi").write_text("")
    (tmp / "stubs" / "pyft" / "_core.pyi").write_text(text)
    return tmp / "stubs"


def test_stub_matches_the_extension(tmp_path):
    result = _stubtest(_stub_tree(tmp_path, STUB.read_text()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_function_without_a_stub_fails(tmp_path):
    """The check can fail: the same stub less one function is refused, naming the function."""
    text = STUB.read_text()
    start = text.index("def nf4_state_json(")
    end = text.index("\ndef ", start + 1)
    result = _stubtest(_stub_tree(tmp_path, text[:start] + text[end + 1:]), tmp_path)
    assert result.returncode != 0
    assert "pyft._core.nf4_state_json is not present in stub" in result.stdout, result.stdout
