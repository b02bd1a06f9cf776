"""LoRA, rsLoRA and DoRA against HF PEFT (the oracle): logits, gradients, adapter files both ways."""

from __future__ import annotations

import json

import pytest
import torch

import pyft
from pyft.peft import (
    LoraConfig,
    adapters_disabled,
    apply_lora,
    lora_modules,
    merge_lora,
    save_adapter,
    trainable_parameters_report,
)
from pyft.testing import make_tiny_model

from helpers import perturb_adapters

VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True}}


@pytest.fixture(scope="module")
def model_dirs(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(base / arch, tokenizer_dirs["chatml"], arch=arch) for arch in ("llama", "qwen2")}


def _batch(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, 11), generator=g)


def _peft_name_to_ours(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".default", "").replace("lora_magnitude_vector.weight",
                                                                                  "lora_magnitude_vector")


def _logits_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


def _assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert ((a - b).abs().max() / scale).item() <= rel


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_and_gradients_match_peft(arch, variant, model_dirs, tmp_path):
    from peft import PeftModel

    ours = pyft.load_model(model_dirs[arch], dtype="float32")
    names = apply_lora(ours, LoraConfig(r=4, alpha=8, targets="all-linear", **VARIANTS[variant]))
    assert len(names) == 2 * 7  # q k v o gate up down in 2 layers; lm_head excluded
    perturb_adapters(ours)
    save_adapter(ours, tmp_path / "adapter")
    ref = PeftModel.from_pretrained(pyft.load_model(model_dirs[arch], dtype="float32"), tmp_path / "adapter",
                                    is_trainable=True)
    ours.train()
    ref.train()
    ids = _batch(ours.config.vocab_size)
    l1, g1 = _logits_and_grads(ours, ids)
    l2, g2 = _logits_and_grads(ref, ids)
    _assert_rel_close(l1, l2, 1e-6)
    g2 = {_peft_name_to_ours(n): g for n, g in g2.items()}
    assert set(g1) == set(g2)
    for name in g1:
        _assert_rel_close(g1[name], g2[name], 1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_peft_saved_adapter_loads_in_pyft(variant, model_dirs, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    base = pyft.load_model(model_dirs["qwen2"], dtype="float32")
    torch.manual_seed(3)
    cfg = PeftLoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM",
                         use_rslora=variant == "rslora", use_dora=variant == "dora", rank_pattern={"down_proj": 2},
                         alpha_pattern={"v_proj": 4})
    ref = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_B" in n or "magnitude" in n:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path / "peft")
    ours = pyft.load_model(model_dirs["qwen2"], dtype="float32", adapter=tmp_path / "peft")
    ids = _batch(ours.config.vocab_size)
    ref.eval()
    with torch.no_grad():
        _assert_rel_close(ours(input_ids=ids).logits, ref(input_ids=ids).logits, 1e-5)
    down = ours.get_submodule("model.layers.0.mlp.down_proj")
    vproj = ours.get_submodule("model.layers.1.self_attn.v_proj")
    assert down.r == 2 and vproj.alpha == 4


def test_adapter_files_have_peft_layout(model_dirs, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from safetensors import safe_open

    ours = pyft.load_model(model_dirs["llama"], dtype="float32")
    apply_lora(ours, LoraConfig(r=8, alpha=16, dropout=0.05, targets=["q_proj", "k_proj", "v_proj", "o_proj"]))
    save_adapter(ours, tmp_path / "ours", base_model_name_or_path="org/base-model")
    ref = get_peft_model(pyft.load_model(model_dirs["llama"], dtype="float32"),
                         PeftLoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    ref.save_pretrained(tmp_path / "peft")
    mine = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert sorted(mine) == sorted(theirs)
    theirs["target_modules"] = sorted(theirs["target_modules"])
    for key in theirs:
        if key not in ("base_model_name_or_path", "peft_version"):
            assert mine[key] == theirs[key], key
    assert mine["base_model_name_or_path"] == "org/base-model" and isinstance(mine["lora_alpha"], int)
    with safe_open(tmp_path / "ours" / "adapter_model.safetensors", "pt") as a, \
            safe_open(tmp_path / "peft" / "adapter_model.safetensors", "pt") as b:
        assert a.metadata() == b.metadata() == {"format": "pt"}
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert a.get_slice(k).get_shape() == b.get_slice(k).get_shape()
            assert a.get_tensor(k).dtype == torch.float32


def test_modules_to_save_disable_and_merge(model_dirs, tmp_path):
    from peft import PeftModel

    ours = pyft.load_model(model_dirs["qwen2"], dtype="float32")
    base_logits = ours(input_ids=_batch(ours.config.vocab_size)).logits.detach()
    apply_lora(ours, LoraConfig(r=4, alpha=8, targets="all-linear", dora=True, modules_to_save=["lm_head"]))
    perturb_adapters(ours)
    with torch.no_grad():
        ours.lm_head.trained_module.weight.mul_(1.5)
    assert "trainable params:" in trainable_parameters_report(ours)
    ids = _batch(ours.config.vocab_size)
    adapted = ours(input_ids=ids).logits.detach()
    assert (adapted - base_logits).abs().max() > 1e-3
    with adapters_disabled(ours):
        torch.testing.assert_close(ours(input_ids=ids).logits, base_logits, rtol=0, atol=0)
    save_adapter(ours, tmp_path / "a")
    with pytest.warns(UserWarning, match="tie_word_embeddings"):  # PEFT: lm_head is tied in Qwen2 shapes
        ref = PeftModel.from_pretrained(pyft.load_model(model_dirs["qwen2"], dtype="float32"), tmp_path / "a").eval()
    with torch.no_grad():
        _assert_rel_close(ref(input_ids=ids).logits, adapted, 1e-5)
    merge_lora(ours)
    assert not list(lora_modules(ours))
    _assert_rel_close(ours(input_ids=ids).logits.detach(), adapted, 1e-5)


def test_layers_to_transform_and_regex_targets(model_dirs):
    m = pyft.load_model(model_dirs["llama"], dtype="float32")
    names = apply_lora(m, LoraConfig(targets=["q_proj", "v_proj"], layers_to_transform=[1]))
    assert names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    m = pyft.load_model(model_dirs["llama"], dtype="float32")
    names = apply_lora(m, LoraConfig(targets=r".*\.0\.mlp\.(up|down)_proj"))
    assert names == ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    with pytest.raises(ValueError, match="no module of the model matches"):
        apply_lora(pyft.load_model(model_dirs["llama"], dtype="float32"), LoraConfig(targets=["nope"]))
    with pytest.raises(ValueError, match="`r` must be a positive integer"):
        LoraConfig(r=0)


def test_mismatched_adapter_and_missing_model_fail_clearly(model_dirs, tokenizer_dirs, tmp_path):
    ours = pyft.load_model(model_dirs["llama"], dtype="float32")
    apply_lora(ours, LoraConfig(r=4, targets=["q_proj"]))
    save_adapter(ours, tmp_path / "a")
    other = make_tiny_model(tmp_path / "wide", tokenizer_dirs["chatml"], arch="llama", hidden_size=32,
                            num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"tensor `base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A"
                                         r"\.weight` has shape \(4, 64\) but the base model needs \(4, 32\)"):
        pyft.load_model(other, adapter=tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pyft.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an adapter directory"):
        pyft.load_model(model_dirs["llama"], adapter=tmp_path / "nothing")
