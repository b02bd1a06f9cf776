"""QLoRA: LoRA, rsLoRA and DoRA over NF4Linear bases, against HF PEFT on a bitsandbytes-quantized model.

The pyft model's NF4Linear layers are built from the very tensors of the bnb model's Linear4bit
layers (its state dict), so both sides dequantize the same bits; the adapters are the same tensors
(pyft saves, PEFT loads, and the other way round).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import pyft
from pyft.peft import LoraConfig, apply_lora, load_adapter, lora_modules, merge_lora, save_adapter
from pyft.peft._inject import all_linear_names, replace_module
from pyft.quant import NF4Linear
from pyft.testing import make_tiny_model

from helpers import perturb_adapters

bnb = pytest.importorskip("bitsandbytes")

VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True}}
LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def model_dirs(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("qmodels")
    return {arch: make_tiny_model(base / arch, tokenizer_dirs["chatml"], arch=arch) for arch in ("llama", "qwen2")}


def _bnb_model(path, double_quant: bool = True):
    """transformers + bitsandbytes 4-bit loading (on CPU), compute in float32."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=cfg, dtype=torch.float32,
                                                 local_files_only=True)
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False  # the same default code path on every CPU
    return model


def _nf4_model(path, bnb_model):
    """The float32 model with every Linear4bit of ``bnb_model`` replaced by an NF4Linear of the same tensors."""
    model = pyft.load_model(path, dtype="float32")
    count = 0
    for name, module in bnb_model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            replace_module(model, name, NF4Linear.from_bnb_state_dict(module.state_dict(), compute_dtype=torch.float32))
            count += 1
    assert count == 2 * 7
    return model


def _batch(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(0))


def _logits_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def _peft_name_to_ours(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".default", "").replace("lora_magnitude_vector.weight",
                                                                                  "lora_magnitude_vector")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_gradients_match_peft_on_bnb(arch, variant, model_dirs, tmp_path):
    from peft import PeftModel

    ours = _nf4_model(model_dirs[arch], _bnb_model(model_dirs[arch]))
    names = apply_lora(ours, LoraConfig(r=4, alpha=8, targets="all-linear", **VARIANTS[variant]))
    assert len(names) == 2 * 7 and all(isinstance(layer.base_layer, NF4Linear) for _, layer in lora_modules(ours))
    perturb_adapters(ours)
    save_adapter(ours, tmp_path / "adapter")
    ref = PeftModel.from_pretrained(_bnb_model(model_dirs[arch]), tmp_path / "adapter", is_trainable=True)
    assert sorted(ref.peft_config["default"].target_modules) == LINEARS
    ours.train()
    ref.train()
    ids = _batch(ours.config.vocab_size)
    l1, g1 = _logits_and_grads(ours, ids)
    l2, g2 = _logits_and_grads(ref, ids)
    g2 = {_peft_name_to_ours(n): g for n, g in g2.items()}
    # only the adapter gets gradients: no base parameter (biases, norms, embeddings) and no NF4 buffer
    assert set(g1) == set(g2) and all(".lora_" in n for n in g1)
    assert len(g1) == 2 * 7 * (3 if variant == "dora" else 2)
    assert not any(b.requires_grad for b in ours.buffers())
    # the same ops on the same dequantized weights in the same order: identical bits
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=0, atol=0, msg=name)


def test_peft_adapter_trained_on_bnb_loads_on_nf4(model_dirs, tmp_path):
    """PEFT's DoRA on the bnb model: the magnitude init (from the dequantized weight) and the
    logits after loading its saved adapter into pyft's NF4 model agree."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg = PeftLoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True,
                         task_type="CAUSAL_LM", rank_pattern={"down_proj": 2})
    ref = get_peft_model(_bnb_model(model_dirs["qwen2"]), cfg)
    ours = _nf4_model(model_dirs["qwen2"], _bnb_model(model_dirs["qwen2"]))
    apply_lora(ours, LoraConfig(r=4, alpha=16, targets=["q_proj", "v_proj", "down_proj"], dora=True,
                                rank_pattern={"down_proj": 2}))
    mags = {_peft_name_to_ours(n): p for n, p in ref.named_parameters() if "magnitude" in n}
    for name, layer in lora_modules(ours):
        torch.testing.assert_close(layer.lora_magnitude_vector, mags[f"{name}.lora_magnitude_vector"], rtol=0,
                                   atol=0, msg=name)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_B" in n or "magnitude" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.1)
    ref.save_pretrained(tmp_path / "peft")
    ours = _nf4_model(model_dirs["qwen2"], _bnb_model(model_dirs["qwen2"]))
    load_adapter(ours, tmp_path / "peft")
    ids = _batch(ours.config.vocab_size)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nf4_base_equals_dense_base_with_the_dequantized_weight(variant):
    """With dropout (DoRA then recomputes W x through NF4Linear.linear), the QLoRA layer gives the
    same outputs and adapter gradients as a LoRA layer on a dense copy of the dequantized weight."""
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(0)) * 0.05
    packed, st = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    nf4 = NF4Linear.from_quant_state(packed, st.as_dict(packed=True), bias=torch.randn(48) * 0.1)
    dense = nn.Linear(80, 48)
    with torch.no_grad():
        dense.weight.copy_(nf4.dequantized_weight())
        dense.bias.copy_(nf4.bias)
    outs = []
    for base in (nf4, dense):
        model = nn.Sequential(OrderedDict(proj=base))
        apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.3, targets=["proj"], **VARIANTS[variant]))
        perturb_adapters(model)
        model.train()
        torch.manual_seed(7)  # the same dropout masks
        x = torch.randn(3, 5, 80, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = model(x)
        y.square().sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        outs.append((y.detach(), x.grad, grads))
    (y1, gx1, g1), (y2, gx2, g2) = outs
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx2, rtol=0, atol=0)
    assert set(g1) == set(g2)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_replaces_nf4_by_a_dense_linear(dtype):
    """Merging never re-quantizes: the NF4 base becomes an nn.Linear in the weight dtype holding
    dequant(W) + ΔW (rounded once), and the output matches the unmerged adapter."""
    w = (torch.randn(40, 64, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    packed, st = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    nf4 = NF4Linear.from_quant_state(packed, st.as_dict(packed=True), bias=torch.randn(40).to(dtype),
                                     compute_dtype=torch.float32)
    model = nn.Sequential(OrderedDict(proj=nf4))
    apply_lora(model, LoraConfig(r=4, alpha=8, targets=["proj"], dora=True))
    perturb_adapters(model)
    layer = model.proj
    expected_weight = layer.merged_weight().to(dtype)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    merge_lora(model)
    assert type(model.proj) is nn.Linear and model.proj.weight.dtype == dtype
    assert not any(p.requires_grad for p in model.proj.parameters())
    assert torch.equal(model.proj.weight, expected_weight) and torch.equal(model.proj.bias, nf4.bias)
    with torch.no_grad():
        after = model(x.to(dtype)).float()
    assert _rel(after, before.float()) <= (1e-6 if dtype == torch.float32 else 1e-2)  # measured 2e-7, 2.3e-3


def test_all_linear_counts_nf4_layers(model_dirs):
    ours = _nf4_model(model_dirs["llama"], _bnb_model(model_dirs["llama"], double_quant=False))
    assert all_linear_names(ours) == LINEARS
    assert not ours.get_submodule("model.layers.0.mlp.up_proj").is_double_quantized
    with pytest.raises(ValueError, match="is a Embedding; pyft applies LoRA to nn.Linear and NF4Linear"):
        apply_lora(ours, LoraConfig(targets=["embed_tokens"]))
