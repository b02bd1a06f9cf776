"""pyft.methods: the one table of training methods, and everything that reads it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import pyft
from pyft.errors import ConfigError
from pyft.methods import METHODS, SFT, TUNINGS, get_method, method_names, methods_table

ROOT = Path(pyft.__file__).parent


def test_readme_method_table_is_the_generated_one():
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- methods-table:begin[^>]*-->\n(.*?)\n<!-- methods-table:end -->", readme, re.S)
    assert block, "README.md lost its generated methods table"
    assert block.group(1) == methods_table()
    assert all(f"| `{name}` |" in block.group(1) for name in METHODS)


def test_method_names_are_spelled_only_in_the_registry():
    """No module but pyft/methods.py compares a string to a method name (``== "dpo"``, ``in ("kto", ...)``):
    behaviour comes from the Method entry. Loss types and data kinds that share a spelling (``kto``)
    are other vocabularies and may appear in their own modules."""
    from pyft.losses.preference import CPO_LOSS_TYPES, DPO_LOSS_TYPES, KTO_LOSS_TYPES

    other = {*DPO_LOSS_TYPES, *KTO_LOSS_TYPES, *CPO_LOSS_TYPES, *(k for m in METHODS.values() for k in m.data_kinds)}
    names = set(METHODS) - other  # `kto`, `simpo`, `sft` are also loss types or data kinds
    assert {"dpo", "orpo", "cpo", "rm"} <= names
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "methods.py" and path.parent == ROOT:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
                consts = [c.value for p in parts for c in ([p] if isinstance(p, ast.Constant) else
                          getattr(p, "elts", [])) if isinstance(c, ast.Constant)]
                if any(isinstance(c, str) and c in names for c in consts):
                    offenders.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not offenders, f"method names compared outside pyft/methods.py: {offenders}"


def test_the_spelling_check_can_fail():
    tree = ast.parse('if config.method == "rm":\n    pass\n')
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert compares and compares[0].comparators[0].value in METHODS


def test_tuning_names_select_sft_and_unknown_names_are_refused():
    assert all(get_method(t) is METHODS[SFT] for t in TUNINGS)
    assert method_names() == (*METHODS, *TUNINGS)
    with pytest.raises(ConfigError, match=r"method: unknown method 'grpo' \(expected one of sft, dpo"):
        get_method("grpo")


def test_config_validation_reads_the_registry(monkeypatch, tmp_path):
    """A new entry is accepted by the config and its checks run, with nothing else changed."""
    import dataclasses

    from pyft.train import load_config

    calls = []
    entry = dataclasses.replace(METHODS["orpo"], name="toy", check=lambda cfg: calls.append(cfg.method))
    monkeypatch.setitem(METHODS, "toy", entry)
    cfg = load_config(model="m", data="d", output=str(tmp_path), method="toy")
    assert cfg.objective is entry and calls == ["toy"]
    with pytest.raises(ConfigError, match="tuning: rm trains with lora or full, got 'qlora'"):
        load_config(model="m", data="d", method="rm", tuning="qlora")
    with pytest.raises(ConfigError, match=r"align.loss_type: method orpo has no loss types \(dpo, kto, cpo do\)"):
        load_config(model="m", data="d", method="orpo", align={"loss_type": "ipo"})


def test_cli_help_and_estimate_read_the_registry(capsys):
    from pyft.cli.main import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for m in METHODS.values():
        assert m.name in help_text and m.summary[:30] in " ".join(help_text.split())
    with pytest.raises(SystemExit):
        main(["estimate", "--model", "m", "--align", "dpo"])  # the old second vocabulary is gone
    assert "unrecognized arguments: --align" in capsys.readouterr().err


def test_cli_import_stays_light():
    """Reading the registry (CLI help, config validation) must not import torch."""
    import subprocess
    import sys

    code = "import sys, pyft.cli.main, pyft.methods; pyft.cli.main.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_readme_tuning_table_is_the_generated_one():
    from pyft.methods import TUNING_TABLE, tunings_table

    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- tunings-table:begin[^>]*-->\n(.*?)\n<!-- tunings-table:end -->", readme, re.S)
    assert block, "README.md lost its generated tunings table"
    assert block.group(1) == tunings_table()
    assert all(f"| `{name}` |" in block.group(1) for name in TUNING_TABLE)


def test_every_tuning_resolves_to_its_functions_and_section():
    """Each entry's apply/save functions exist, and its section is a field of the config (so YAML reaches it)."""
    import importlib

    from pyft.methods import TUNING_TABLE
    from pyft.train.config import TrainConfig

    for t in TUNING_TABLE.values():
        if t.section:
            assert hasattr(TrainConfig(), t.section), t.name
        for target in (t.apply, t.save):
            if target:
                module, name = target.split(":")
                assert callable(getattr(importlib.import_module(module), name)), target
        assert t.adapter == bool(t.apply and t.save and t.peft_type), t.name
