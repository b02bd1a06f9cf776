"""GGUF export against llama.cpp itself: its converter (tensor bytes), its quantizer (K-quant
bytes) and its runtime (logits, greedy generation, LoRA adapters via llama-cpp-python)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llamacpp import convert_hf_to_gguf, convert_lora_to_gguf, llama_quantize
from pyft.errors import ConfigError, DataError
from pyft.export import export_gguf, export_gguf_lora
from pyft.testing import make_tiny_model, make_tokenizer

import gguf  # gguf-py 0.19.0 (test extra): an independent GGUF reader

#: Keys only llama.cpp's converter writes (cosmetic model-card metadata).
CONVERTER_ONLY = {"general.size_label", "general.name", "general.basename", "general.finetune"}


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    r = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), bytes(t.data.tobytes())) for t in r.tensors}


def kvs(path: Path) -> dict[str, tuple[str, object]]:
    r = gguf.GGUFReader(path)
    out = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        kind = f.types[0].name if f.types else "?"
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            kind = f"ARRAY[{f.types[-1].name}]"
        out[name] = (kind, f.contents())
    return out


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-tok")
    return {s: make_tokenizer(root / s, style=s, vocab_size=512) for s in ("llama3", "chatml")}


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 480-piece SentencePiece model (Gemma 2's converter reads only tokenizer.model)."""
    import io

    import sentencepiece as spm

    from pyft.testing import CORPUS_PATH

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(input=str(CORPUS_PATH), model_writer=buf, vocab_size=480, byte_fallback=True,
                                   character_coverage=0.99, model_type="bpe", minloglevel=2, num_threads=1)
    out = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    out.write_bytes(buf.getvalue())
    return out


def with_spm(model: Path, spm: Path) -> Path:
    """Swap a tiny model's BPE tokenizer for the SentencePiece one (vocabulary padded to 512)."""
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    shutil.copy(spm, model / "tokenizer.model")
    (model / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                             "add_bos_token": True, "add_eos_token": False}))
    return model


def make_model(root: Path, arch: str, tok_dirs: dict[str, Path], spm: Path, **kw) -> Path:
    """A tiny model of `arch` with the tokenizer its converter path needs (Gemma: SentencePiece)."""
    tok = tok_dirs["llama3" if arch in ("llama", "mistral", "granite", "smollm3") else "chatml"]
    model = make_tiny_model(root, tok, arch=arch, **kw)
    if arch.startswith("gemma") or arch == "phi3":
        model = with_spm(model, spm)
    if arch.startswith("phi"):
        # Phi3MiniModel.set_vocab picks its path by tokenizer_class (and needs the key).
        cfg = json.loads((model / "tokenizer_config.json").read_text())
        cfg["tokenizer_class"] = "GPT2Tokenizer" if arch == "phi4" else "LlamaTokenizer"
        if arch == "phi3":
            # Phi-3's added specials past the SentencePiece pieces (llama.cpp looks up
            # <|endoftext|> by text in any model named phi3).
            cfg["added_tokens_decoder"] = {str(480 + i): {"content": c, "special": True}
                                           for i, c in enumerate(["<|endoftext|>", "<|assistant|>", "<|end|>"])}
        (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return model


#: Every architecture the export writes (tiny fixtures in `models`).
ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "granite", "olmo2", "smollm3", "phi3", "phi4"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tok_dirs: dict[str, Path], spm_model: Path) -> dict[str, Path]:
    """Tiny models: GQA Llama (untied), tied Qwen2 with biases, Qwen3 with q/k norms, Gemma 2 and 3
    (soft-capping, sliding window, sandwich norms), Mistral with Mistral-Nemo's explicit head_dim,
    Granite (multipliers), OLMo 2 (post-norms, whole-projection q/k norms), SmolLM3 (NoPE layer),
    Phi-3.5 (fused QKV/gate-up, LongRoPE, partial rotary, SentencePiece) and Phi-4 (GPT-2 BPE)."""
    root = tmp_path_factory.mktemp("gguf-models")
    kw = {"llama": dict(num_key_value_heads=2)}
    return {a: make_model(root / a, a, tok_dirs, spm_model, **kw.get(a, {})) for a in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("qtype", ["f16", "q8_0", "f32", "bf16"])
def test_tensors_and_metadata_identical_to_llama_cpp_converter(models, tmp_path, arch, qtype):
    model = models[arch]
    report = export_gguf(model, tmp_path / "ours.gguf", qtype=qtype)
    ours = report.path
    # The test tokenizers are unknown to the converter's hash table: force the name pyft chose.
    assert report.pre is not None
    ref = convert_hf_to_gguf(model, tmp_path / "ref.gguf", qtype, pre=report.pre)
    t_ours, t_ref = tensors(ours), tensors(ref)
    assert sorted(t_ours) == sorted(t_ref)
    for name, (typ, shape, data) in t_ref.items():
        assert t_ours[name][:2] == (typ, shape), name
        assert t_ours[name][2] == data, f"{name}: tensor bytes differ from llama.cpp's converter"
    k_ours, k_ref = kvs(ours), kvs(ref)
    assert set(k_ref) - CONVERTER_ONLY == set(k_ours) - CONVERTER_ONLY
    for key in set(k_ref) - CONVERTER_ONLY:
        assert k_ours[key] == k_ref[key], key


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
@pytest.mark.parametrize("weights", ["bfloat16", "float16"])
def test_gemma_norm_shift_in_checkpoint_dtype_and_k_quants(tok_dirs, spm_model, tmp_path, arch, weights):
    """The converter adds 1 to Gemma's norm weights in F16 for an F16 checkpoint, in F32 for BF16
    (it widens BF16 first), then writes F32: equal bytes at the weights' own precision; rows of 256
    so the Q4_K_M file can be compared with llama-quantize run on that float file."""
    from safetensors.numpy import load_file

    model = make_model(tmp_path / "m", arch, tok_dirs, spm_model, hidden_size=256, intermediate_size=512,
                       head_dim=64, query_pre_attn_scalar=64, dtype=weights)
    qtype = {"bfloat16": "bf16", "float16": "f16"}[weights]
    report = export_gguf(model, tmp_path / "ours.gguf", qtype=qtype)
    ref = convert_hf_to_gguf(model, tmp_path / "ref.gguf", qtype, pre=report.pre)
    t_ours, t_ref = tensors(report.path), tensors(ref)
    assert t_ours == t_ref
    # F16: the shift must be rounded to F16 for the bytes to agree (the F32 sum differs).
    if weights == "float16":
        w = load_file(model / "model.safetensors")["model.layers.0.input_layernorm.weight"].astype(np.float32)
        assert (np.frombuffer(t_ours["blk.0.attn_norm.weight"][2], np.float32) != w + 1).any()
    quant = export_gguf(model, tmp_path / "q4km.gguf", qtype="q4_k_m").path
    assert tensors(quant) == tensors(llama_quantize(report.path, tmp_path / "ref-q4km.gguf", "q4_k_m"))


def _k_model(root: Path, tok_dir: Path, dtype: str) -> Path:
    """Rows that fit 256-blocks (hidden 256, intermediate 512), 8 layers so the Q4_K_M mix varies
    per layer."""
    return make_tiny_model(root / "llama", tok_dir, arch="llama", hidden_size=256, intermediate_size=512,
                           num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, dtype=dtype)


@pytest.fixture(scope="module")
def k_model(tmp_path_factory: pytest.TempPathFactory, tok_dirs: dict[str, Path]) -> Path:
    return _k_model(tmp_path_factory.mktemp("gguf-kq"), tok_dirs["llama3"], "bfloat16")


@pytest.fixture(scope="module")
def k_model_f16(tmp_path_factory: pytest.TempPathFactory, tok_dirs: dict[str, Path]) -> Path:
    return _k_model(tmp_path_factory.mktemp("gguf-kq16"), tok_dirs["llama3"], "float16")


@pytest.mark.parametrize("qtype", ["q4_k_m", "q6_k", "q5_k_m", "q4_0"])
@pytest.mark.parametrize("weights", ["bf16", "f16"])
def test_quantized_mixes_identical_to_llama_quantize(k_model, k_model_f16, tmp_path, qtype, weights):
    """llama.cpp's route: our float GGUF of the same precision as the weights (lossless), then
    llama-quantize; pyft quantizes straight from the safetensors in one pass."""
    model = k_model if weights == "bf16" else k_model_f16
    float_file = export_gguf(model, tmp_path / "float.gguf", qtype=weights).path
    ref = llama_quantize(float_file, tmp_path / "ref.gguf", qtype)
    ours = export_gguf(model, tmp_path / "ours.gguf", qtype=qtype).path
    t_ours, t_ref = tensors(ours), tensors(ref)
    assert sorted(t_ours) == sorted(t_ref)
    for name, (typ, shape, data) in t_ref.items():
        assert t_ours[name][:2] == (typ, shape), name
        assert t_ours[name][2] == data, f"{name} ({typ}): bytes differ from llama-quantize"
    assert kvs(ours)["general.file_type"] == kvs(ref)["general.file_type"]
    if qtype == "q4_k_m":
        kinds = {name: t[0] for name, t in t_ours.items()}
        assert kinds["output.weight"] == "Q6_K" and kinds["blk.0.attn_v.weight"] == "Q6_K"
        assert kinds["blk.2.attn_v.weight"] == "Q4_K" and kinds["blk.3.attn_v.weight"] == "Q6_K"
        assert kinds["blk.0.attn_q.weight"] == "Q4_K" and kinds["blk.2.ffn_down.weight"] == "Q4_K"


@pytest.mark.parametrize("arch", ["granite", "olmo2", "smollm3", "phi3"])
def test_k_quants_identical_to_llama_quantize_per_arch(tok_dirs, spm_model, tmp_path, arch):
    """Rows of 256 so every K-quant applies: pyft's Q4_K_M from the BF16 weights equals
    llama-quantize run on pyft's (converter-identical) BF16 file (Phi-3: fused QKV one step up)."""
    # 16 heads keep head_dim 16, so Phi-3's six LongRoPE factors still fit.
    model = make_model(tmp_path / "m", arch, tok_dirs, spm_model, hidden_size=256, intermediate_size=512,
                       num_attention_heads=16, num_key_value_heads=4, dtype="bfloat16")
    bf16 = export_gguf(model, tmp_path / "bf16.gguf", qtype="bf16")
    assert tensors(bf16.path) == tensors(convert_hf_to_gguf(model, tmp_path / "ref.gguf", "bf16", pre=bf16.pre))
    for qtype in ("q4_k_m", "q6_k"):
        ours = tensors(export_gguf(model, tmp_path / f"{qtype}.gguf", qtype=qtype).path)
        assert ours == tensors(llama_quantize(bf16.path, tmp_path / f"ref-{qtype}.gguf", qtype)), qtype


def _neutralised_logits(model_dir: Path, ids: list[int], overrides: dict, unit_norms: bool) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **overrides)
    if unit_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].numpy()


#: Per fixture feature: config overrides (or unit norm weights) that switch it off.
FEATURES = [
    ("granite", "attention_multiplier", dict(attention_multiplier=0.25), False),  # = 1/sqrt(head_dim)
    ("granite", "embedding_multiplier", dict(embedding_multiplier=1.0), False),
    ("granite", "residual_multiplier", dict(residual_multiplier=1.0), False),
    ("granite", "logits_scaling", dict(logits_scaling=1.0), False),
    ("olmo2", "norm weights", {}, True),
    ("smollm3", "no_rope_layers", dict(no_rope_layers=[1, 1, 1, 1]), False),
    ("phi3", "longrope", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.75}), False),
]


@pytest.mark.parametrize(("arch", "feature", "overrides", "unit_norms"), FEATURES,
                         ids=[f"{f[0]}-{f[1]}" for f in FEATURES])
def test_fixture_features_change_transformers_logits(models, arch, feature, overrides, unit_norms):
    """The logits tests above only mean something if each feature moves transformers' logits by
    far more than their 1e-2 (F16) tolerance."""
    ids = list(range(7, 7 + 24))
    ref = _hf_logits(models[arch], ids)
    off = _neutralised_logits(models[arch], ids, overrides, unit_norms)
    assert _rel(off, ref) > 0.05, (feature, _rel(off, ref))


def test_odd_rows_fall_back_like_llama_quantize(tok_dirs, tmp_path):
    model = make_tiny_model(tmp_path / "odd", tok_dirs["chatml"], arch="qwen2", hidden_size=64 * 3,
                            intermediate_size=256, num_attention_heads=3, num_key_value_heads=1, dtype="bfloat16")
    bf16 = export_gguf(model, tmp_path / "bf16.gguf", qtype="bf16").path
    for qtype in ("q4_k_m", "q5_k_m"):
        ref = tensors(llama_quantize(bf16, tmp_path / f"ref-{qtype}.gguf", qtype))
        ours = tensors(export_gguf(model, tmp_path / f"{qtype}.gguf", qtype=qtype).path)
        assert {n: t[0] for n, t in ours.items()} == {n: t[0] for n, t in ref.items()}
        assert ours == ref
        assert ours["blk.0.attn_q.weight"][0] in ("Q5_0", "Q5_1")


def _hf_logits(model_dir: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].numpy()


def _llama_logits(path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(path), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=128, verbose=False,
                n_threads=2)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_logits_match_transformers(models, tmp_path, arch):
    ids = list(range(7, 7 + 24))
    ref = _hf_logits(models[arch], ids)
    for qtype, tol in (("f32", 2e-3), ("f16", 1e-2), ("q8_0", 5e-2)):
        got = _llama_logits(export_gguf(models[arch], tmp_path / f"{qtype}.gguf", qtype=qtype).path, ids)
        assert _rel(got, ref) <= tol, (qtype, _rel(got, ref))


def _peft_adapter(base: Path, out: Path, *, r: int = 8, alpha: int = 16, rslora: bool = False,
                  rank_pattern: dict | None = None, seed: int = 0) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, rank_pattern=rank_pattern or {},
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                     "qkv_proj", "gate_up_proj"],  # the last two: Phi-3's fused ones
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3", "mistral", "granite", "olmo2", "smollm3", "phi3"])
@pytest.mark.parametrize("variant", ["lora", "rslora", "rank_pattern"])
def test_gguf_lora_in_llama_cpp_matches_peft(models, tmp_path, arch, variant):
    base = models[arch]
    kw = {"rslora": dict(r=16, alpha=8, rslora=True), "lora": {},
          "rank_pattern": dict(rank_pattern={"qkv_proj" if arch == "phi3" else "q_proj": 4, "down_proj": 12})}[variant]
    adapter = _peft_adapter(base, tmp_path / "adapter", **kw)
    base_gguf = export_gguf(base, tmp_path / "base.gguf", qtype="f32").path
    lora_gguf = export_gguf_lora(adapter, base, tmp_path / "lora.gguf").path
    ids = list(range(11, 11 + 20))
    ref = _hf_logits(base, ids, adapter)
    got = _llama_logits(base_gguf, ids, lora_gguf)
    base_only = _llama_logits(base_gguf, ids)
    assert np.abs(base_only - ref).max() > 1e-2, "the adapter must change the logits for the test to mean anything"
    # llama.cpp's f32 arithmetic differs from torch's by itself: on Gemma (soft-capping, up to 6
    # layers) by ~1.1e-3 on the merged model. Allow 1.5x the runtime's error on the merged f32 file.
    merged = export_gguf(base, tmp_path / "merged.gguf", qtype="f32", adapters=[adapter]).path
    runtime = np.abs(_llama_logits(merged, ids) - ref).max()
    assert np.abs(got - ref).max() <= max(1e-3, 1.5 * runtime), (np.abs(got - ref).max(), runtime)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3", "mistral", "granite", "olmo2", "smollm3", "phi3"])
def test_gguf_lora_tensors_identical_to_llama_cpp_converter(models, tmp_path, arch):
    adapter = _peft_adapter(models[arch], tmp_path / "adapter")
    ours = tensors(export_gguf_lora(adapter, models[arch], tmp_path / "ours.gguf").path)
    ref = tensors(convert_lora_to_gguf(adapter, models[arch], tmp_path / "ref.gguf", "f32"))
    assert ours == ref
    k = kvs(tmp_path / "ours.gguf")
    assert k["general.type"][1] == "adapter" and k["adapter.type"][1] == "lora"
    assert k["adapter.lora.alpha"] == ("FLOAT32", 16.0)


def test_rslora_alpha_is_scaled_for_llama_cpp(models, tmp_path):
    adapter = _peft_adapter(models["llama"], tmp_path / "adapter", r=16, alpha=8, rslora=True)
    k = kvs(export_gguf_lora(adapter, models["llama"], tmp_path / "a.gguf").path)
    assert k["adapter.lora.alpha"] == ("FLOAT32", 32.0)  # 8 * sqrt(16): llama.cpp's alpha/r = PEFT's alpha/sqrt(r)


def test_adapter_merged_on_the_fly_matches_merge_then_export(models, tmp_path):
    from pyft.io.merge import merge

    adapter = _peft_adapter(models["llama"], tmp_path / "adapter")
    merged = tmp_path / "merged"
    merge(models["llama"], adapter, merged)
    a = tensors(export_gguf(merged, tmp_path / "a.gguf", qtype="q8_0").path)
    b = tensors(export_gguf(models["llama"], tmp_path / "b.gguf", qtype="q8_0", adapters=[adapter]).path)
    assert a == b


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "mistral", "granite", "olmo2", "smollm3", "phi3"])
def test_merged_model_exports_like_the_converter_on_it(models, tmp_path, arch):
    """pyft-merge, then export: equal to llama.cpp's converter on the merged directory, and to the
    export with the adapter merged on the fly."""
    from pyft.io.merge import merge

    adapter = _peft_adapter(models[arch], tmp_path / "adapter")
    merged = tmp_path / "merged"
    merge(models[arch], adapter, merged)
    for qtype in ("f16", "q8_0"):
        report = export_gguf(merged, tmp_path / f"ours-{qtype}.gguf", qtype=qtype)
        ref = tensors(convert_hf_to_gguf(merged, tmp_path / f"ref-{qtype}.gguf", qtype, pre=report.pre))
        assert tensors(report.path) == ref, qtype
        fly = export_gguf(models[arch], tmp_path / f"fly-{qtype}.gguf", qtype=qtype, adapters=[adapter])
        assert tensors(fly.path) == ref, qtype
    base = tensors(export_gguf(models[arch], tmp_path / "base.gguf", qtype="q8_0").path)
    q = "blk.0.attn_qkv.weight" if arch == "phi3" else "blk.0.attn_q.weight"
    assert base[q] != ref[q], "the adapter must change the weights"


# --- from a 4-bit NF4 base (bitsandbytes format) ----------------------------------------------------------


@pytest.mark.parametrize(("arch", "qtype"), [("llama", "f16"), ("llama", "q8_0"), ("qwen2", "f16")])
def test_nf4_base_exports_like_llama_cpp_on_its_dequantization(models, tmp_path, arch, qtype):
    """The oracle: llama.cpp's converter on the dense model bitsandbytes' dequantize_4bit makes."""
    from bnb_nf4 import dequantized_dir, save_nf4

    nf4 = save_nf4(models[arch], tmp_path / "nf4")
    report = export_gguf(nf4, tmp_path / "ours.gguf", qtype=qtype)
    assert report.dequantized_nf4 == 14
    ref = convert_hf_to_gguf(dequantized_dir(nf4, tmp_path / "ref"), tmp_path / "ref.gguf", qtype, pre=report.pre)
    t_ours, t_ref = tensors(report.path), tensors(ref)
    assert sorted(t_ours) == sorted(t_ref)
    for name, t in t_ref.items():
        assert t_ours[name] == t, f"{name}: differs from llama.cpp's converter on the dequantized model"
    dense = tensors(export_gguf(models[arch], tmp_path / "dense.gguf", qtype=qtype).path)
    assert dense["blk.0.attn_q.weight"] != t_ours["blk.0.attn_q.weight"], "the test must see the NF4 values"


def test_nf4_base_with_adapters_and_k_quants(k_model, tmp_path):
    """K-quant mix, adapter merged on the fly, GGUF LoRA over the NF4 base: each equal to the same
    export from bitsandbytes' dequantized model (pyft's dense path is checked against llama.cpp above)."""
    from bnb_nf4 import dequantized_dir, peft_adapter, save_nf4

    nf4 = save_nf4(k_model, tmp_path / "nf4")
    ref = dequantized_dir(nf4, tmp_path / "ref")
    adapter = peft_adapter(nf4, tmp_path / "adapter")
    for name, qtype, adapters in [("k", "q4_k_m", []), ("merged", "q8_0", [adapter])]:
        ours = export_gguf(nf4, tmp_path / f"{name}.gguf", qtype=qtype, adapters=adapters)
        assert ours.dequantized_nf4 == 56
        want = export_gguf(ref, tmp_path / f"{name}-ref.gguf", qtype=qtype, adapters=adapters)
        assert tensors(ours.path) == tensors(want.path), name
    lora = tensors(export_gguf_lora(adapter, nf4, tmp_path / "lora.gguf").path)
    assert lora == tensors(export_gguf_lora(adapter, ref, tmp_path / "lora-ref.gguf").path) and len(lora) == 112


# --- bad input: clear errors, no partial output ---------------------------------------------------------


def test_unsupported_architecture_and_type(models, tmp_path):
    import shutil

    model = tmp_path / "gpt2"
    shutil.copytree(models["llama"], model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported architecture.*GPT2LMHeadModel.*Gemma2ForCausalLM"):
        export_gguf(model, tmp_path / "x.gguf")
    cfg["architectures"] = ["Gemma3ForConditionalGeneration"]
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="Gemma3ForConditionalGeneration.*text-only `Gemma3ForCausalLM`"):
        export_gguf(model, tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="unknown GGUF quantization type `q3_k_s`"):
        export_gguf(models["llama"], tmp_path / "x.gguf", qtype="q3_k_s")
    assert not list(tmp_path.glob("x.gguf*"))


def test_adapter_for_another_base_is_refused(models, k_model, tmp_path):
    adapter = _peft_adapter(k_model, tmp_path / "adapter")  # hidden 256, the base has 64
    with pytest.raises(DataError, match="different base model|shape"):
        export_gguf(models["llama"], tmp_path / "x.gguf", adapters=[adapter])
    with pytest.raises(DataError, match="different base model|shape"):
        export_gguf_lora(adapter, models["llama"], tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_missing_tensor_and_hostile_header(models, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    missing = tmp_path / "missing"
    shutil.copytree(models["llama"], missing)
    weights = load_file(missing / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, missing / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="blk.1.ffn_up.weight"):
        export_gguf(missing, tmp_path / "m.gguf")

    hostile = tmp_path / "hostile"
    shutil.copytree(models["llama"], hostile)
    data = (hostile / "model.safetensors").read_bytes()
    (hostile / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + data[8:])
    with pytest.raises(DataError, match="model.safetensors"):
        export_gguf(hostile, tmp_path / "h.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_dora_and_modules_to_save_have_no_gguf_lora_form(models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models["llama"])
    dora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")
    with pytest.raises(DataError, match="DoRA.*merge"):
        export_gguf_lora(tmp_path / "dora", models["llama"], tmp_path / "d.gguf")
    assert not (tmp_path / "d.gguf").exists()


def test_existing_output_is_not_overwritten(models, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="already exists.*--overwrite"):
        export_gguf(models["llama"], out)
    assert out.read_bytes() == b"keep"


def test_smollm3_nope_pattern_llama_cpp_cannot_run_is_refused(models, tmp_path):
    import shutil

    model = tmp_path / "smollm3"
    shutil.copytree(models["smollm3"], model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["no_rope_layers"] = [1, 0, 1, 1]
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="no_rope_layers.*every-fourth-layer"):
        export_gguf(model, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))


def test_gemma2_needs_its_sentencepiece_model(models, tmp_path):
    """llama.cpp's Gemma 2 converter reads tokenizer.model only: pyft refuses the same way."""
    import shutil

    model = tmp_path / "gemma2"
    shutil.copytree(models["gemma2"], model)
    (model / "tokenizer.model").unlink()
    with pytest.raises(DataError, match="tokenizer.model.*Gemma 2"):
        export_gguf(model, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))
