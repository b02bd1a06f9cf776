"""pyft-merge from a 4-bit NF4 base (bitsandbytes format, written by transformers + bitsandbytes on
CPU) against bitsandbytes' own dequantization: bit-identical without an adapter, PEFT's
merge_and_unload on the dequantized base within one bf16 ulp with one, and clear errors for
checkpoints pyft does not read."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pyft
from bnb_nf4 import BLOB, dequantize_all, dequantized_dir, peft_adapter, read_all, save_nf4
from pyft.errors import DataError
from pyft.io import merge
from pyft.testing import make_tiny_model

VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True}}


@pytest.fixture(scope="module")
def nf4(tokenizer_dirs, tmp_path_factory):
    """``{arch}``: the bf16 model; ``{arch}-dq`` / ``{arch}-plain``: NF4 with / without double
    quantization; ``{arch}-dq-ref``: bitsandbytes' dequantization of ``{arch}-dq`` as a dense model."""
    root = tmp_path_factory.mktemp("nf4-bases")
    out = {}
    for arch in ("llama", "qwen2"):
        out[arch] = make_tiny_model(root / arch, tokenizer_dirs["chatml"], arch=arch, dtype="bfloat16")
        for name, dq in (("dq", True), ("plain", False)):
            out[f"{arch}-{name}"] = save_nf4(out[arch], root / f"{arch}-{name}", double_quant=dq)
        out[f"{arch}-dq-ref"] = dequantized_dir(out[f"{arch}-dq"], root / f"{arch}-dq-ref")
    return out


def _ulp(x: torch.Tensor) -> torch.Tensor:
    bits = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[x.dtype]
    exp = torch.floor(torch.log2(x.float().abs().clamp_min(torch.finfo(x.dtype).tiny)))
    return torch.pow(2.0, exp - bits)


def _assert_bitwise(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        assert torch.equal(ours[k].view(torch.int16 if v.element_size() == 2 else torch.int32),
                           v.view(torch.int16 if v.element_size() == 2 else torch.int32)), f"{k}: bits differ"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_checkpoint_has_the_bitsandbytes_layout(nf4, arch):
    """The fixture is what the spec (nf4.md §4) describes, so the tests below test that format."""
    sd = read_all(nf4[f"{arch}-dq"])
    quantized = sorted(k[: -len(BLOB)] for k in sd if k.endswith(BLOB))
    assert len(quantized) == 14 and all(".layers." in k and k.endswith("proj.weight") for k in quantized)
    for w in quantized:
        assert {k for k in sd if k.startswith(w + ".")} == {
            f"{w}.{s}" for s in ("absmax", "quant_map", "nested_absmax", "nested_quant_map", BLOB[1:])}
        blob = json.loads(bytes(sd[w + BLOB].tolist()))
        assert list(blob) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
                              "nested_offset"]
        assert (blob["quant_type"], blob["dtype"], sd[w].dtype, sd[w + ".absmax"].dtype) == \
            ("nf4", "bfloat16", torch.uint8, torch.uint8)
        assert sd[w].shape == ((blob["shape"][0] * blob["shape"][1] + 1) // 2, 1)
    plain = read_all(nf4[f"{arch}-plain"])
    assert plain[quantized[0] + ".absmax"].dtype == torch.float32 and quantized[0] + ".nested_absmax" not in plain
    qc = json.loads((nf4[f"{arch}-dq"] / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["load_in_4bit"], qc["bnb_4bit_quant_type"]) == ("bitsandbytes", True, "nf4")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", ["dq", "plain"])
def test_merge_without_adapter_is_bitsandbytes_dequantization(nf4, tmp_path, arch, kind):
    report = merge(nf4[f"{arch}-{kind}"], [], tmp_path / "out")
    assert report["dequantized_nf4"] == 14 and report["nf4_written_as"] == ["bfloat16"]
    _assert_bitwise(load_file(str(tmp_path / "out" / "model.safetensors")), dequantize_all(nf4[f"{arch}-{kind}"]))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    # Quantization lost information: the dequantized weights are not the bf16 model's.
    dense = load_file(str(nf4[arch] / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(dense, ours) and (dense.float() - ours.float()).abs().max() < 0.05


def _peft_merged(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    merged = PeftModel.from_pretrained(pyft.load_model(base_dir), adapter_dir).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_adapter_trained_on_nf4_merges_onto_the_dequantized_weights(nf4, tmp_path, arch, variant):
    """The oracle: PEFT's merge_and_unload of the same adapter into bitsandbytes' dequantized model."""
    adapter = peft_adapter(nf4[f"{arch}-dq"], tmp_path / "adapter", **VARIANTS[variant])
    report = merge(nf4[f"{arch}-dq"], adapter, tmp_path / "merged")
    assert report["merged_modules"] == 14 and report["dequantized_nf4"] == 14
    ours = load_file(str(tmp_path / "merged" / "model.safetensors"))
    ref = _peft_merged(nf4[f"{arch}-dq-ref"], adapter)
    assert set(ours) == {k for k in ref if not (arch == "qwen2" and k == "lm_head.weight")}
    base = dequantize_all(nf4[f"{arch}-dq"])
    changed = 0
    for k, v in ours.items():
        assert v.dtype == ref[k].dtype == torch.bfloat16, k
        assert ((v.float() - ref[k].float()).abs() <= _ulp(ref[k])).all(), (k, (v.float() - ref[k].float()).abs().max())
        changed += not torch.equal(v, base[k])
    assert changed == 14, "every adapted weight must move away from the dequantized base"


def test_merged_dir_loads_in_transformers_with_the_4bit_models_logits(nf4, tmp_path):
    """No warnings; the dequantized model computes exactly what bitsandbytes' 4-bit model computes,
    and the merged one what PEFT computes on the dequantized base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = nf4["llama-dq"]
    adapter = peft_adapter(base, tmp_path / "adapter", dora=True)
    merge(base, [], tmp_path / "dense")
    merge(base, adapter, tmp_path / "merged", dtype="fp32")
    ids = torch.randint(0, 4096, (2, 9), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert (dense.dtype, merged.dtype) == (torch.bfloat16, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' CPU-backend notices
        four_bit = AutoModelForCausalLM.from_pretrained(base)
    peft_ref = PeftModel.from_pretrained(pyft.load_model(nf4["llama-dq-ref"], dtype="float32"), adapter).eval()
    with torch.no_grad():
        a, b = dense(input_ids=ids).logits, four_bit(input_ids=ids).logits
        m, p = merged(input_ids=ids).logits, peft_ref(input_ids=ids).logits
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    assert ((m - p).abs().max() / p.abs().max()) <= 1e-5 and (m - a.float()).abs().max() > 1e-2


def _state_in_own_shard(src: Path, dst: Path) -> Path:
    """``src`` re-sharded: the quant state of every weight in a shard of its own (the spec allows any split)."""
    sd = read_all(src)
    state = {k for k in sd for w in (k.rsplit(".", 1)[0], k[: -len(BLOB)]) if w in sd and k != w}
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in sd.items() if k not in state},
              "model-00002-of-00002.safetensors": {k: sd[k] for k in state}}
    dst.mkdir()
    for name, tensors in shards.items():
        save_file(tensors, str(dst / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, t in shards.items() for k in t}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())
    return dst


def test_sharded_checkpoint_and_bf16_quant_storage(nf4, tmp_path):
    """Sharded as transformers shards it, then with each weight's quant state in another shard;
    packed bytes stored as bfloat16 (bnb_4bit_quant_storage, FSDP-QLoRA)."""
    src = save_nf4(nf4["llama"], tmp_path / "sharded", storage=torch.bfloat16, max_shard_size="60KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    w = "model.layers.0.mlp.down_proj.weight"
    assert len(set(index.values())) > 2 and read_all(src)[w].dtype == torch.bfloat16
    split = _state_in_own_shard(src, tmp_path / "split")
    index = json.loads((split / "model.safetensors.index.json").read_text())["weight_map"]
    assert index[w] != index[w + BLOB] == index[w + ".nested_absmax"]
    ref = {k: v.to(torch.float16) for k, v in dequantize_all(src).items()}
    for i, model in enumerate([src, split]):
        report = merge(model, [], tmp_path / f"out{i}", max_shard_size="100KB", dtype="fp16")
        assert report["dequantized_nf4"] == 14 and report["nf4_written_as"] == ["float16"]
        _assert_bitwise(read_all(tmp_path / f"out{i}"), ref)
    config = json.loads((tmp_path / "out0" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == config["torch_dtype"] == "float16"


def test_pyft_merge_command_dequantizes_and_says_so(nf4, tmp_path):
    base = nf4["qwen2-dq"]
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", str(base), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "note: the base is 4-bit NF4 (bitsandbytes): 14 weights were dequantized and written as bfloat16" in r.stdout
    adapter = peft_adapter(base, tmp_path / "adapter")
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", str(base), str(adapter), str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "merged 14 modules" in r.stdout and "nothing was re-quantized" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", str(nf4["qwen2"]), str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no adapter given" in r.stderr and not (tmp_path / "x").exists()


def _copy_with(src: Path, dst: Path, config: dict | None = None, drop: str | None = None,
               replace: dict[str, torch.Tensor] | None = None) -> Path:
    dst.mkdir()
    sd = read_all(src)
    sd = {k: v for k, v in sd.items() if k != drop}
    sd.update(replace or {})
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config or {})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_unsupported_and_broken_checkpoints_fail_clearly_and_write_nothing(nf4, tmp_path):
    base = nf4["llama-dq"]
    w = "model.layers.1.self_attn.k_proj.weight"
    qc = json.loads((base / "config.json").read_text())["quantization_config"]
    blob = json.loads(bytes(read_all(base)[w + BLOB].tolist()))
    bad_blob = torch.tensor(list(json.dumps({**blob, "shape": [64, 60]}).encode()), dtype=torch.uint8)
    cases = [
        ({"quantization_config": {**qc, "bnb_4bit_quant_type": "fp4"}}, None, None,
         r"config\.json: `quantization_config\.bnb_4bit_quant_type` is `fp4`: pyft dequantizes NF4 only"),
        ({"quantization_config": {**qc, "load_in_4bit": False, "load_in_8bit": True}}, None, None,
         r"config\.json: `quantization_config\.load_in_8bit` is true: 8-bit bitsandbytes"),
        (None, f"{w}.nested_absmax", None,
         rf"model\.safetensors: `{w}\.quant_state\.bitsandbytes__nf4`: the quant state of `{w}` lacks tensor "
         rf"`{w}\.nested_absmax`"),
        (None, None, {w + BLOB: bad_blob},
         rf"`{w}`: packed NF4 data is U8 \[2048, 1\] \(2048 bytes\), but its quant state records shape \[64, 60\]"),
        ({"quantization_config": None}, None, None, rf"tensor `[a-z0-9_.]+` has dtype U8; expected F32, F16 or BF16"),
    ]
    for i, (config, drop, replace, message) in enumerate(cases):
        broken = _copy_with(base, tmp_path / f"broken{i}", config, drop, replace)
        with pytest.raises(DataError, match=message):
            merge(broken, [], tmp_path / "out")
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
