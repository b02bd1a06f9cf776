"""pyft.export.vllm: adapters written by HF PEFT (the reference writer) checked against vLLM 0.33's rules."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from pyft.errors import ConfigError
from pyft.export.vllm import (
    MAX_LORA_RANKS,
    check_vllm_adapter,
    required_max_lora_rank,
    safetensors_names,
    vllm_adapter_error_message,
    vllm_serve_command,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dirs: dict[str, Path]) -> Path:
    from pyft.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("base") / "llama", tokenizer_dirs["chatml"], arch="llama")


@pytest.fixture(scope="module")
def peft_adapter(base_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Save a PEFT adapter for ``LoraConfig(**kwargs)`` on the tiny base; returns its directory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    made: dict[str, Path] = {}

    def make(name: str, **kwargs) -> Path:
        if name not in made:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            cfg = LoraConfig(task_type="CAUSAL_LM", **{"r": 8, "lora_alpha": 16, "target_modules": TARGETS, **kwargs})
            get_peft_model(model, cfg).save_pretrained(root / name)
            made[name] = root / name
        return made[name]

    return make


def edit_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of an adapter directory with adapter_config.json keys changed."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_plain_lora_is_servable(peft_adapter) -> None:
    d = peft_adapter("plain")
    assert check_vllm_adapter(d) == []
    assert required_max_lora_rank(d) == 8
    names = safetensors_names(d / "adapter_model.safetensors")
    assert len(names) == 2 * 4 * 2  # 2 layers x 4 modules x (A, B)
    assert all(n.startswith("base_model.model.model.layers.") for n in names)


def test_gaussian_init_and_rslora_are_servable(peft_adapter) -> None:
    assert check_vllm_adapter(peft_adapter("gauss", init_lora_weights="gaussian", use_rslora=True)) == []


def test_dora(peft_adapter) -> None:
    problems = check_vllm_adapter(peft_adapter("dora", use_dora=True))
    assert len(problems) == 2
    assert "DoRA" in problems[0]
    assert "lora_magnitude_vector" in problems[1] and "unsupported LoRA weight" in problems[1]


def test_modules_to_save(peft_adapter) -> None:
    problems = check_vllm_adapter(peft_adapter("mts", modules_to_save=["lm_head"]))
    assert "`modules_to_save` ['lm_head']" in problems[0]
    assert "`base_model.model.lm_head.weight`" in problems[1]
    assert len(problems) == 2


def test_classifier_modules_to_save_allowed(peft_adapter, tmp_path: Path) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "a", modules_to_save=["score"])
    assert check_vllm_adapter(d) == []


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # the tiny Llama has no biases
@pytest.mark.filterwarnings("ignore:Adapter 'default'")  # PEFT flags its own 1-D lora_B.bias
def test_biases(peft_adapter) -> None:
    problems = check_vllm_adapter(peft_adapter("lora_bias", lora_bias=True))
    assert len(problems) == 2 and "`lora_bias: true`" in problems[0] and "lora_B.bias" in problems[1]


def test_bias_all_config(peft_adapter, tmp_path: Path) -> None:
    # The tiny Llama has no biases, so PEFT saves no bias tensors: only the config is refused.
    d = edit_config(peft_adapter("plain"), tmp_path / "a", bias="lora_only")
    assert check_vllm_adapter(d) == [
        "`bias: 'lora_only'`: vLLM needs `none` (trained base biases are not LoRA weights)"]


def test_base_mutating_init(peft_adapter) -> None:
    problems = check_vllm_adapter(peft_adapter("pissa", init_lora_weights="pissa_niter_2"))
    assert len(problems) == 1 and "`init_lora_weights: 'pissa_niter_2'` changes the base weights" in problems[0]


@pytest.mark.parametrize(("changes", "needle"), [
    ({"layer_replication": [[0, 2], [1, 2]]}, "`layer_replication`"),
    ({"alora_invocation_tokens": [5, 6]}, "aLoRA"),
    ({"use_qalora": True}, "QA-LoRA"),
    ({"use_bdlora": {"block": 2}}, "BD-LoRA"),
])
def test_other_refusals(peft_adapter, tmp_path: Path, changes: dict, needle: str) -> None:
    problems = check_vllm_adapter(edit_config(peft_adapter("plain"), tmp_path / "a", **changes))
    assert len(problems) == 1 and needle in problems[0]


def test_missing_required_keys(peft_adapter, tmp_path: Path) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "a")
    cfg = json.loads((d / "adapter_config.json").read_text())
    del cfg["target_modules"], cfg["lora_alpha"]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    assert check_vllm_adapter(d) == ["adapter_config.json lacks `lora_alpha`, `target_modules` (vLLM requires them)"]


def test_not_lora_and_not_an_adapter(peft_adapter, tmp_path: Path) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "a", peft_type="IA3")
    assert check_vllm_adapter(d) == [("`peft_type` is 'IA3': vLLM serves LoRA adapters only (an IA3 adapter merges "
                                      "into the base weights: pass --merge)")]
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        check_vllm_adapter(tmp_path)
    (d / "adapter_model.safetensors").unlink()
    d2 = edit_config(d, tmp_path / "b", peft_type="LORA")
    assert check_vllm_adapter(d2) == ["no adapter_model.safetensors (or .bin/.pt) in the adapter directory"]


@pytest.mark.parametrize(("r", "pattern", "expected"), [
    (1, {}, 1), (2, {}, 8), (8, {}, 8), (16, {}, 16), (17, {}, 32), (64, {}, 64), (200, {}, 256),
    (300, {}, 320), (321, {}, 512), (512, {}, 512), (8, {"q_proj": 40}, 64), (8, {"q_proj": 300, "k_proj": 4}, 320),
])
def test_required_max_lora_rank(peft_adapter, tmp_path: Path, r: int, pattern: dict, expected: int) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "a", r=r, rank_pattern=pattern)
    assert required_max_lora_rank(d) == expected
    assert expected in MAX_LORA_RANKS


def test_rank_above_512(peft_adapter, tmp_path: Path) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "a", r=8, rank_pattern={"v_proj": 1024})
    assert check_vllm_adapter(d) == ["rank 1024 (max of `r` and `rank_pattern`) is above vLLM's limit of 512"]
    with pytest.raises(ConfigError, match="--merge"):
        required_max_lora_rank(d)


def test_real_rank_pattern_from_peft(peft_adapter) -> None:
    d = peft_adapter("pattern", rank_pattern={"q_proj": 40})
    assert check_vllm_adapter(d) == []
    assert required_max_lora_rank(d) == 64


# --- commands and messages -----------------------------------------------------------------------------


def test_serve_command_base_only(base_dir: Path) -> None:
    assert vllm_serve_command("meta-llama/Llama-3.1-8B-Instruct") == "vllm serve meta-llama/Llama-3.1-8B-Instruct"
    assert vllm_serve_command(str(base_dir), served_name="tiny model") == (
        f"vllm serve {base_dir.absolute()} \\\n  --served-model-name 'tiny model'")


def test_serve_command_with_adapter(peft_adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "my adapter", r=64)
    monkeypatch.chdir(tmp_path)
    cmd = vllm_serve_command("org/base", adapter_dir="my adapter")
    assert cmd == ("vllm serve org/base \\\n"
                   "  --enable-lora --max-lora-rank 64 \\\n"
                   f"  --lora-modules 'my adapter={d}'")
    assert shlex.split(cmd.replace("\\\n", "")) == [
        "vllm", "serve", "org/base", "--enable-lora", "--max-lora-rank", "64", "--lora-modules", f"my adapter={d}"]
    # vLLM's default rank (16) is left implicit; a larger explicit one is kept
    small = edit_config(d, tmp_path / "small", r=16)
    assert vllm_serve_command("org/base", adapter_dir=small, adapter_name="sql") == (
        f"vllm serve org/base \\\n  --enable-lora \\\n  --lora-modules sql={small}")
    assert "--max-lora-rank 128" in vllm_serve_command("org/base", adapter_dir=small, max_lora_rank=128)


def test_serve_command_rejects_bad_ranks_and_names(peft_adapter, tmp_path: Path) -> None:
    d = edit_config(peft_adapter("plain"), tmp_path / "a", r=64)
    with pytest.raises(ConfigError, match="vLLM accepts 1, 8, 16"):
        vllm_serve_command("m", adapter_dir=d, max_lora_rank=48)
    with pytest.raises(ConfigError, match="below the adapter's rank"):
        vllm_serve_command("m", adapter_dir=d, max_lora_rank=32)
    with pytest.raises(ConfigError, match="without '='"):
        vllm_serve_command("m", adapter_dir=d, adapter_name="a=b")


def test_error_message_suggests_merge(peft_adapter) -> None:
    d = peft_adapter("dora", use_dora=True)
    msg = vllm_adapter_error_message(check_vllm_adapter(d), d)
    lines = msg.splitlines()
    assert lines[0] == f"vLLM 0.33 cannot serve the LoRA adapter in {d}:"
    assert lines[1].startswith("  - DoRA") and lines[2].startswith("  - tensors")
    assert "--merge" in lines[-1]
