"""The compiled extension is the fresh, single, abi3 build matching the crate version."""

import re
from pathlib import Path

import pyft
from pyft import _core

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_cargo_workspace():
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert _core.__version__ == version == pyft.__version__


def test_single_abi3_extension_in_tree():
    built = sorted(p.name for p in (ROOT / "pyft").glob("_core*.so"))
    if built:  # running from the source tree after `maturin develop`
        assert built == ["_core.abi3.so"], built
    assert _core.__file__.endswith(".abi3.so")


def test_extension_is_a_release_build():
    # tools/test and tools/demo build with --release; a debug build would make benchmarks meaningless.
    assert _core.build_profile() == "release"
