"""Every module of the package imports (catches NameErrors and broken lazy imports)."""

import importlib
import pkgutil

import pyft


def test_every_module_imports():
    def onerror(name):  # walk_packages ignores ImportErrors of packages by default
        raise ImportError(f"cannot import {name}")

    names = [m.name for m in pkgutil.walk_packages(pyft.__path__, prefix="pyft.", onerror=onerror)]
    assert "pyft.data.prepare" in names and "pyft.cli.main" in names
    for name in names:
        importlib.import_module(name)
