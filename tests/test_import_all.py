"""Every module of the package imports (catches NameErrors and broken lazy imports)."""

import importlib
import pkgutil

import pyft


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(pyft.__path__, prefix="pyft.")]
    assert "pyft.data.prepare" in names and "pyft.cli.main" in names
    for name in names:
        importlib.import_module(name)
