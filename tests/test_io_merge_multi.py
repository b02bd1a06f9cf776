"""Embedding LoRA and multi-adapter merges (linear, ties, dare_*, svd) against PEFT as the reference.

References: PEFT ``merge_and_unload`` (embedding LoRA), ``get_delta_weight`` per adapter combined with
``peft.utils.merge_utils`` (linear, ties), ``add_weighted_adapter(combination_type="svd")`` (svd).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

import pyft
from pyft.errors import ConfigError, DataError
from pyft.io import merge
from pyft.testing import make_tiny_model

ATTN = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def bases(tokenizer_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-multi-bases")
    out = {}
    for arch in ("llama", "qwen2"):
        out[arch] = make_tiny_model(root / arch, tokenizer_dirs["chatml"], arch=arch)
        m = pyft.load_model(out[arch], dtype="float32").to(torch.bfloat16)
        m.save_pretrained(root / f"{arch}-bf16")
        out[f"{arch}-bf16"] = root / f"{arch}-bf16"
    return out


def _peft_adapter(base_dir, out_dir, seed, targets, r=4, alpha=8, **extra):
    """A PEFT adapter with random B (and embedding A, which PEFT initialises to zero)."""
    from peft import LoraConfig, get_peft_model

    model = pyft.load_model(base_dir, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, **extra))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name or "lora_embedding" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        pm.save_pretrained(out_dir)
    return out_dir


def _peft_model(base_dir, adapters):
    """The base with every adapter loaded under its own name (``a0``, ``a1``, ...)."""
    from peft import PeftModel

    base = pyft.load_model(base_dir, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(base, adapters[0], adapter_name="a0")
        for i, a in enumerate(adapters[1:], 1):
            pm.load_adapter(a, adapter_name=f"a{i}")
    return pm


def _reference_deltas(base_dir, adapters):
    """``{weight name: [ΔW_i or zeros per adapter]}`` from PEFT's ``get_delta_weight``."""
    from peft.tuners.lora import LoraLayer

    pm = _peft_model(base_dir, adapters)
    out = {}
    for name, mod in pm.base_model.model.named_modules():
        if isinstance(mod, LoraLayer):
            w = mod.get_base_layer().weight
            names = [f"a{i}" for i in range(len(adapters))]
            out[f"{name}.weight"] = [
                mod.get_delta_weight(n).detach() if (n in mod.lora_A or n in mod.lora_embedding_A)
                else torch.zeros_like(w) for n in names]
    return out


def _ulp(x: torch.Tensor) -> torch.Tensor:
    bits = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[x.dtype]
    exp = torch.floor(torch.log2(x.float().abs().clamp_min(torch.finfo(x.dtype).tiny)))
    return torch.pow(2.0, exp - bits)


def _assert_merged(ours, base, ref_deltas, rel):
    """``ours == base + Δ`` up to one ulp of the result plus ``rel`` × max |Δ|, for every tensor."""
    assert set(ours) == set(base)
    for k, v in ours.items():
        expected = base[k] + ref_deltas[k] if k in ref_deltas else base[k]
        bound = _ulp(expected) + (rel * ref_deltas[k].abs().max() if k in ref_deltas else 0)
        assert ((v - expected).abs() <= bound).all(), (k, (v - expected).abs().max())


def _load(d):
    return load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("precision", ["", "-bf16"])
def test_embedding_lora_matches_peft_within_one_ulp(arch, precision, bases, tmp_path):
    from peft import PeftModel

    base = bases[arch + precision]
    _peft_adapter(bases[arch], tmp_path / "adapter", 0, ["q_proj", "v_proj", "embed_tokens"])
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in keys
    report = merge(base, tmp_path / "adapter", tmp_path / "merged")
    assert report["merged_modules"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(pyft.load_model(base), tmp_path / "adapter")
        embed = pm.base_model.model.model.embed_tokens
        exact = (embed.get_base_layer().weight.float() + embed.get_delta_weight("default").float()).detach()
        ref = dict(pm.merge_and_unload().state_dict())
    tied = json.loads((base / "config.json").read_text())["tie_word_embeddings"]
    if tied:  # the merged embedding is also the output layer, as in PEFT's merge
        assert torch.equal(ref["lm_head.weight"], ref["model.embed_tokens.weight"])
    if precision:
        # PEFT's Embedding.merge rounds the delta to bf16 before adding it (two roundings); pyft rounds
        # W + ΔW once, so its reference is the float32 sum rounded once.
        ref["model.embed_tokens.weight"] = exact.to(torch.bfloat16)
    ours = _load(tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] == tied
    assert set(ours) == {k for k in ref if not (tied and k == "lm_head.weight")}
    for k, v in ours.items():
        assert v.dtype == ref[k].dtype, k
        assert ((v.float() - ref[k].float()).abs() <= _ulp(ref[k])).all(), (k, (v.float() - ref[k].float()).abs().max())
    assert not torch.equal(ours["model.embed_tokens.weight"], _load(base)["model.embed_tokens.weight"])


@pytest.fixture(scope="module")
def three(bases, tmp_path_factory):
    """Three adapters on the llama base with overlapping targets, ranks 4/8/2 (one rsLoRA, one on embeddings)."""
    root = tmp_path_factory.mktemp("three-adapters")
    return [
        _peft_adapter(bases["llama"], root / "a", 1, ATTN),
        _peft_adapter(bases["llama"], root / "b", 2, ["q_proj", "k_proj", "down_proj", "embed_tokens"], r=8,
                      alpha=8, use_rslora=True),
        _peft_adapter(bases["llama"], root / "c", 3, ["v_proj", "o_proj"], r=2, alpha=4),
    ]


@pytest.mark.parametrize("method,density", [("linear", None), ("ties", 0.5), ("ties", 0.2), ("ties", 1.0)])
def test_combination_matches_peft_merge_utils(method, density, bases, three, tmp_path):
    from peft.utils import merge_utils

    weights = [0.6, 0.4, -0.3]
    report = merge(bases["llama"], three, tmp_path / "m", weights=weights, method=method, density=density)
    assert report["merged_modules"] == 2 * 5 + 1
    w = torch.tensor(weights)
    deltas = _reference_deltas(bases["llama"], three)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that density 1 prunes nothing
        ref = {k: merge_utils.task_arithmetic(d, w) if method == "linear" else merge_utils.ties(d, w, density)
               for k, d in deltas.items()}
    _assert_merged(_load(tmp_path / "m"), _load(bases["llama"]), ref, 1e-6)


def test_dare_density_one_equals_linear_and_ties(bases, three, tmp_path):
    kw = dict(weights=[0.6, 0.4, 0.3])
    for method, plain in (("dare_linear", "linear"), ("dare_ties", "ties")):
        merge(bases["llama"], three, tmp_path / method, method=method, density=1.0, seed=5, **kw)
        merge(bases["llama"], three, tmp_path / plain, method=plain, density=1.0 if plain == "ties" else None, **kw)
        a, b = _load(tmp_path / method), _load(tmp_path / plain)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_dare_drops_at_density_rescales_and_is_seeded(bases, three, tmp_path):
    p = 0.3
    for name, seed in (("s1", 1), ("s1b", 1), ("s2", 2)):
        merge(bases["llama"], three[:1], tmp_path / name, method="dare_linear", density=p, seed=seed)
    a = _load(tmp_path / "s1")
    assert all(torch.equal(a[k], v) for k, v in _load(tmp_path / "s1b").items())
    assert any(not torch.equal(a[k], v) for k, v in _load(tmp_path / "s2").items())
    base = _load(bases["llama"])
    kept = total = 0
    for k, d in _reference_deltas(bases["llama"], three[:1]).items():
        got = a[k] - base[k]
        keep = got != 0
        kept, total = kept + int(keep.sum()), total + got.numel()
        expected = base[k] + d[0] / p
        bound = _ulp(expected) + 1e-6 * (d[0] / p).abs().max()
        assert ((a[k] - expected).abs()[keep] <= bound[keep]).all(), k
    assert abs(kept / total - p) < 0.02, kept / total


def test_svd_matches_peft_add_weighted_adapter(bases, three, tmp_path):
    weights = [0.6, 0.4, 0.8]
    merge(bases["llama"], three, tmp_path / "svd", weights=weights, method="svd")
    pm = _peft_model(bases["llama"], three)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.add_weighted_adapter(["a0", "a1", "a2"], weights, "m", combination_type="svd")
        ref = pm.merge_and_unload(adapter_names=["m"]).state_dict()
    base, ours = _load(bases["llama"]), _load(tmp_path / "svd")
    for k, v in ours.items():
        delta = (ref[k] - base[k]).abs().max()
        assert (v - ref[k]).abs().max() <= 1e-4 * delta + _ulp(ref[k]).max(), k
    # A rank covering every adapter's rank (4 + 8 + 2) reproduces linear.
    merge(bases["llama"], three, tmp_path / "full", weights=weights, method="svd", svd_rank=14)
    merge(bases["llama"], three, tmp_path / "lin", weights=weights)
    lin, full = _load(tmp_path / "lin"), _load(tmp_path / "full")
    for k, v in full.items():
        delta = (lin[k] - base[k]).abs().max()
        assert (v - lin[k]).abs().max() <= 1e-5 * delta + _ulp(lin[k]).max(), k


def test_bad_multi_inputs_fail_clearly_and_write_nothing(bases, three, tokenizer_dirs, tmp_path):
    out = tmp_path / "out"
    cases = [
        (ConfigError, r"2 weights for 3 adapters", dict(weights=[0.5, 0.5])),
        (ConfigError, r"unknown merge method `cat`", dict(method="cat")),
        (ConfigError, r"density 0 is not in \(0, 1\]", dict(method="ties", density=0.0)),
        (ConfigError, r"density 1.5 is not in \(0, 1\]", dict(method="dare_ties", density=1.5)),
        (ConfigError, r"method `ties` needs a density", dict(method="ties")),
        (ConfigError, r"extra file `\.\./x`", dict(extra_files={"../x": b""})),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg):
            merge(bases["llama"], three, out, **kw)
    other = make_tiny_model(tmp_path / "other", tokenizer_dirs["chatml"], arch="llama", hidden_size=32,
                            num_attention_heads=2, num_key_value_heads=2)
    wrong = _peft_adapter(other, tmp_path / "wrong", 0, ATTN)
    with pytest.raises(DataError, match=r"the adapter needs shape \[\d+, \d+\] but the base model has \[\d+, \d+\]: "
                                        r"the adapter was trained on a different base model"):
        merge(bases["llama"], [three[0], wrong], out, method="ties", density=0.5)
    dora = _peft_adapter(bases["llama"], tmp_path / "dora", 0, ATTN, use_dora=True)
    with pytest.raises(DataError, match="DoRA adapters cannot be combined"):
        merge(bases["llama"], [three[0], dora], out)
    saves = [_peft_adapter(bases["llama"], tmp_path / f"s{i}", i, ATTN, modules_to_save=["lm_head"]) for i in (0, 1)]
    with pytest.raises(DataError, match=r"replace whole modules \(modules_to_save\); only one adapter may"):
        merge(bases["llama"], saves, out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # One adapter with modules_to_save among several is fine: its copy is taken as is.
    report = merge(bases["llama"], [saves[0], three[1]], out, weights=[0.5, 0.5])
    assert report["replaced"] == 1


def test_extra_files_override_copied_files(bases, three, tmp_path):
    gen = b'{"eos_token_id": [1, 2]}\n'
    merge(bases["llama"], three[0], tmp_path / "m",
          extra_files={"generation_config.json": gen, "chat_template.jinja": b"{{ messages }}"})
    assert (tmp_path / "m" / "generation_config.json").read_bytes() == gen
    assert (tmp_path / "m" / "chat_template.jinja").read_bytes() == b"{{ messages }}"
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == (bases["llama"] / "tokenizer.json").read_bytes()


def test_multi_adapter_command_line(bases, three, tmp_path):
    cmd = [sys.executable, "-m", "pyft.cli.merge", str(bases["llama"]), "--adapter", str(three[0]), "--adapter",
           str(three[1]), "--weights", "0.6,0.4", "--method", "ties", "--density", "0.5", str(tmp_path / "cli")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "2 adapters (ties)" in r.stdout
    merge(bases["llama"], three[:2], tmp_path / "api", weights=[0.6, 0.4], method="ties", density=0.5)
    a, b = _load(tmp_path / "cli"), _load(tmp_path / "api")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The same flags on `pyft merge`, with a positional adapter first; a bad weights count fails clearly.
    from pyft.cli.main import main

    assert main(["merge", str(bases["llama"]), str(three[0]), "--adapter", str(three[1]), "--method", "dare_ties",
                 "--density", "0.5", "--seed", "3", str(tmp_path / "main")]) == 0
    r = subprocess.run(cmd[:-1] + ["--weights", "1", str(tmp_path / "bad")], capture_output=True, text=True)
    assert r.returncode == 1 and "1 weights for 2 adapters" in r.stderr and not (tmp_path / "bad").exists()
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", "--help"], capture_output=True, text=True)
    assert all(m in r.stdout for m in ("dare_linear", "dare_ties", "svd", "--svd-rank", "--seed", "default 1.0 each"))
