"""``pyft quantize`` and ``pyft.load_model(quantize="nf4")`` against transformers + bitsandbytes
quantizing the same model themselves (CPU backend): identical tensors, config and logits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import pyft
from pyft.cli.main import main as cli
from pyft.errors import ConfigError, DataError
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


# ---------------------------------------------------------------------------------------------
# Hostile inputs: refused naming the file (and the tensor or field), exit 1, nothing written.


def _split(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path, header, data, raw_header=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _overlap(d):
    """Two same-sized tensors on the same bytes: a valid-looking file, a wrong model."""
    header, data = _split(d / "model.safetensors")
    header["model.layers.0.self_attn.v_proj.weight"]["data_offsets"] = \
        header["model.layers.0.self_attn.k_proj.weight"]["data_offsets"]
    _join(d / "model.safetensors", header, data)
    return d / "model.safetensors", r"invalid offset for tensor `model\.layers\.0\.self_attn\.[kv]_proj\.weight`"


def _negative_dim(d):
    header, data = _split(d / "model.safetensors")
    header["model.norm.weight"]["shape"] = [-1]
    _join(d / "model.safetensors", header, data)
    return d / "model.safetensors", r"tensor `model\.norm\.weight` has shape \[-1\]"


def _size_mismatch(d):
    header, data = _split(d / "model.safetensors")
    header["model.layers.1.mlp.up_proj.weight"]["shape"] = [177, 64]
    _join(d / "model.safetensors", header, data)
    return d / "model.safetensors", (r"tensor `model\.layers\.1\.mlp\.up_proj\.weight`: F32\[177, 64\] needs 45312 "
                                     r"bytes but data_offsets \[\d+, \d+\] hold 45056")


def _shape_vs_config(d):
    """A valid file whose tensor does not fit the model config.json describes."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(d / "model.safetensors"))
    weights["model.layers.0.self_attn.q_proj.weight"] = weights["model.layers.0.self_attn.q_proj.weight"][:32].clone()
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d / "model.safetensors", (r"tensor `model\.layers\.0\.self_attn\.q_proj\.weight` has shape \[32, 64\], "
                                     r"but config\.json makes it \[64, 64\]")


def _non_utf8_header(d):
    header, data = _split(d / "model.safetensors")
    _join(d / "model.safetensors", None, data, json.dumps(header).encode().replace(b"__metadata__", b"__meta\xffdata_"))
    return d / "model.safetensors", "invalid UTF-8 in header"


def _hidden_size_null(d):
    config = json.loads((d / "config.json").read_text())
    config["hidden_size"] = None
    (d / "config.json").write_text(json.dumps(config))
    return d / "config.json", "field `hidden_size` must be a positive integer, got null"


def _config_array(d):
    (d / "config.json").write_text("[1, 2]")
    return d / "config.json", "expected a JSON object, got an array"


HOSTILE = {f.__name__[1:]: f for f in (_overlap, _negative_dim, _size_mismatch, _shape_vs_config, _non_utf8_header,
                                        _hidden_size_null, _config_array)}


@pytest.fixture(scope="module")
def tiny_model(tok, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", tok)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_inputs_are_refused_naming_the_file(tiny_model, tmp_path, capsys, case):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model, model_dir)
    culprit, needle = HOSTILE[case](model_dir)
    assert cli(["quantize", str(model_dir), str(tmp_path / "q")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyft: error: {culprit}: ") and re.search(needle, err), err
    with pytest.raises(DataError, match=needle) as info:
        quantize_checkpoint(model_dir, tmp_path / "q")
    assert info.value.file == str(culprit)
    # The NF4 loader reads through the same checks.
    with pytest.raises(DataError, match=needle):
        pyft.load_model(model_dir, quantize="nf4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no output, no staging left


_GUARDED = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            "from pyft.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("special, kind", [("config.json", "fifo"), ("config.json", "zero"),
                                           ("model.safetensors", "fifo"), ("model.safetensors", "zero")])
def test_special_files_are_refused_without_blocking(tiny_model, tmp_path, special, kind):
    """A FIFO would block the reader for ever, a link to /dev/zero read until memory runs out: both
    are refused before they are read. Run in a subprocess with a timeout and an address-space cap
    (6 GiB: importing torch reserves about 3.2 GB of it), so the old behaviour fails the test instead
    of hanging it or exhausting the machine."""
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model, model_dir)
    (model_dir / special).unlink()
    if kind == "fifo":
        os.mkfifo(model_dir / special)
    else:
        (model_dir / special).symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-c", _GUARDED.format(limit=6 * 2**30), "quantize", str(model_dir),
                        str(tmp_path / "q")], check=False, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert r.returncode == 1 and f"pyft: error: {model_dir / special}: is {what}, not a regular file" in r.stderr, \
        r.stderr[-2000:]
    assert not (tmp_path / "q").exists()
