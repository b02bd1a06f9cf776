"""pyft-merge / pyft-export of PEFT (IA)³ and OFT adapters against PEFT's merge_and_unload and
llama.cpp's converter, and the refusals for adapters that have no weights to merge (prompt tuning,
P-tuning, prefix tuning, bottleneck adapters)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pyft
from pyft.cli.export import main as export_main
from pyft.cli.merge import main as merge_main
from pyft.errors import ConfigError
from pyft.testing import make_tiny_model, make_tokenizer

#: Adapters of each kind, as PEFT configs (randomly initialised: init_*_weights=False). Feedforward
#: modules are listed by suffix (PEFT's `endswith` rule) or by a regex; OFT covers the exact Cayley
#: transform and the Cayley–Neumann series (3 and 5 terms), `r` and `oft_block_size`, a block size
#: PEFT adjusts per layer (12 → 8 for in=64, → 11 for in=176), block_share, COFT and an embedding.
IA3 = {
    "ia3": {"target_modules": ["k_proj", "v_proj", "down_proj", "up_proj"],
            "feedforward_modules": ["down_proj", "up_proj"]},
    "ia3-regex": {"target_modules": r".*\.(q_proj|o_proj|gate_proj)", "feedforward_modules": r".*\.o_proj"},
}
OFT = {
    "oft": {"oft_block_size": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "oft-exact-r": {"r": 4, "oft_block_size": 0, "use_cayley_neumann": False,
                    "target_modules": ["k_proj", "up_proj", "down_proj"]},
    "oft-share-coft": {"oft_block_size": 16, "block_share": True, "coft": True, "eps": 0.1,
                       "target_modules": ["q_proj", "o_proj", "gate_proj"]},
    "oft-adjust-embed": {"oft_block_size": 12, "num_cayley_neumann_terms": 3,
                         "target_modules": ["embed_tokens", "o_proj", "down_proj"]},
}
VARIANTS = {**IA3, **OFT}

# PEFT's notices for what these adapters do on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid `oft_block_size`:UserWarning"),
              pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning")]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny Llama (untied, GQA) and Qwen2 (tied, q/k/v biases), in float32 and bfloat16, with the
    tokenizers llama.cpp's converter reads."""
    root = tmp_path_factory.mktemp("ia3-oft-bases")
    tok = {s: make_tokenizer(root / f"tok-{s}", style=s, vocab_size=512) for s in ("llama3", "chatml")}
    out = {}
    for arch, style, kw in (("llama", "llama3", {"num_key_value_heads": 2}), ("qwen2", "chatml", {})):
        out[arch] = make_tiny_model(root / arch, tok[style], arch=arch, **kw)
        out[f"{arch}-bf16"] = make_tiny_model(root / f"{arch}-bf16", tok[style], arch=arch, dtype="bfloat16", **kw)
        for d in (out[arch], out[f"{arch}-bf16"]):
            # Random (not zero-initialised) biases, so IA3's scaling of Qwen2's k/v biases shows.
            tensors = load_file(str(d / "model.safetensors"))
            g = torch.Generator().manual_seed(1)
            for k, v in tensors.items():
                if k.endswith(".bias"):
                    tensors[k] = (torch.randn(v.shape, generator=g) * 0.5).to(v.dtype)
            save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return out


def peft_adapter(base_dir: Path, out_dir: Path, variant: str, seed: int = 0) -> Path:
    """A PEFT adapter of `variant` with random weights (PEFT's own non-default init)."""
    from peft import IA3Config, OFTConfig, get_peft_model

    torch.manual_seed(seed)
    model = pyft.load_model(base_dir, dtype="float32")
    if variant in IA3:
        config = IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False, **IA3[variant])
    else:
        config = OFTConfig(task_type="CAUSAL_LM", init_weights=False, **OFT[variant])
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


def peft_merged(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    merged = PeftModel.from_pretrained(pyft.load_model(base_dir), adapter_dir).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def ulp(x: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each element of `x` in its own dtype."""
    bits = {torch.float32: 23, torch.bfloat16: 7}[x.dtype]
    exp = torch.floor(torch.log2(x.float().abs().clamp_min(torch.finfo(x.dtype).tiny)))
    return torch.pow(2.0, exp - bits)


def merge_cli(*args) -> int:
    return merge_main([str(a) for a in args])


CASES = [(v, "llama") for v in VARIANTS] + [("ia3", "qwen2"), ("oft", "qwen2"), ("oft-exact-r", "qwen2")]


@pytest.mark.parametrize("precision", ["", "-bf16"])
@pytest.mark.parametrize(("variant", "arch"), CASES)
def test_merge_matches_peft_merge_and_unload(variant, arch, precision, bases, tmp_path, capsys):
    base = bases[arch + precision]
    adapter = peft_adapter(bases[arch], tmp_path / "adapter", variant)
    assert merge_cli(base, adapter, tmp_path / "merged") == 0
    ours = load_file(str(tmp_path / "merged" / "model.safetensors"))
    ref = peft_merged(base, adapter)
    assert set(ours) == {k for k in ref if not (arch == "qwen2" and k == "lm_head.weight")}  # Qwen2: tied
    plain = load_file(str(base / "model.safetensors"))
    changed = {k for k in ours if not torch.equal(ours[k], plain[k])}
    adapted = {k.removeprefix("base_model.model.").rsplit(".", 2 if variant in OFT else 1)[0]
               for k in load_file(str(adapter / "adapter_model.safetensors")) if "base_layer" not in k}
    weights = {f"{m}.weight" for m in adapted}
    biases = {f"{m}.bias" for m in adapted if f"{m}.bias" in plain}  # (no feedforward module has a bias here)
    assert changed == weights | (biases if variant in IA3 else set()), "exactly the adapted weights change"
    if arch == "qwen2" and variant == "ia3":
        assert biases, "Qwen2's k/v biases are scaled with their rows"
    assert f"merged {len(weights)} modules" in capsys.readouterr().out
    worst = 0.0
    for k, v in ours.items():
        r = ref[k]
        assert v.dtype == r.dtype, k
        diff = (v.float() - r.float()).abs()
        if variant in IA3:
            # torch.mul(W, l) in float32, rounded once: pyft does the same products, bit for bit.
            assert torch.equal(v, r), (k, diff.max())
        else:
            # Each element is a ≤ 44-term float32 dot product of a weight row block with a column of R;
            # pyft rounds R from float64 and sums with FMAs in order, torch rounds R computed in float32
            # and sums in its BLAS order. float32: measured ≤ 4.1e-7 of the row's largest value.
            # bfloat16 (rounded once from those float32 sums): within one bfloat16 ulp of PEFT's value,
            # except where the sum cancels to nearly 0 (|value| ≪ the row's values) and the float32
            # difference itself (≤ 2e-6 of the row's largest value) exceeds that tiny value's ulp.
            scale = (r.abs().amax(dim=-1, keepdim=True) if r.ndim == 2 else r.abs().max()).float().clamp_min(1e-30)
            rel = (diff / scale).max().item()
            worst = max(worst, rel)
            if precision:
                assert (diff <= torch.maximum(ulp(r), 2e-6 * scale)).all(), (k, diff.max())
                assert ((diff > ulp(r)) & (r.float().abs() > scale * 2**-8)).sum() == 0, k
            else:
                assert rel <= 2e-6, (k, rel)
    print(f"{variant} {arch}{precision}: max relative difference {worst:.2e}")


def test_merged_oft_model_gives_the_adapter_logits(bases, tmp_path):
    """transformers on the merged directory equals PEFT's forward with the unmerged adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = peft_adapter(bases["llama"], tmp_path / "adapter", "oft-adjust-embed")
    assert merge_cli(bases["llama"], adapter, tmp_path / "merged") == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    peft_model = PeftModel.from_pretrained(pyft.load_model(bases["llama"]), adapter).eval()
    base = pyft.load_model(bases["llama"]).eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, base(input_ids=ids).logits
    assert (a - b).abs().max() / b.abs().max() <= 1e-5
    assert (b - c).abs().max() / c.abs().max() > 1e-2, "the adapter must change the logits"


def test_pyft_merge_command_and_bf16_output(bases, tmp_path):
    adapter = peft_adapter(bases["qwen2"], tmp_path / "adapter", "ia3")
    r = subprocess.run([sys.executable, "-m", "pyft.cli.merge", str(bases["qwen2"]), str(adapter), str(tmp_path / "m"),
                        "--dtype", "bf16"], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ours = load_file(str(tmp_path / "m" / "model.safetensors"))
    ref = peft_merged(bases["qwen2"], adapter)
    for k, v in ours.items():
        # float32 merge, then one rounding to bfloat16.
        assert torch.equal(v, ref[k].to(torch.bfloat16)), k


# --- GGUF -------------------------------------------------------------------------------------------------


def gguf_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    import gguf  # gguf-py (test extra): an independent GGUF reader

    r = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), bytes(t.data.tobytes())) for t in r.tensors}


@pytest.mark.parametrize(("variant", "arch"), [("ia3", "llama"), ("ia3", "qwen2"), ("oft-adjust-embed", "llama"),
                                               ("oft-exact-r", "qwen2")])
def test_gguf_of_merged_model_equals_llama_cpp_converter(variant, arch, bases, tmp_path):
    """pyft-merge then pyft-export: tensor bytes equal llama.cpp's converter on the merged directory,
    and the export with the adapter merged on the fly equals both."""
    from llamacpp import convert_hf_to_gguf

    from pyft.export import export_gguf

    adapter = peft_adapter(bases[arch], tmp_path / "adapter", variant)
    assert merge_cli(bases[arch], adapter, tmp_path / "merged") == 0
    qtype = "f16"
    report = export_gguf(tmp_path / "merged", tmp_path / "o.gguf", qtype=qtype)
    # The test tokenizers are unknown to the converter's hash table: force the name pyft chose.
    ref = gguf_tensors(convert_hf_to_gguf(tmp_path / "merged", tmp_path / "ref.gguf", qtype, pre=report.pre))
    assert gguf_tensors(report.path) == ref
    assert export_main([str(bases[arch]), "--adapter", str(adapter), "--to", "gguf", "--qtype", qtype,
                        "--out", str(tmp_path / "fly.gguf")]) == 0
    assert gguf_tensors(tmp_path / "fly.gguf") == ref
    base = gguf_tensors(export_gguf(bases[arch], tmp_path / "base.gguf", qtype=qtype).path)
    assert sum(base[n] != ref[n] for n in ref) >= 4, "the adapter must change the weights"


# --- what does not merge, and targets that serve LoRA only ------------------------------------------------


def _unmergeable(kind: str, base_dir: Path, out_dir: Path) -> Path:
    """An adapter directory of a kind that cannot be merged: PEFT's prompt/prefix/P-tuning, a pyft
    bottleneck adapter, an AdapterHub bottleneck adapter."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    configs = {"PROMPT_TUNING": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
               "P_TUNING": lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                       encoder_hidden_size=16),
               "PREFIX_TUNING": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)}
    if kind in configs:
        get_peft_model(pyft.load_model(base_dir, dtype="float32"), configs[kind]()).save_pretrained(out_dir)
    else:
        out_dir.mkdir()
        cfg = ({"peft_type": "PYFT_BOTTLENECK", "base_model_name_or_path": str(base_dir), "reduction_factor": 16}
               if kind == "PYFT_BOTTLENECK" else
               {"config": {"architecture": "houlsby", "reduction_factor": 16}, "name": "a",
                "version": "adapters.1.2.0"})
        (out_dir / "adapter_config.json").write_text(json.dumps(cfg))
        (out_dir / "adapter_model.safetensors").write_bytes(b"")
    return out_dir


REASONS = {"PROMPT_TUNING": "virtual-token embeddings", "P_TUNING": "prompt encoder",
           "PREFIX_TUNING": "key/value vectors", "PYFT_BOTTLENECK": "up-projection", "ADAPTERHUB": "up-projection"}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_unmergeable_adapters_are_refused_with_why_and_what_works(kind, bases, tmp_path, capsys):
    adapter = _unmergeable(kind, bases["llama"], tmp_path / "adapter")
    commands = {
        "merge": lambda out: merge_cli(bases["llama"], adapter, out),
        "gguf": lambda out: export_main([str(bases["llama"]), "--adapter", str(adapter), "--to", "gguf",
                                         "--out", str(out)]),
        "gguf-lora": lambda out: export_main([str(adapter), "--base", str(bases["llama"]), "--to", "gguf-lora",
                                              "--out", str(out)]),
        "ollama": lambda out: export_main([str(bases["llama"]), "--adapter", str(adapter), "--to", "ollama",
                                           "--out", str(out)]),
        "ollama-merge": lambda out: export_main([str(bases["llama"]), "--adapter", str(adapter), "--to", "ollama",
                                                 "--merge", "--out", str(out)]),
        "vllm": lambda out: export_main([str(adapter), "--base", str(bases["llama"]), "--to", "vllm",
                                         "--out", str(out)]),
        "vllm-merge": lambda out: export_main([str(bases["llama"]), "--adapter", str(adapter), "--to", "vllm",
                                               "--merge", "--out", str(out)]),
    }
    for name, run in commands.items():
        out = tmp_path / f"out-{name}"
        assert run(out) == 1, name
        err = capsys.readouterr().err
        what = "bottleneck (AdapterHub)" if kind == "ADAPTERHUB" else kind
        assert f"a {what} adapter cannot be merged" in err and REASONS[kind] in err, (name, err)
        assert "no weight to fold it into" in err and "transformers/PEFT" in err, (name, err)
        assert "vLLM and llama.cpp/Ollama do not load" in err, (name, err)
        assert "adapter_config.json" in err, (name, err)
        assert not out.exists() and not list(tmp_path.glob(f".out-{name}*")), f"{name} left output behind"


@pytest.mark.parametrize("variant", ["ia3", "oft"])
def test_lora_only_targets_refuse_ia3_and_oft_and_point_to_merging(variant, bases, tmp_path, capsys):
    adapter = peft_adapter(bases["llama"], tmp_path / "adapter", variant)
    kind = variant.upper()
    assert export_main([str(adapter), "--base", str(bases["llama"]), "--to", "gguf-lora",
                        "--out", str(tmp_path / "a.gguf")]) == 1
    err = capsys.readouterr().err
    assert f"an {kind} adapter has no GGUF LoRA form" in err and "--to gguf" in err, err
    assert export_main([str(bases["llama"]), "--adapter", str(adapter), "--to", "ollama",
                        "--out", str(tmp_path / "ol")]) == 1
    assert "no GGUF LoRA form" in capsys.readouterr().err and not (tmp_path / "ol").exists()
    assert export_main([str(adapter), "--base", str(bases["llama"]), "--to", "vllm", "--out", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err
    assert f"`peft_type` is '{kind}': vLLM serves LoRA adapters only" in err and "--merge" in err, err
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "v").exists()
    # What works: merged for vLLM and for Ollama.
    assert export_main([str(adapter), "--base", str(bases["llama"]), "--to", "vllm", "--merge",
                        "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "model.safetensors").is_file()
    assert export_main([str(bases["llama"]), "--adapter", str(adapter), "--to", "ollama", "--merge",
                        "--out", str(tmp_path / "ol"), "--qtype", "f16"]) == 0
    assert (tmp_path / "ol" / "model.gguf").is_file() and not (tmp_path / "ol" / "adapter.gguf").exists()


def test_bad_ia3_and_oft_adapters_are_named(bases, tmp_path, capsys):
    ia3 = peft_adapter(bases["llama"], tmp_path / "ia3", "ia3")
    oft = peft_adapter(bases["llama"], tmp_path / "oft", "oft")
    # Another base: the vector/rotation shapes do not fit, named with the tensor.
    other = make_tiny_model(tmp_path / "other", bases["llama"], arch="llama", hidden_size=32, num_attention_heads=2,
                            num_key_value_heads=2)
    assert merge_cli(other, ia3, tmp_path / "o1") == 1
    err = capsys.readouterr().err
    assert "ia3_l` has shape" in err and "trained on a different base model" in err, err
    assert merge_cli(other, oft, tmp_path / "o2") == 1
    err = capsys.readouterr().err
    assert "oft_R.weight` has shape" in err and "blocks of size" in err, err
    # Weighted or combined: refused (they multiply the weights).
    assert merge_cli(bases["llama"], "--adapter", ia3, "--adapter", oft, tmp_path / "o3") == 1
    assert "merge alone" in capsys.readouterr().err
    assert merge_cli(bases["llama"], oft, "--weights", "0.5", tmp_path / "o4") == 1
    assert "OFT adapters merge alone" in capsys.readouterr().err
    # An OFT config from before PEFT 0.14 (no oft_block_size).
    cfg = json.loads((oft / "adapter_config.json").read_text())
    del cfg["oft_block_size"]
    (oft / "adapter_config.json").write_text(json.dumps(cfg))
    assert merge_cli(bases["llama"], oft, tmp_path / "o5") == 1
    assert "PEFT < 0.14" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_check_vllm_adapter_refuses_unmergeable_kinds(bases, tmp_path):
    from pyft.export import check_vllm_adapter

    adapter = _unmergeable("PREFIX_TUNING", bases["llama"], tmp_path / "prefix")
    with pytest.raises(ConfigError, match=r"adapter_config\.json: a PREFIX_TUNING adapter cannot be merged"):
        check_vllm_adapter(adapter)
