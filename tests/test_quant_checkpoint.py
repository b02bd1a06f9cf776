"""``pyft quantize`` and ``pyft.load_model(quantize="nf4")`` against transformers + bitsandbytes
quantizing the same model themselves (CPU backend): identical tensors, config and logits."""

from __future__ import annotations

import json

import pytest
import torch

import pyft
from pyft.cli.main import main as cli
from pyft.errors import ConfigError
from pyft.io.shards import SafetensorsShards
from pyft.quant import NF4Linear
from pyft.quant.checkpoint import quantize_checkpoint
from pyft.testing import make_tiny_model, make_tokenizer

pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[1, 5, 9, 20, 33, 47, 2, 8, 100, 7]])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def bnb_config(double_quant=True, compute=torch.bfloat16):
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("arch,double_quant,dtype", [("llama", True, torch.bfloat16), ("qwen2", True, torch.bfloat16),
                                                      ("llama", False, torch.float16), ("qwen2", False, torch.float32)])
def test_checkpoint_identical_to_bitsandbytes(tmp_path, tok, arch, double_quant, dtype):
    model_dir = make_tiny_model(tmp_path / "m", tok, arch=arch)
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb_config(double_quant, dtype),
                                                            dtype=dtype)
    ref.save_pretrained(tmp_path / "bnb")
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    args = ["quantize", str(model_dir), str(tmp_path / "q"), "--dtype", names[dtype]]
    assert cli(args + ([] if double_quant else ["--no-double-quant"])) == 0
    ours, theirs = SafetensorsShards(tmp_path / "q"), SafetensorsShards(tmp_path / "bnb")
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for k in theirs.keys():
        a, b = ours.read(k), theirs.read(k)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8),
                                                                          b.view(-1).view(torch.uint8)), k
    qc = lambda d: json.loads((d / "config.json").read_text())["quantization_config"]  # noqa: E731
    assert qc(tmp_path / "q") == qc(tmp_path / "bnb")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=dtype)
    assert torch.equal(logits(loaded), logits(ref))
    # pyft's own loaders: straight from the 16-bit model and from either 4-bit checkpoint.
    for source in (model_dir, tmp_path / "q", tmp_path / "bnb"):
        model = pyft.load_model(source, quantize="nf4", dtype=dtype, double_quant=double_quant)
        layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
        assert len(layers) == 7 * model.config.num_hidden_layers
        assert all(m.is_double_quantized == double_quant for m in layers)
        assert torch.equal(logits(model), logits(ref)), source


def test_tokenizer_and_chat_files_are_copied(tmp_path, tok):
    model_dir = make_tiny_model(tmp_path / "m", tok)
    report = quantize_checkpoint(model_dir, tmp_path / "q")
    assert (tmp_path / "q" / "tokenizer.json").is_file() and (tmp_path / "q" / "generation_config.json").is_file()
    assert report.quantized == 14 and report.bytes_out < report.bytes_in


def test_refusals_leave_nothing_behind(tmp_path, tok):
    model_dir = make_tiny_model(tmp_path / "m", tok)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        quantize_checkpoint(model_dir, tmp_path / "exists")
    quantize_checkpoint(model_dir, tmp_path / "q")
    with pytest.raises(ConfigError, match="already a bitsandbytes 4-bit checkpoint"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model_dir / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor `model\.layers\.1\.mlp\.up_proj\.weight`: "
                                         r"element \d+ is NaN"):
        quantize_checkpoint(model_dir, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "m", "q"]
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    cfg["quantization_config"]["bnb_4bit_quant_type"] = "fp4"
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="fp4"):
        pyft.load_model(tmp_path / "q")


def test_skip_modules_stay_dense(tmp_path, tok):
    model_dir = make_tiny_model(tmp_path / "m", tok)
    assert cli(["quantize", str(model_dir), str(tmp_path / "q"), "--skip", "down_proj"]) == 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["llm_int8_skip_modules"] == ["down_proj", "lm_head"]
    model = pyft.load_model(tmp_path / "q")
    assert isinstance(model.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert isinstance(model.model.layers[0].mlp.up_proj, NF4Linear)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=torch.bfloat16)
    assert torch.equal(logits(model), logits(ref))
