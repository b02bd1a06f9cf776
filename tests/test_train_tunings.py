"""`pyft train` with the adapter kinds beyond LoRA, hybrids of several on disjoint modules, and staged
training (`stages:`): what trains when, what is saved, and that PEFT reads what is saved."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CONVERSATIONS, write_jsonl

import pyft.data
from pyft.errors import ConfigError
from pyft.methods import TUNING_TABLE
from pyft.peft import load_adapter
from pyft.testing import make_tiny_model
from pyft.train import build_trainer, load_config, train

IDS = torch.tensor([[5, 17, 9, 200, 31, 44, 8, 3]])


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("tunings")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="llama")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS * 3])
    pyft.data.prepare(src, model, base / "data", val_ratio=0.2, seed=0)
    return {"model": model, "data": base / "data"}


def _cfg(setup, out, **kw):
    t = {"lr": 5e-2, "max_steps": 4, "batch_size": 4, "seed": 0, "log_every": 100, "schedule": "constant",
         "precision": "fp32", **kw.pop("train", {})}
    return load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out), train=t, **kw)


def _base(setup):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float32)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_ia3_trains_saves_in_peft_format_and_peft_reads_it(setup, tmp_path):
    from peft import PeftModel

    result = train(_cfg(setup, tmp_path / "run", method="ia3", train={"max_steps": 6}))
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0], losses
    cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "IA3" and cfg["feedforward_modules"] == ["down_proj"]
    ours = _base(setup)
    load_adapter(ours, tmp_path / "run" / "adapter")
    theirs = PeftModel.from_pretrained(_base(setup), tmp_path / "run" / "adapter")
    with torch.no_grad():
        lo, lt, lb = ours(IDS).logits, theirs(IDS).logits, _base(setup)(IDS).logits
    assert _rel(lo, lt) <= 1e-6  # the same fp32 operations in the same order, up to reassociation in matmul
    assert _rel(lo, lb) > 1e-4  # the trained vectors changed the model


HYBRID = {"tuning": ["lora", "ia3"], "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "o_proj"]},
          "ia3": {"targets": ["k_proj", "v_proj", "down_proj"], "feedforward": ["down_proj"]}}


def _snapshot(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    ia3 = {n: p.detach().clone() for n, p in model.named_parameters() if "ia3_l" in n}
    assert lora and ia3
    return lora, ia3


def _changed(before, after):
    return any(not torch.equal(before[n], after[n]) for n in before)


def test_staged_hybrid_trains_each_part_only_in_its_stage(setup, tmp_path):
    cfg = _cfg(setup, tmp_path / "run", method="sft", **HYBRID,
               stages=[{"train": ["ia3"], "steps": 2}, {"train": ["lora"]}])
    trainer = build_trainer(cfg)
    lora0, ia30 = _snapshot(trainer.model)
    for _ in range(2):
        trainer.train_step()
    lora1, ia31 = _snapshot(trainer.model)
    assert _changed(ia30, ia31) and not _changed(lora0, lora1)  # stage 1: (IA)³ only
    for _ in range(2):
        trainer.train_step()
    lora2, ia32 = _snapshot(trainer.model)
    assert _changed(lora1, lora2) and not _changed(ia31, ia32)  # stage 2: LoRA only


def test_hybrid_is_saved_per_part_and_loads_whole_in_pyft_and_per_part_in_peft(setup, tmp_path):
    from peft import PeftModel

    cfg = _cfg(setup, tmp_path / "run", method="sft", **HYBRID, stages=[{"train": ["lora"], "steps": 2},
                                                                        {"train": ["lora", "ia3"]}])
    train(cfg)
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "pyft_hybrid.json").read_text())["parts"] == ["lora", "ia3"]
    assert json.loads((adapter / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert json.loads((adapter / "ia3" / "adapter_config.json").read_text())["peft_type"] == "IA3"
    assert (adapter / "chat_template.jinja").is_file()  # serving info beside the parts
    ours = _base(setup)
    assert load_adapter(ours, adapter)
    # PEFT: LoRA merged into the base, then (IA)³ on top (PEFT does not stack the two kinds in one model)
    theirs = PeftModel.from_pretrained(_base(setup), adapter / "lora").merge_and_unload()
    theirs = PeftModel.from_pretrained(theirs, adapter / "ia3")
    with torch.no_grad():
        lo, lt = ours(IDS).logits, theirs(IDS).logits
    # merging LoRA rounds W + BA once in fp32 (≤ 2^-24 relative per weight), against pyft's unmerged sum
    assert _rel(lo, lt) <= 1e-5


def test_continuing_an_adapter_checks_its_kind(setup, tmp_path):
    train(_cfg(setup, tmp_path / "ia3", method="ia3", train={"max_steps": 1}))
    result = train(_cfg(setup, tmp_path / "more", method="ia3", adapter=str(tmp_path / "ia3" / "adapter"),
                        train={"max_steps": 1}))
    assert result.history
    with pytest.raises(ConfigError, match=r"adapter: .* holds IA3 adapter\(s\) but tuning lora trains LORA"):
        build_trainer(_cfg(setup, tmp_path / "x", method="lora", adapter=str(tmp_path / "ia3" / "adapter")))


@pytest.mark.parametrize("extra, message", [
    ({"tuning": "dora"}, r"tuning: unknown tuning 'dora' \(expected one of lora, qlora, full, ia3"),
    ({"tuning": []}, "tuning: an empty list"),
    ({"tuning": ["lora", "lora"]}, "tuning: a tuning is listed twice"),
    ({"tuning": ["lora", "qlora"]}, "tuning: lora and qlora are the same adapters"),
    ({"tuning": ["full", "ia3"]}, "tuning: a hybrid combines adapters; `full`"),
    ({"tuning": ["lora", "ia3"], "stages": []}, "stages: an empty list"),
    ({"tuning": ["lora", "ia3"], "stages": [{"train": ["oft"]}]}, r"stages\[0\].train: 'oft' is not one of"),
    ({"tuning": ["lora", "ia3"], "stages": [{"train": ["lora"], "steps": 3}]},
     r"stages\[0\].steps: the last stage runs until training ends"),
    ({"tuning": ["lora", "ia3"], "stages": [{"train": ["lora"]}, {"train": ["ia3"]}]},
     r"stages\[0\].steps: every stage but the last needs"),
    ({"tuning": ["lora", "ia3"], "stages": [{"train": ["lora"]}]}, "stages: 'ia3' trains in no stage"),
    ({"tuning": ["lora", "ia3"], "stages": [{"train": ["lora"], "steps": 1, "lr": 2}]},
     r"stages\[0\].lr: unknown key"),
    ({"method": "rm", "tuning": "ia3"}, "tuning: rm trains with lora or full, got 'ia3'"),
    ({"tuning": "full", "adapter": "x"}, "adapter: continuing an adapter needs an adapter tuning"),
    ({"tuning": ["lora", "ia3"], "adapter": "x", "stages": [{"train": ["lora", "ia3"]}]},
     "stages: staged training starts new adapters"),
])
def test_bad_tuning_configs_name_the_key(extra, message):
    values = {"model": "m", "data": "d", "method": "sft", **extra}
    with pytest.raises(ConfigError, match=message):
        load_config(**values)


def test_overlapping_hybrid_parts_are_refused_with_both_names(setup, tmp_path):
    cfg = _cfg(setup, tmp_path / "run", method="sft", tuning=["lora", "ia3"],
               lora={"targets": ["k_proj", "q_proj"]}, ia3={"targets": ["k_proj"], "feedforward": None})
    with pytest.raises(ConfigError, match=r"tuning: ia3: target `model.layers.0.self_attn.k_proj` is a LoraLinear.*"
                                          r"after lora: two parts may not adapt the same module"):
        build_trainer(cfg)


ADAPTER_TUNINGS = [t.name for t in TUNING_TABLE.values() if t.adapter and t.section != "lora"]


@pytest.mark.parametrize("name", ADAPTER_TUNINGS)
def test_each_adapter_tuning_trains_and_its_saved_adapter_reproduces_the_model(setup, tmp_path, name):
    """Through the training path (packed rows, `get_decoder()`), then saved as `pyft train` saves it and
    loaded into a fresh base: the same logits as the trained model in memory."""
    from pyft.train.run import _save_final

    cfg = _cfg(setup, tmp_path / "run", method=name, train={"max_steps": 4, "eval_every": 4})
    trainer = build_trainer(cfg)
    result = trainer.run()
    evals = [r["eval_loss"] for r in result.history if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0], evals  # the same validation rows before and after
    _save_final(cfg, trainer.model, setup["model"], trainer.train_ds)
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == TUNING_TABLE[name].peft_type
    reloaded = _base(setup)
    load_adapter(reloaded, tmp_path / "run" / "adapter")
    trainer.model.eval()
    with torch.no_grad():
        lt, lr, lb = trainer.model(IDS).logits, reloaded(IDS).logits, _base(setup)(IDS).logits
    assert _rel(lr, lt) <= 1e-6  # the same weights in fp32; only kernel choice may differ
    assert _rel(lt, lb) > 1e-4  # training changed the model


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # PEFT's prefix call
@pytest.mark.parametrize("name", ["ia3", "oft", "prompt_tuning", "prefix_tuning", "bottleneck"])
def test_modules_to_save_train_beside_any_adapter_and_peft_reads_them(setup, tmp_path, name):
    """`<section>.modules_to_save: [lm_head]` trains the output layer in full beside the adapter; it is
    saved in the adapter's file under PEFT's names (``base_model.`` for prompt learning, else
    ``base_model.model.``), reloads in pyft, and PEFT loads the PEFT kinds with the same logits."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from pyft.train.run import _save_final

    cfg = _cfg(setup, tmp_path / "run", method=name, **{name: {"modules_to_save": ["lm_head"]}},
               train={"max_steps": 2})
    trainer = build_trainer(cfg)
    trainer.run()
    _save_final(cfg, trainer.model, setup["model"], trainer.train_ds)
    adapter = tmp_path / "run" / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    prefix = "base_model." if name in ("prompt_tuning", "prefix_tuning") else "base_model.model."
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved["modules_to_save"] == ["lm_head"] and f"{prefix}lm_head.weight" in tensors
    base_head = _base(setup).lm_head.weight
    assert not torch.equal(tensors[f"{prefix}lm_head.weight"], base_head)  # the head trained
    ours = _base(setup)
    load_adapter(ours, adapter)
    trainer.model.eval()
    with torch.no_grad():
        lt, lo = trainer.model(IDS).logits, ours(IDS).logits
    assert _rel(lo, lt) <= 1e-6
    if saved["peft_type"].startswith("PYFT_"):
        return
    theirs = PeftModel.from_pretrained(_base(setup), adapter)
    with torch.no_grad():
        lp = theirs(IDS).logits[:, -IDS.shape[1]:]  # prompt learning: PEFT returns the virtual positions too
    assert _rel(lo, lp) <= 1e-6


def test_merging_a_hybrid_names_its_parts_and_merges_a_part(setup, tmp_path, capsys):
    """`pyft merge` of a whole hybrid is refused (one part at a time), writing nothing; its LoRA part
    merges; and the merged model plus the (IA)³ part gives the hybrid's logits."""
    from pyft.cli.main import main

    train(_cfg(setup, tmp_path / "run", method="sft", **HYBRID, train={"max_steps": 2}))
    adapter = tmp_path / "run" / "adapter"
    assert main(["merge", str(setup["model"]), str(adapter), str(tmp_path / "merged")]) != 0
    assert "pyft_hybrid.json: a pyft hybrid adapter (lora, ia3) merges or exports one part at a time" in \
        capsys.readouterr().err
    assert not (tmp_path / "merged").exists()
    assert main(["merge", str(setup["model"]), str(adapter / "lora"), str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    load_adapter(merged, adapter / "ia3")
    whole = _base(setup)
    load_adapter(whole, adapter)
    with torch.no_grad():
        assert _rel(merged(IDS).logits, whole(IDS).logits) <= 1e-5  # W + BA rounded once in fp32


@pytest.mark.parametrize("name", ["ia3", "oft"])
def test_mergeable_adapters_with_modules_to_save_merge_to_the_trained_model(setup, tmp_path, name):
    """`pyft merge` folds an (IA)³/OFT adapter and its fully trained `lm_head` into a plain model with the
    trained model's logits (f32 merge rounded once: a few fp32 ulps of the largest logit)."""
    from transformers import AutoModelForCausalLM

    from pyft.cli.main import main
    from pyft.train.run import _save_final

    cfg = _cfg(setup, tmp_path / "run", method=name, **{name: {"modules_to_save": ["lm_head"]}},
               train={"max_steps": 2})
    trainer = build_trainer(cfg)
    trainer.run()
    _save_final(cfg, trainer.model, setup["model"], trainer.train_ds)
    out = tmp_path / "merged"
    assert main(["merge", str(setup["model"]), str(tmp_path / "run" / "adapter"), str(out), "--dtype", "fp32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    trainer.model.eval()
    with torch.no_grad():
        assert _rel(merged(IDS).logits, trainer.model(IDS).logits) <= 1e-5
