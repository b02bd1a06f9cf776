"""pyft-merge against PEFT's merge_and_unload, and the merged directory in transformers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import pyft
from pyft.errors import DataError
from pyft.io import merge, parse_size
from pyft.peft import LoraConfig, apply_lora, lora_modules, save_adapter
from pyft.testing import make_tiny_model

VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True}}


@pytest.fixture(scope="module")
def bases(tokenizer_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-bases")
    out = {}
    for arch in ("llama", "qwen2"):
        out[arch] = make_tiny_model(root / arch, tokenizer_dirs["chatml"], arch=arch)
        m = pyft.load_model(out[arch], dtype="float32").to(torch.bfloat16)
        m.save_pretrained(root / f"{arch}-bf16")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (root / f"{arch}-bf16" / f).write_bytes((out[arch] / f).read_bytes())
        out[f"{arch}-bf16"] = root / f"{arch}-bf16"
    return out


def _adapter(base_dir, out_dir, variant, seed=1, **extra):
    model = pyft.load_model(base_dir, dtype="float32")
    apply_lora(model, LoraConfig(r=4, alpha=8, targets="all-linear", rank_pattern={"down_proj": 2},
                                 alpha_pattern={"v_proj": 4}, **VARIANTS[variant], **extra))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(model):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.2)
            if layer.lora_magnitude_vector is not None:
                layer.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn(layer.lora_magnitude_vector.shape, generator=g))
    save_adapter(model, out_dir)
    return model


def _peft_merged(base_dir, adapter_dir):
    from peft import PeftModel

    base = pyft.load_model(base_dir)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each element of ``x`` in its own dtype."""
    bits = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[x.dtype]
    exp = torch.floor(torch.log2(x.float().abs().clamp_min(torch.finfo(x.dtype).tiny)))
    return torch.pow(2.0, exp - bits)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("precision", ["", "-bf16"])
def test_merge_matches_peft_within_one_ulp(arch, variant, precision, bases, tmp_path):
    base = bases[arch + precision]
    _adapter(bases[arch], tmp_path / "adapter", variant)
    report = merge(base, tmp_path / "adapter", tmp_path / "merged")
    assert report["merged_modules"] == 14 and report["shards"] == ["model.safetensors"]
    ours = load_file(str(tmp_path / "merged" / "model.safetensors"))
    ref = _peft_merged(base, tmp_path / "adapter")
    assert set(ours) == {k for k in ref if not (arch == "qwen2" and k == "lm_head.weight")}
    for k, v in ours.items():
        assert v.dtype == ref[k].dtype, k
        diff = (v.float() - ref[k].float()).abs()
        if variant == "dora" and not precision and v.ndim == 2:
            # DoRA scales each row by m / ||W + dW||. torch reduces the float32 norm in its own order (which
            # depends on the CPU kernel); pyft accumulates it in float64. The row factor can differ by an ulp,
            # so compare against the row's largest weight: within 4 float32 ulps of it.
            bound = 4 * _ulp(ref[k].abs().max(dim=1, keepdim=True).values)
        else:
            bound = _ulp(ref[k])
        assert (diff <= bound).all(), (k, diff.max())


def test_merged_dir_loads_in_transformers_with_adapter_logits(bases, tmp_path):
    import warnings

    from transformers import AutoModelForCausalLM

    model = _adapter(bases["llama"], tmp_path / "adapter", "dora")
    merge(bases["llama"], tmp_path / "adapter", tmp_path / "merged", max_shard_size="300KB")
    shards = sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for s in shards for t in load_file(str(tmp_path / "merged" / s)).values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.randint(0, merged.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, model.eval()(input_ids=ids).logits
    assert ((a - b).abs().max() / b.abs().max()) <= 1e-5
    assert (tmp_path / "merged" / "tokenizer.json").read_bytes() == (bases["llama"] / "tokenizer.json").read_bytes()


def test_modules_to_save_on_tied_embeddings_and_dtype(bases, tmp_path):
    model = _adapter(bases["qwen2"], tmp_path / "adapter", "lora", modules_to_save=["lm_head"])
    assert json.loads((bases["qwen2"] / "config.json").read_text())["tie_word_embeddings"] is True
    report = merge(bases["qwen2"], tmp_path / "adapter", tmp_path / "merged", dtype="bf16")
    assert report["replaced"] == 1
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    tensors = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert tensors["lm_head.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(tensors["lm_head.weight"], model.lm_head.trained_module.weight.to(torch.bfloat16))


def test_bad_inputs_fail_clearly_and_write_nothing(bases, tokenizer_dirs, tmp_path):
    _adapter(bases["llama"], tmp_path / "adapter", "lora")
    with pytest.raises(DataError, match=r"`model\.layers\.0\.[a-z_.]+weight`: the adapter needs shape \[\d+, \d+\] but "
                                         r"the base model has \[\d+, \d+\]: the adapter was trained on a different base"):
        other = make_tiny_model(tmp_path / "other", tokenizer_dirs["chatml"], arch="llama", hidden_size=32,
                                num_attention_heads=2, num_key_value_heads=2)
        merge(other, tmp_path / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((bases["llama"] / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes((bases["llama"] / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(DataError, match=r"model\.safetensors: not a valid safetensors file"):
        merge(broken, tmp_path / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30


def test_pyft_merge_command(bases, tmp_path):
    _adapter(bases["llama"], tmp_path / "adapter", "lora")
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", str(bases["llama"]), str(tmp_path / "adapter"),
                        str(tmp_path / "m"), "--dtype", "bf16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "merged 14 modules" in r.stdout and (tmp_path / "m" / "model.safetensors").is_file()
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", str(bases["llama"]), str(tmp_path / "adapter"),
                        str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 1 and "already exists (pass --overwrite" in r.stderr


def test_merged_dir_gets_the_chat_template_and_every_end_of_turn_id(bases, tmp_path):
    """pyft-merge writes the template inline and as chat_template.jinja, and lists every end-of-turn
    id as eos in generation_config.json (vLLM stops on all of them)."""
    from transformers import AutoTokenizer, GenerationConfig

    _adapter(bases["llama"], tmp_path / "adapter", "lora")
    merge(bases["llama"], tmp_path / "adapter", tmp_path / "merged")
    out = tmp_path / "merged"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == (out / "chat_template.jinja").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                       tokenize=False)
    after_answer = rendered.split("yo", 1)[1]
    end_tokens = [t for t in tok.all_special_tokens if after_answer.startswith(t)]
    assert end_tokens and tok.convert_tokens_to_ids(end_tokens[0]) in eos


def _set(field, value):
    """Rewrite one field of a JSON file."""
    def edit(path):
        data = json.loads(path.read_text())
        data[field] = value
        path.write_text(json.dumps(data))
    return edit


# (directory, file, how it is spoiled, what the error says, the commands that read it)
MALFORMED_JSON = [
    ("base", "config.json", "[1, 2]", "expected a JSON object, got an array", ("merge", "gguf", "vllm-merge")),
    ("base", "config.json", _set("num_hidden_layers", "2"),
     r'field `num_hidden_layers` must be a positive integer, got a string "2"', ("merge", "gguf", "vllm-merge")),
    ("base", "tokenizer_config.json", "[1, 2]", "expected a JSON object, got an array", ("merge", "gguf", "vllm-merge")),
    ("base", "tokenizer_config.json", _set("added_tokens_decoder", ["<|im_end|>"]),
     "field `added_tokens_decoder` must be an object, got an array", ("merge", "gguf", "vllm-merge")),
    ("base", "generation_config.json", _set("eos_token_id", "</s>"),
     r'field `eos_token_id` must be an integer or an array of integers, got a string "</s>"', ("merge", "vllm-merge")),
    ("adapter", "adapter_config.json", "[1, 2]", "expected a JSON object, got an array",
     ("merge", "gguf", "vllm", "vllm-merge")),
    ("adapter", "adapter_config.json", _set("r", "4"), r'field `r` must be a positive integer, got a string "4"',
     ("merge", "gguf", "vllm", "vllm-merge")),
    ("adapter", "adapter_config.json", _set("rank_pattern", {"down_proj": None}),
     "field `rank_pattern.down_proj` must be a positive integer, got null", ("merge", "gguf", "vllm", "vllm-merge")),
]


@pytest.mark.parametrize("where, name, spoil, needle, commands", MALFORMED_JSON,
                         ids=[f"{m[1]}-{i}" for i, m in enumerate(MALFORMED_JSON)])
def test_malformed_json_files_are_named(bases, tmp_path, capsys, where, name, spoil, needle, commands):
    """A config that is not a JSON object, or has a field of the wrong type, is refused naming the file
    and the field by every command that reads it (it used to end in an AttributeError traceback)."""
    from pyft.cli.export import main as export_main
    from pyft.cli.merge import main as merge_main

    base = tmp_path / "base"
    shutil.copytree(bases["llama"], base)
    adapter = tmp_path / "adapter"
    _adapter(base, adapter, "lora")
    if not (base / "generation_config.json").exists():
        (base / "generation_config.json").write_text('{"eos_token_id": 2}')
    target = (base if where == "base" else adapter) / name
    spoil(target) if callable(spoil) else target.write_text(spoil)
    runs = {
        "merge": lambda: merge_main([str(base), str(adapter), str(tmp_path / "out")]),
        "gguf": lambda: export_main([str(base), "--adapter", str(adapter), "--to", "gguf", "--out",
                                     str(tmp_path / "out.gguf")]),
        "vllm": lambda: export_main([str(adapter), "--base", str(base), "--to", "vllm", "--out", str(tmp_path / "out")]),
        "vllm-merge": lambda: export_main([str(adapter), "--base", str(base), "--to", "vllm", "--merge", "--out",
                                           str(tmp_path / "out")]),
    }
    for command in commands:
        assert runs[command]() == 1, command
        err = capsys.readouterr().err
        assert f": error: {target}: " in err and re.search(needle, err), (command, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"], command
    with pytest.raises(DataError, match=needle) as info:
        merge(base, adapter, tmp_path / "out")
    assert info.value.file == str(target)


def test_errors_name_the_command_line_flag(bases, tmp_path, capsys):
    from pyft.cli.merge import main as merge_main

    assert merge_main([str(bases["llama"]), str(tmp_path / "adapter"), str(tmp_path / "out"),
                       "--max-shard-size", "lots"]) == 1
    assert "--max-shard-size: cannot read 'lots' (examples: 5GB" in capsys.readouterr().err


def test_chat_template_that_is_not_utf8_is_named(bases, tmp_path, capsys):
    from pyft.cli.merge import main as merge_main

    base = tmp_path / "base"
    shutil.copytree(bases["llama"], base)
    (base / "chat_template.jinja").write_bytes(b"{{ messages }}\xff")
    assert merge_main([str(base), "--adapter", str(tmp_path / "none"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == f"pyft-merge: error: {base / 'chat_template.jinja'}: not UTF-8 text (byte 14: invalid start byte)\n"
    assert not (tmp_path / "out").exists()
