"""Commands never write onto, into or around their inputs, with or without ``--overwrite``, and never
follow a file planted where they stage their output (issue 13, defects 2 and 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pyft.cli.export import main as export_main
from pyft.cli.main import main as pyft_main
from pyft.cli.merge import main as merge_main
from pyft.testing import make_tiny_model, make_tokenizer


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links resolved) by relative path, with its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proj/base`` (tiny Llama), ``proj/adapter`` (PEFT LoRA on it), ``proj/merged`` (merged copy)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("outputs") / "proj"
    tok = make_tokenizer(root / "tok", style="llama3", vocab_size=512)
    base = make_tiny_model(root / "base", tok, arch="llama", num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(root / "adapter")
    cfg_path = root / "adapter" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": str(base)}))
    assert merge_main([str(base), str(root / "adapter"), str(root / "merged")]) == 0
    return root


@pytest.mark.parametrize(("argv", "relation"), [
    (["merge", "{p}/base", "{p}/adapter", "{p}/base"], "is the input"),
    (["merge", "{p}/base", "{p}/adapter", "{p}/adapter"], "is the input"),
    (["merge", "{p}/base", "{p}/adapter", "{p}"], "contains the input"),
    (["merge", "{p}/base", "{p}/adapter", "{p}/base/sub"], "lies inside the input"),
    (["export", "{p}/merged", "--to", "gguf", "--out", "{p}/merged/model.safetensors"], "lies inside the input"),
    (["export", "{p}/base", "--adapter", "{p}/adapter", "--to", "gguf", "--out", "{p}/adapter/m.gguf"],
     "lies inside the input"),
    (["export", "{p}/adapter", "--to", "gguf-lora", "--out", "{p}/base/a.gguf"], "lies inside the input"),
    (["export", "{p}/base", "--adapter", "{p}/adapter", "--to", "vllm", "--merge", "--out", "{p}/base"],
     "is the input"),
    (["export", "{p}/adapter", "--to", "vllm", "--out", "{p}/adapter"], "is the input"),
    (["export", "{p}/merged", "--to", "ollama", "--out", "{p}"], "contains the input"),
])
def test_outputs_overlapping_inputs_are_refused_even_with_overwrite(proj, capsys, argv, relation):
    before = _tree_digest(proj)
    argv = [a.format(p=proj) for a in argv] + ["--overwrite"]
    main = merge_main if argv[0] == "merge" else export_main
    assert main(argv[1:]) == 1
    err = capsys.readouterr().err
    assert relation in err and "Traceback" not in err, err
    assert _tree_digest(proj) == before, "an input was changed"


def test_a_symlinked_alias_of_the_input_is_still_the_input(proj, tmp_path, capsys):
    alias = tmp_path / "alias"
    alias.symlink_to(proj / "base")
    before = _tree_digest(proj)
    assert merge_main([str(proj / "base"), str(proj / "adapter"), str(alias), "--overwrite"]) == 1
    assert "is the input" in capsys.readouterr().err
    assert _tree_digest(proj) == before


def test_data_prepare_refuses_an_output_around_its_input(tmp_path, capsys):
    tok = make_tokenizer(tmp_path / "tok", style="chatml", vocab_size=300)
    data = tmp_path / "data"
    data.mkdir()
    (data / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    before = _tree_digest(tmp_path)
    for out in (data, tmp_path):
        assert pyft_main(["data", "prepare", str(data / "chat.jsonl"), "--tokenizer", str(tok), "--out", str(out),
                          "--overwrite"]) == 1
        assert "contains the input" in capsys.readouterr().err
    assert _tree_digest(tmp_path) == before


def test_gguf_export_never_follows_or_reuses_planted_staging_files(proj, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "z.gguf.partial").symlink_to(victim)
    planted = tmp_path / "y.gguf.partial"
    planted.write_bytes(b"someone else's bytes")
    for name in ("z.gguf", "y.gguf"):
        assert export_main([str(proj / "merged"), "--to", "gguf", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes()[:4] == b"GGUF"
    capsys.readouterr()
    assert victim.read_text() == "precious"
    assert planted.read_bytes() == b"someone else's bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt", "y.gguf", "y.gguf.partial", "z.gguf",
                                                           "z.gguf.partial"]


def test_gguf_lora_export_never_follows_a_planted_link(proj, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "a.gguf.partial").symlink_to(victim)
    assert export_main([str(proj / "adapter"), "--to", "gguf-lora", "--out", str(tmp_path / "a.gguf")]) == 0
    capsys.readouterr()
    assert victim.read_text() == "precious"
    assert (tmp_path / "a.gguf").read_bytes()[:4] == b"GGUF"
