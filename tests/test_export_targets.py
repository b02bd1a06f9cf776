"""``pyft-export`` targets end to end: gguf-lora, ollama (adapter and merged), vllm (adapter and merged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyft.errors import ConfigError
from pyft.export.targets import to_ollama, to_vllm
from pyft.testing import make_tiny_model, make_tokenizer


def _adapter(base: Path, out: Path, **kw) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     init_lora_weights=False, **kw)
    get_peft_model(model, cfg).save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    c = json.loads(cfg_path.read_text())
    c["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(c))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("targets")
    tok = make_tokenizer(root / "tok", style="llama3", vocab_size=512)
    return make_tiny_model(root / "base", tok, arch="llama", num_key_value_heads=2)


@pytest.fixture(scope="module")
def adapter(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _adapter(base, tmp_path_factory.mktemp("adapter") / "adapter")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyft.cli.export", *args], capture_output=True, text=True,
                          timeout=600)


def _modelfile(path: Path) -> dict[str, list[str]]:
    """Instruction -> values, reading `\"\"\"` blocks as Ollama's parser does."""
    out: dict[str, list[str]] = {}
    text = path.read_text()
    i = 0
    while i < len(text):
        line_end = text.find("\n", i)
        line_end = len(text) if line_end < 0 else line_end
        line = text[i:line_end]
        if not line.strip() or line.startswith("#"):
            i = line_end + 1
            continue
        cmd, _, rest = line.partition(" ")
        if rest.startswith('"""'):
            end = text.index('"""', i + len(cmd) + 4)
            value, i = text[i + len(cmd) + 4:end], end + 3
        else:
            value, i = rest, line_end + 1
        out.setdefault(cmd.upper(), []).append(value)
    return out


def test_ollama_adapter_mode_writes_base_lora_and_modelfile(base, adapter, tmp_path):
    r = _cli(str(base), "--adapter", str(adapter), "--to", "ollama", "--out", str(tmp_path / "ollama"),
             "--name", "tiny")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ollama"
    assert (out / "model.gguf").is_file() and (out / "adapter.gguf").is_file()
    mf = _modelfile(out / "Modelfile")
    assert mf["FROM"] == ["./model.gguf"] and mf["ADAPTER"] == ["./adapter.gguf"]
    assert "<|start_header_id|>" in mf["TEMPLATE"][0] and "{{" in mf["TEMPLATE"][0]
    stops = [json.loads(s) if s.startswith('"') else s for s in mf["PARAMETER"] if s.startswith("stop")]
    assert stops, mf["PARAMETER"]
    assert any("<|eot_id|>" in s for s in mf["PARAMETER"])
    assert "ollama create tiny -f" in r.stdout
    from llama_cpp import Llama

    llm = Llama(str(out / "model.gguf"), lora_path=str(out / "adapter.gguf"), n_ctx=64, verbose=False)
    llm.eval([1, 2, 3])


def test_ollama_merged_mode_and_system_prompt(base, adapter, tmp_path):
    res = to_ollama(base, tmp_path / "o", adapters=[adapter], merge=True, qtype="q8_0", system="Be brief.",
                    num_ctx=512)
    mf = _modelfile(tmp_path / "o" / "Modelfile")
    assert "ADAPTER" not in mf and mf["SYSTEM"] == ["Be brief."]
    assert "num_ctx 512" in mf["PARAMETER"]
    assert res.reports[0].types["Q8_0"] > 0
    assert not (tmp_path / "o" / "adapter.gguf").exists()


def test_vllm_adapter_mode_and_refusals(base, adapter, tmp_path):
    r = _cli(str(adapter), "--to", "vllm", "--out", str(tmp_path / "v"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert "--enable-lora" in r.stdout and "--lora-modules" in r.stdout and str(base.resolve()) in r.stdout
    dora = _adapter(base, tmp_path / "dora", use_dora=True)
    r = _cli(str(dora), "--to", "vllm", "--out", str(tmp_path / "v2"))
    assert r.returncode == 1 and "DoRA" in r.stderr and "--merge" in r.stderr
    assert not (tmp_path / "v2").exists()


def test_vllm_merged_mode_has_serving_files(base, adapter, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    res = to_vllm(base, tmp_path / "m", adapters=[adapter], merge=True)
    out = tmp_path / "m"
    assert (out / "chat_template.jinja").is_file()
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == (out / "chat_template.jinja").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    gen = GenerationConfig.from_pretrained(out)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.convert_tokens_to_ids("<|eot_id|>") in eos
    AutoModelForCausalLM.from_pretrained(out)
    assert res.commands and res.commands[0].startswith("vllm serve")


def test_gguf_lora_cli_finds_the_base_and_pyft_export_subcommand(base, adapter, tmp_path):
    r = _cli(str(adapter), "--to", "gguf-lora", "--out", str(tmp_path / "a.gguf"))
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "pyft.cli.main", "export", str(base), "--to", "gguf", "--qtype",
                        "q4_0", "--out", str(tmp_path / "b.gguf")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (tmp_path / "b.gguf").is_file()
    r = _cli(str(base), "--to", "gguf", "--qtype", "q3_k_s", "--out", str(tmp_path / "c.gguf"))
    assert r.returncode == 1 and "q3_k_s" in r.stderr and not list(tmp_path.glob("c.gguf*"))


def test_unknown_template_family_is_a_clear_error(base, tmp_path):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(base, odd)
    (odd / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tc = json.loads((odd / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (odd / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ConfigError, match="template"):
        to_ollama(odd, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_training_system_prompt_follows_the_merged_model_into_the_modelfile(base, tmp_path):
    import shutil

    adapter = _adapter(base, tmp_path / "adapter")
    (adapter / "pyft_run.json").write_text(json.dumps({"template": "llama3", "system_prompt": "You are terse."}))
    to_vllm(base, tmp_path / "merged", adapters=[adapter], merge=True)
    assert json.loads((tmp_path / "merged" / "pyft_run.json").read_text())["system_prompt"] == "You are terse."
    to_ollama(tmp_path / "merged", tmp_path / "o")
    assert _modelfile(tmp_path / "o" / "Modelfile")["SYSTEM"] == ["You are terse."]
    shutil.rmtree(tmp_path / "o")


def test_nf4_base_through_the_cli_ollama_and_vllm(base, tmp_path):
    """A QLoRA run's 4-bit base and adapter: ollama (base GGUF + GGUF LoRA) and vLLM (merged) are
    written from the dequantized weights, and each says so in one line."""
    from bnb_nf4 import peft_adapter, save_nf4
    from safetensors.torch import load_file

    nf4 = save_nf4(base, tmp_path / "nf4")
    adapter = peft_adapter(nf4, tmp_path / "adapter")
    r = _cli(str(adapter), "--to", "ollama", "--out", str(tmp_path / "ollama"), "--qtype", "f16")
    assert r.returncode == 0, r.stderr
    assert "note: model.gguf: 14 weights dequantized from the 4-bit NF4 base and written as F16 (not re-quantized " \
           "to NF4)" in r.stdout
    assert _modelfile(tmp_path / "ollama" / "Modelfile")["ADAPTER"] == ["./adapter.gguf"]
    r = _cli(str(adapter), "--to", "vllm", "--merge", "--out", str(tmp_path / "vllm"))
    assert r.returncode == 0, r.stderr
    assert "note: the base is 4-bit NF4 (bitsandbytes): 14 weights were dequantized and written as bfloat16" in r.stdout
    tensors = load_file(str(tmp_path / "vllm" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in tensors.values()) and len(tensors) == 21
    assert "quantization_config" not in json.loads((tmp_path / "vllm" / "config.json").read_text())
