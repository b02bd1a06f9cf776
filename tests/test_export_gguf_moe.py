"""GGUF export of the mixture-of-experts families (Mixtral, Qwen2-MoE, Qwen3-MoE) against llama.cpp:
its converter (tensor bytes and KVs, experts stacked into `ffn_*_exps`), its quantizer (K-quant
mixes on 3-D expert tensors), its runtime (logits vs transformers) and its LoRA converter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from llamacpp import convert_hf_to_gguf, convert_lora_to_gguf, llama_quantize
from test_export_gguf import CONVERTER_ONLY, _hf_logits, _llama_logits, _rel, kvs, tensors

from pyft.errors import ConfigError, DataError
from pyft.export import export_gguf, export_gguf_lora
from pyft.testing import make_tiny_model, make_tokenizer

ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe"]
GGUF_ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
TOKENIZER = {"mixtral": "llama3", "qwen2_moe": "chatml", "qwen3_moe": "chatml"}


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe-tok")
    return {s: make_tokenizer(root / s, style=s, vocab_size=512) for s in ("llama3", "chatml")}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tok_dirs: dict[str, Path]) -> dict[str, Path]:
    """Tiny MoE models (4 experts, top-2); each saved in several safetensors shards, so a stacked
    expert tensor gathers its slices from more than one file."""
    root = tmp_path_factory.mktemp("moe-models")
    out = {}
    for arch in ARCHS:
        one = make_tiny_model(root / f"{arch}-1", tok_dirs[TOKENIZER[arch]], arch=arch)
        out[arch] = _reshard(one, root / arch, "150KB")
    return out


def _reshard(src: Path, dst: Path, max_shard_size: str) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(dst, max_shard_size=max_shard_size)
    for f in src.iterdir():
        if not f.name.startswith("model") and not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)
    assert len(list(dst.glob("model-*.safetensors"))) > 2
    return dst


def _assert_same_as(ours: Path, ref: Path) -> None:
    t_ours, t_ref = tensors(ours), tensors(ref)
    assert sorted(t_ours) == sorted(t_ref)
    for name, (typ, shape, data) in t_ref.items():
        assert t_ours[name][:2] == (typ, shape), name
        assert t_ours[name][2] == data, f"{name} ({typ}): bytes differ"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("qtype", ["f16", "bf16", "q8_0", "f32"])
def test_moe_identical_to_llama_cpp_converter(models, tmp_path, arch, qtype):
    model = models[arch]
    report = export_gguf(model, tmp_path / "ours.gguf", qtype=qtype)
    assert report.arch == GGUF_ARCH[arch]
    ref = convert_hf_to_gguf(model, tmp_path / "ref.gguf", qtype, pre=report.pre)
    _assert_same_as(report.path, ref)
    k_ours, k_ref = kvs(report.path), kvs(ref)
    assert set(k_ref) - CONVERTER_ONLY == set(k_ours) - CONVERTER_ONLY
    for key in set(k_ref) - CONVERTER_ONLY:
        assert k_ours[key] == k_ref[key], key
    a = GGUF_ARCH[arch]
    assert k_ours[f"{a}.expert_count"] == ("UINT32", 4) and k_ours[f"{a}.expert_used_count"] == ("UINT32", 2)
    t = tensors(report.path)
    # ggml order {n_embd, n_ff, n_expert}: experts stacked on the outermost axis, the router F32.
    n_ff = 96 if arch == "mixtral" else 64
    assert t["blk.1.ffn_gate_exps.weight"][1] == (64, n_ff, 4)
    assert t["blk.1.ffn_down_exps.weight"][1] == (n_ff, 64, 4)
    assert t["blk.0.ffn_gate_inp.weight"][:2] == ("F32", (64, 4))
    if arch == "qwen2_moe":
        assert k_ours["qwen2moe.expert_shared_feed_forward_length"] == ("UINT32", 96)
        assert t["blk.0.ffn_gate_inp_shexp.weight"][:2] == ("F32", (64, 1))


def _k_model(root: Path, tok_dirs: dict[str, Path], arch: str) -> Path:
    """Rows that fit 256-blocks, 4 layers so the Q4_K_M mix varies per layer; Mixtral with 8
    experts, which llama-quantize treats specially (attn_k/attn_v Q8_0, attn_output Q5_K)."""
    shape = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    extra = {"mixtral": dict(intermediate_size=512, num_local_experts=8),
             "qwen2_moe": dict(moe_intermediate_size=256, shared_expert_intermediate_size=512),
             "qwen3_moe": dict(moe_intermediate_size=256, head_dim=64)}[arch]
    return make_tiny_model(root / arch, tok_dirs[TOKENIZER[arch]], arch=arch, dtype="bfloat16", **shape, **extra)


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_k_quants_identical_to_llama_quantize(tok_dirs, tmp_path, arch):
    model = _k_model(tmp_path, tok_dirs, arch)
    bf16 = export_gguf(model, tmp_path / "bf16.gguf", qtype="bf16").path
    for qtype in ("q4_k_m", "q5_k_m", "q6_k", "q4_0"):
        ref = llama_quantize(bf16, tmp_path / f"ref-{qtype}.gguf", qtype)
        ours = export_gguf(model, tmp_path / f"{qtype}.gguf", qtype=qtype).path
        assert {n: t[0] for n, t in tensors(ours).items()} == {n: t[0] for n, t in tensors(ref).items()}, qtype
        _assert_same_as(ours, ref)
    kinds = {n: t[0] for n, t in tensors(tmp_path / "q4_k_m.gguf").items()}
    # n = 4 layers: use_more_bits picks layers 2 and 3 for ffn_down (experts and shared expert alike).
    assert kinds["blk.0.ffn_down_exps.weight"] == "Q4_K" and kinds["blk.3.ffn_down_exps.weight"] == "Q6_K"
    assert kinds["blk.0.ffn_gate_inp.weight"] == "F32"
    if arch == "mixtral":
        assert kinds["blk.0.attn_k.weight"] == "Q8_0" and kinds["blk.0.attn_output.weight"] == "Q5_K"
    if arch == "qwen2_moe":
        assert kinds["blk.3.ffn_down_shexp.weight"] == "Q6_K" and kinds["blk.0.ffn_gate_inp_shexp.weight"] == "F32"


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_llama_cpp_logits_match_transformers(models, tmp_path, arch):
    """f32 accumulates only summation-order differences; F16 weights (11-bit mantissa, relative
    error ~5e-4 per weight) give ~1e-3 on the logits, so 1e-2 leaves room but catches any wrong
    routing, stacking order or permutation (those give O(1) errors)."""
    ids = list(range(7, 7 + 24))
    ref = _hf_logits(models[arch], ids)
    for qtype, tol in (("f32", 2e-3), ("f16", 1e-2)):
        got = _llama_logits(export_gguf(models[arch], tmp_path / f"{qtype}.gguf", qtype=qtype).path, ids)
        assert _rel(got, ref) <= tol, (qtype, _rel(got, ref))


def _peft_adapter(arch: str, base: Path, out: Path) -> Path:
    """A random PEFT LoRA on the attention projections and, for Qwen2-MoE, the shared expert's
    linears (transformers 5 fuses the routed experts into 3-D parameters, not linears)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if arch == "qwen2_moe":
        targets += ["shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)) \
        .save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_merge_then_export_matches_converter(models, tmp_path, arch):
    """LoRA on attention (and, for Qwen2-MoE, the shared expert's linears): pyft-merge, then export,
    equals llama.cpp's converter on the merged model, and the adapter merged on the fly equals both."""
    from pyft.io.merge import merge

    adapter = _peft_adapter(arch, models[arch], tmp_path / "adapter")
    merged = tmp_path / "merged"
    merge(models[arch], adapter, merged)
    report = export_gguf(merged, tmp_path / "ours.gguf", qtype="q8_0")
    ref = convert_hf_to_gguf(merged, tmp_path / "ref.gguf", "q8_0", pre=report.pre)
    _assert_same_as(report.path, ref)
    fly = export_gguf(models[arch], tmp_path / "fly.gguf", qtype="q8_0", adapters=[adapter])
    assert tensors(fly.path) == tensors(report.path)
    base = tensors(export_gguf(models[arch], tmp_path / "base.gguf", qtype="q8_0").path)
    assert base["blk.0.attn_q.weight"] != tensors(report.path)["blk.0.attn_q.weight"], "the adapter must change Q"
    if arch == "qwen2_moe":
        assert base["blk.0.ffn_up_shexp.weight"] != tensors(report.path)["blk.0.ffn_up_shexp.weight"]
    ids = list(range(11, 11 + 20))
    got = _llama_logits(export_gguf(merged, tmp_path / "m32.gguf", qtype="f32").path, ids)
    assert _rel(got, _hf_logits(models[arch], ids, adapter)) <= 2e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_gguf_lora_matches_converter_and_peft(models, tmp_path, arch):
    base = models[arch]
    adapter = _peft_adapter(arch, base, tmp_path / "adapter")
    ours = export_gguf_lora(adapter, base, tmp_path / "ours.gguf").path
    ref = convert_lora_to_gguf(adapter, base, tmp_path / "ref.gguf", "f32")
    assert tensors(ours) == tensors(ref)
    assert kvs(ours)["general.architecture"][1] == GGUF_ARCH[arch]
    base_gguf = export_gguf(base, tmp_path / "base.gguf", qtype="f32").path
    ids = list(range(11, 11 + 20))
    want = _hf_logits(base, ids, adapter)
    got = _llama_logits(base_gguf, ids, ours)
    assert np.abs(_llama_logits(base_gguf, ids) - want).max() > 1e-2, "the adapter must change the logits"
    assert np.abs(got - want).max() <= 1e-3, np.abs(got - want).max()


def _expert_adapter(models: dict[str, Path], tmp_path: Path) -> Path:
    """A PEFT-format adapter on Mixtral's expert linears (as transformers 4 / PEFT trained them,
    module `block_sparse_moe.experts.{e}.w1`), written by hand: transformers 5 fuses the experts."""
    from safetensors.torch import save_file

    out = tmp_path / "expert-adapter"
    out.mkdir()
    torch.manual_seed(0)
    weights = {}
    for layer in range(2):
        for e in range(4):
            for w, (o, i) in {"w1": (96, 64), "w2": (64, 96), "w3": (96, 64)}.items():
                key = f"base_model.model.model.layers.{layer}.block_sparse_moe.experts.{e}.{w}"
                weights[f"{key}.lora_A.weight"] = torch.randn(4, i) * 0.1
                weights[f"{key}.lora_B.weight"] = torch.randn(o, 4) * 0.1
    save_file(weights, out / "adapter_model.safetensors")
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["w1", "w2", "w3"], "bias": "none",
           "base_model_name_or_path": str(models["mixtral"]), "task_type": "CAUSAL_LM", "fan_in_fan_out": False,
           "use_rslora": False, "use_dora": False}
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def test_expert_lora_merges_but_has_no_gguf_lora_form(models, tmp_path):
    """Experts adapted one by one merge like any linear (the merged export equals the converter on
    the merged model); a GGUF LoRA of them is refused with the way out."""
    from pyft.io.merge import merge

    adapter = _expert_adapter(models, tmp_path)
    with pytest.raises(DataError, match="expert.*merge the adapter"):
        export_gguf_lora(adapter, models["mixtral"], tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))
    merged = tmp_path / "merged"
    merge(models["mixtral"], adapter, merged)
    report = export_gguf(merged, tmp_path / "ours.gguf", qtype="f16")
    _assert_same_as(report.path, convert_hf_to_gguf(merged, tmp_path / "ref.gguf", "f16", pre=report.pre))
    base = tensors(export_gguf(models["mixtral"], tmp_path / "base.gguf", qtype="f16").path)
    assert base["blk.1.ffn_down_exps.weight"] != tensors(report.path)["blk.1.ffn_down_exps.weight"]


def test_missing_expert_is_refused(models, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(models["qwen3_moe"], broken)
    for f in broken.glob("model-*.safetensors"):
        weights = load_file(f)
        if "model.layers.1.mlp.experts.2.up_proj.weight" in weights:
            del weights["model.layers.1.mlp.experts.2.up_proj.weight"]
            save_file(weights, f, metadata={"format": "pt"})
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.1.mlp.experts.2.up_proj.weight"]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"blk.1.ffn_up_exps.weight.*experts \[0, 1, 3\].*4 experts"):
        export_gguf(broken, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))
