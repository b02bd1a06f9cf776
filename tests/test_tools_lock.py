"""tools/requirements.lock: the locked development environment stays consistent with pyproject.toml
and is what the setup script installs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lock_deps():
    spec = importlib.util.spec_from_file_location("lock_deps", ROOT / "tools" / "lock_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_meets_every_pyproject_requirement(lock_deps):
    pins = lock_deps.read_lock()
    assert lock_deps.unmet(pins, lock_deps.requirements()) == []
    # exact pins only, one per package
    text = [ln for ln in lock_deps.LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(ln.count("==") == 1 and " " not in ln for ln in text), text
    assert len(text) == len(pins)


def test_unmet_reports_a_stale_pin(lock_deps):
    pins = dict(lock_deps.read_lock(), torch="2.0.0")
    assert any(s.startswith("torch>=") and "lock: 2.0.0" in s for s in lock_deps.unmet(pins, lock_deps.requirements()))
    del pins["numpy"]
    assert any("lock: missing" in s for s in lock_deps.unmet(pins, lock_deps.requirements()))


def test_setup_installs_from_the_lock(lock_deps):
    env_sh = (ROOT / "tools" / "_env.sh").read_text()
    assert '-c "$LOCK"' in env_sh and "tools/requirements.lock" in env_sh
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "lock_deps.py"), "--requirements", "train"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "pyyaml>=6" in out and any(r.startswith("torch") for r in out)
    assert not any(r.startswith("peft") for r in out)  # test oracles only with the test extra
