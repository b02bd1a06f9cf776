"""Alignment training end to end on the tiny model (pyft/align + pyft/train): each method learns the
synthetic rule of :mod:`pyft.testing.preference` (answers should open with ``Sure!``), the reference
model costs no second copy of the base weights under LoRA, and the loop's guarantees (exact resume,
DDP, checkpoints) hold for preference objectives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import pyft
import pyft.data
from pyft.data import PreparedDataset
from pyft.errors import ConfigError
from pyft.methods import METHODS
from pyft.testing import make_tiny_model
from pyft.testing.preference import follows_rule, rule_task
from pyft.train import build_trainer, load_config, train
from helpers import reorder_tolerance, torchrun_train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def task(tokenizer_dirs, tmp_path_factory) -> dict[str, Path]:
    """The rule task prepared for a tiny Llama, plus that model after a short full SFT on a mix of
    both answer styles (so it breaks the rule when decoding greedily)."""
    root = tmp_path_factory.mktemp("align")
    files = rule_task(root / "task")
    model = make_tiny_model(root / "base", tokenizer_dirs["chatml"], arch="llama")
    out = {"base": model}
    # train_on=all: the SFT model also learns the "\n" after <|im_end|> that TRL-style completions end with.
    pyft.data.prepare(files["sft"], model, root / "sft_data", val_ratio=0.2, seed=0, train_on="all")
    for name in ("pref", "kto"):
        out[name] = root / f"{name}_data"
        pyft.data.prepare(files[name], model, out[name], val_ratio=0.2, seed=0)
    cfg = load_config(None, model=str(model), data=str(root / "sft_data"), method="full", output=str(root / "sft"),
                      train={"max_steps": 60, "batch_size": 8, "lr": 1e-2, "warmup": 0.1, "log_every": 1000})
    train(cfg)
    out["sft"] = root / "sft" / "model"
    out["sft_data"] = root / "sft_data"
    return out


def _reorder_tol(model_dir: Path, data_dir: Path, steps: int, rows: int) -> float:
    """:func:`helpers.reorder_tolerance` for ``steps`` steps of ``rows`` sequences of this task's tiny
    model (float32; chosen and rejected are two sequences per pair)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    longest = PreparedDataset(data_dir).info.meta["options"].get("max_len", 2048)  # an upper bound
    return reorder_tolerance(steps=steps, tokens=rows * longest, matmuls=7 * config["num_hidden_layers"] + 1,
                             width=max(config["vocab_size"], config["intermediate_size"]))


def rule_rate(model, data_dir: Path) -> float:
    """Share of the validation prompts whose greedy answer follows the rule."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(PreparedDataset(data_dir).info.out_dir / "tokenizer")
    ds = PreparedDataset(data_dir, "validation")
    model.eval()
    hits = 0
    for i in range(len(ds)):
        item = ds[i]
        prompt = torch.tensor(item["prompt"] if ds.kind == "preference" else item["prompt_ids"], dtype=torch.long)[None]
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        hits += follows_rule(tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True))
    return hits / len(ds)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _align(task, tmp_path, method, base, data, steps, lr, **sections):
    train_section = {"max_steps": steps, "batch_size": 8, "lr": lr, "warmup": 0.1, "log_every": 5,
                     "eval_every": steps, **sections.pop("train", {})}
    return load_config(None, model=str(base), data=str(data), method=method, output=str(tmp_path / method),
                       train=train_section, **sections)


def test_dpo_lora_after_sft_makes_greedy_answers_follow_the_rule(task, tmp_path):
    from pyft.models import load_model

    assert rule_rate(load_model(task["sft"]), task["pref"]) <= 0.2
    cfg = _align(task, tmp_path, "dpo", task["sft"], task["pref"], 30, 1e-3)
    result = train(cfg)
    rows = _metrics(tmp_path / "dpo")
    final_eval = [r for r in rows if "eval_loss" in r][-1]
    assert final_eval["eval_rewards/accuracies"] >= 0.9
    assert final_eval["eval_rewards/margins"] > 0
    names = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected", "logits/chosen", "logits/rejected", "loss", "grad_norm", "lr"}
    assert names <= set(next(r for r in rows if "loss" in r))
    assert result.eval_loss < 0.693  # below log 2, where DPO starts
    assert (tmp_path / "dpo" / "rewards.png").is_file() and (tmp_path / "dpo" / "loss.png").is_file()
    adapter = tmp_path / "dpo" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert rule_rate(load_model(task["sft"], adapter=adapter), task["pref"]) >= 0.9


def test_kto_with_one_desirable_in_five_and_matching_weights(task, tmp_path, capsys):
    from pyft.models import load_model

    split = PreparedDataset(task["kto"]).info.splits["train"]
    assert 3.0 <= split["undesirable"] / split["desirable"] <= 5.5  # the 1:4 split
    build_trainer(_align(task, tmp_path / "warn", "kto", task["sft"], task["kto"], 1, 1e-3))
    assert "KTO class weights do not balance the data" in capsys.readouterr().err
    weight = math.ceil(100 * split["undesirable"] / split["desirable"]) / 100  # n_d * w_d >= n_u * w_u
    cfg = _align(task, tmp_path, "kto", task["sft"], task["kto"], 30, 1e-3, align={"desirable_weight": weight})
    train(cfg)
    assert "do not balance" not in capsys.readouterr().err
    rows = _metrics(tmp_path / "kto")
    final_eval = [r for r in rows if "eval_loss" in r][-1]
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(
        next(r for r in rows if "loss" in r))
    assert final_eval["eval_rewards/margins"] > 0
    assert rule_rate(load_model(task["sft"], adapter=tmp_path / "kto" / "adapter"), task["kto"]) >= 0.9


@pytest.mark.parametrize("method, align", [("orpo", {}), ("simpo", {"beta": 2.0})])
def test_orpo_and_simpo_from_the_base_model(task, tmp_path, method, align):
    from pyft.models import load_model

    assert rule_rate(load_model(task["base"]), task["pref"]) <= 0.2
    cfg = _align(task, tmp_path, method, task["base"], task["pref"], 60, 3e-3 if method == "orpo" else 1e-3,
                 tuning="full", align=align)
    train(cfg)
    rows = _metrics(tmp_path / method)
    final_eval = [r for r in rows if "eval_loss" in r][-1]
    assert final_eval["eval_rewards/accuracies"] >= 0.9
    if method == "orpo":
        assert {"nll_loss", "log_odds_ratio", "log_odds_chosen"} <= set(next(r for r in rows if "loss" in r))
    assert rule_rate(load_model(tmp_path / method / "model"), task["pref"]) >= 0.9


def _pair_rewards(model, data_dir: Path, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    from pyft.data.sequences import PreferenceCollator

    ds = PreparedDataset(data_dir, "validation")
    batch = PreferenceCollator(pad, "padded")([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    return r[: len(ds)], r[len(ds):]


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_reward_model_ranks_held_out_pairs_and_loads_in_transformers(task, tmp_path, tuning):
    from transformers import AutoModelForSequenceClassification

    cfg = _align(task, tmp_path, "rm", task["base"], task["pref"], 30, 1e-3, tuning=tuning)
    train(cfg)
    out = tmp_path / "rm"
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert hf.config.num_labels == 1 and hf.config.pad_token_id is not None
    chosen, rejected = _pair_rewards(hf, task["pref"], hf.config.pad_token_id)
    assert float((chosen > rejected).float().mean()) >= 0.9
    eval_rows = [r for r in _metrics(out) if "eval_accuracy" in r]
    assert eval_rows[-1]["eval_accuracy"] >= 0.9
    if tuning == "lora":  # the adapter is PEFT's SEQ_CLS format and gives the same rewards
        from peft import PeftModel

        config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
        base = AutoModelForSequenceClassification.from_pretrained(task["base"], num_labels=1,
                                                                  pad_token_id=hf.config.pad_token_id)
        peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
        c2, r2 = _pair_rewards(peft_model, task["pref"], hf.config.pad_token_id)
        torch.testing.assert_close(c2, chosen, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r2, rejected, rtol=1e-4, atol=1e-5)


def _storage_bytes(modules) -> int:
    """Bytes of the distinct storages behind every parameter and buffer of ``modules``."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    return total


def test_lora_dpo_holds_one_copy_of_the_base_weights(task, tmp_path):
    from pyft.align.reference import AdapterDisabledReference, FrozenCopyReference, PrecomputedReference

    lora = build_trainer(_align(task, tmp_path / "a", "dpo", task["sft"], task["pref"], 1, 1e-3))
    ref = lora.objective.reference
    assert isinstance(ref, AdapterDisabledReference) and ref.modules() == []
    base_bytes = sum(p.numel() * p.element_size() for p in lora.model.parameters() if not p.requires_grad)
    adapter_bytes = sum(p.numel() * p.element_size() for p in lora.model.parameters() if p.requires_grad)
    held = _storage_bytes([lora.model, *ref.modules()])
    assert base_bytes <= held < base_bytes + adapter_bytes + 64 * 1024  # + buffers (rotary tables)
    # Full fine-tuning keeps a frozen copy, unless the reference log-probs are precomputed.
    full = build_trainer(_align(task, tmp_path / "b", "dpo", task["sft"], task["pref"], 1, 1e-5, tuning="full"))
    assert isinstance(full.objective.reference, FrozenCopyReference)
    one = _storage_bytes([full.model])
    assert _storage_bytes([full.model, *full.objective.reference.modules()]) >= 2 * one - 64 * 1024
    pre = build_trainer(_align(task, tmp_path / "c", "dpo", task["sft"], task["pref"], 1, 1e-5, tuning="full",
                               align={"precompute_ref": True}))
    assert isinstance(pre.objective.reference, PrecomputedReference) and pre.objective.reference.modules() == []


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_precomputed_reference_gives_the_same_run(task, tmp_path, method):
    data = task["pref"] if method == "dpo" else task["kto"]
    live = train(_align(task, tmp_path / "live", method, task["sft"], data, 3, 1e-3))
    pre = train(_align(task, tmp_path / "pre", method, task["sft"], data, 3, 1e-3,
                       align={"precompute_ref": True}))
    assert (tmp_path / "pre" / method / "reference_logps.safetensors").is_file()
    assert len(live.history) == len(pre.history)
    # The precompute pass batches the sequences differently from training: float32 reordering only.
    tol = _reorder_tol(task["sft"], data, steps=3, rows=2 * 8)
    for a, b in zip(live.history, pre.history):
        for key in ("loss", "eval_loss", "rewards/margins", "kl"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=tol, abs=1e-6), key


def test_dpo_resume_is_exact(task, tmp_path):
    from safetensors.torch import load_file

    full = train(_align(task, tmp_path / "full", "dpo", task["sft"], task["pref"], 4, 1e-3,
                        train={"save_every": 2, "eval_every": None}))
    cut = _align(task, tmp_path / "cut", "dpo", task["sft"], task["pref"], 4, 1e-3,
                 train={"save_every": 2, "eval_every": None})
    trainer = build_trainer(cut)
    trainer.total_steps = 2
    trainer.run()
    cut.train.resume = "auto"
    resumed = train(cut)
    assert resumed.steps == 4
    a = load_file(tmp_path / "full" / "dpo" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "dpo" / "adapter" / "adapter_model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    last = [r["loss"] for r in full.history if "loss" in r], [r["loss"] for r in resumed.history if "loss" in r]
    assert last[0][-1] == last[1][-1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_two_processes_equal_one_for_dpo(task, tmp_path, parallel):
    """torchrun with 2 gloo processes x 4 pairs gives the adapter of 1 process x 8 pairs, under DDP and
    under FSDP (the reference is the sharded base with the adapters off)."""
    from safetensors.torch import load_file

    common = ["method=dpo", f"model={task['sft']}", f"data={task['pref']}", "train.lr=1e-3", "train.max_steps=2",
              "train.schedule=constant", "train.eval_every=2"]
    train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'ddp'}", "train.batch_size=4", f"train.parallel={parallel}"])
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    # 4-pair and 8-pair micro-batches pack differently and 2 ranks reduce in another order: float32
    # reordering only (bound derived in helpers.reorder_tolerance).
    tol = _reorder_tol(task["sft"], task["pref"], steps=2, rows=2 * 8)
    for k in a:
        assert float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) <= tol, k
    single, ddp = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    for x, y in zip(single, ddp):
        for key in ("loss", "rewards/margins", "eval_loss", "eval_rewards/accuracies"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=tol, abs=1e-7), key


def test_ddp_kto_averages_the_kl_estimate_over_ranks(task, tmp_path):
    """KTO under torchrun (the KL estimate is all-reduced inside the loss) runs to the end, with
    evaluation on ranks holding different numbers of rows."""
    common = ["method=kto", f"model={task['sft']}", f"data={task['kto']}", "train.lr=1e-3", "train.max_steps=2",
              "train.eval_every=2", "train.batch_size=4", f"output={tmp_path / 'ddp'}"]
    r = torchrun_train(common)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(tmp_path / "ddp")
    steps = [x for x in rows if "loss" in x]
    assert len(steps) == 2 and all(x["kl"] >= 0 and math.isfinite(x["loss"]) for x in steps)
    assert "eval_kl" in rows[-1] and (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()


def test_ddp_evaluation_when_one_rank_has_no_validation_rows(task, tmp_path):
    """Ranks agree on the metric keys before reducing, so a rank without evaluation batches does not
    hang the others."""
    data = tmp_path / "one_val"
    pyft.data.prepare(Path(task["base"]).parent / "task" / "pref.jsonl", task["base"], data, val_ratio=0.007, seed=0)
    assert PreparedDataset(data).info.splits["validation"]["examples"] == 1
    args = ["method=dpo", f"model={task['sft']}", f"data={data}", "train.max_steps=1", "train.eval_every=1",
            "train.batch_size=2", f"output={tmp_path / 'ddp'}"]
    r = torchrun_train(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert any("eval_rewards/accuracies" in x for x in _metrics(tmp_path / "ddp"))


def test_method_and_data_mismatches_are_config_errors(task, tmp_path):
    with pytest.raises(ConfigError, match="holds preference data; method kto needs kto data"):
        build_trainer(_align(task, tmp_path, "kto", task["sft"], task["pref"], 1, 1e-3))
    with pytest.raises(ConfigError, match="holds kto data; method dpo needs preference data"):
        build_trainer(_align(task, tmp_path, "dpo", task["sft"], task["kto"], 1, 1e-3))
    with pytest.raises(ConfigError, match="holds preference data; method sft needs chat or text data"):
        build_trainer(_align(task, tmp_path, "lora", task["sft"], task["pref"], 1, 1e-3))
    with pytest.raises(ConfigError, match="train.batch_size: KTO estimates its KL term"):
        _align(task, tmp_path, "kto", task["sft"], task["kto"], 1, 1e-3, train={"batch_size": 1})
    with pytest.raises(ConfigError, match="align.loss_type: 'simpo' is not a dpo loss type"):
        _align(task, tmp_path, "dpo", task["sft"], task["pref"], 1, 1e-3, align={"loss_type": "simpo"})
    with pytest.raises(ConfigError, match="tuning: method lora already says the tuning"):
        _align(task, tmp_path, "lora", task["sft"], task["pref"], 1, 1e-3, tuning="full")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(pyft.__file__).parent / "configs").glob("*.yaml")))
def test_shipped_configs_load(name, task, tmp_path):
    """Every example config validates and, with model/data pointed at the fixtures, builds a trainer."""
    path = Path(pyft.__file__).parent / "configs" / name
    cfg = load_config(path)
    data = {"preference": task["pref"], "kto": task["kto"]}.get(cfg.objective.data_kinds[0])
    if data is None:
        return  # SFT configs are covered by the training-loop tests
    cfg = load_config(path, [f"model={task['sft']}", f"data={data}", f"output={tmp_path}", "train.max_steps=1"])
    trainer = build_trainer(cfg)
    assert trainer.config.objective is METHODS[cfg.method]


def test_qlora_dpo_uses_the_4bit_base_as_reference(task, tmp_path):
    from pyft.losses.forward import sequence_logps
    from pyft.align.reference import AdapterDisabledReference
    from pyft.data.sequences import PreferenceCollator
    from pyft.models import load_model
    from pyft.quant import NF4Linear

    trainer = build_trainer(_align(task, tmp_path, "dpo", task["sft"], task["pref"], 2, 1e-3, tuning="qlora",
                                   train={"eval_every": None}))
    assert isinstance(trainer.objective.reference, AdapterDisabledReference)
    assert any(isinstance(m, NF4Linear) for m in trainer.model.modules())
    result = trainer.run()
    assert result.steps == 2
    assert result.history[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at the start
    batch = PreferenceCollator(0, "packed")([trainer.train_ds[i] for i in range(4)])
    ref = trainer.objective.reference.sequence_logps(trainer.model, batch)
    nf4 = load_model(task["sft"], dtype="float32", quantize="nf4", compute_dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(ref, sequence_logps(nf4, batch).logps, rtol=1e-5, atol=1e-5)
        policy = sequence_logps(trainer.model, batch).logps
    assert (policy - ref).abs().max() > 1e-4  # the adapter trained; the reference did not move


def test_dpo_continues_an_sft_adapter_whose_start_is_the_reference(task, tmp_path):
    """DPO on top of a LoRA SFT adapter (no merge): the policy starts as base + adapter, and the
    reference is that starting adapter, not the bare base."""
    from safetensors.torch import load_file

    from pyft.losses.forward import sequence_logps
    from pyft.align.reference import StartingAdapterReference
    from pyft.data.sequences import PreferenceCollator
    from pyft.models import load_model

    sft = load_config(None, model=str(task["base"]), data=str(task["sft_data"]), method="lora",
                      output=str(tmp_path / "sft"), lora={"r": 8, "alpha": 16},
                      train={"max_steps": 20, "batch_size": 8, "lr": 3e-3, "log_every": 1000})
    train(sft)
    start = tmp_path / "sft" / "adapter"
    cfg = _align(task, tmp_path, "dpo", task["base"], task["pref"], 3, 1e-3, adapter=str(start),
                 train={"eval_every": None})
    trainer = build_trainer(cfg)
    assert isinstance(trainer.objective.reference, StartingAdapterReference)
    ds = trainer.train_ds
    batch = PreferenceCollator(0, "packed")([ds[i] for i in range(4)])
    ref = trainer.objective.reference.sequence_logps(trainer.model, batch)
    with torch.no_grad():
        expected = sequence_logps(load_model(task["base"], adapter=start), batch).logps
        bare = sequence_logps(load_model(task["base"]), batch).logps
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert (ref - bare).abs().max() > 1e-2
    result = trainer.run()
    assert result.history[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at the start
    torch.testing.assert_close(trainer.objective.reference.sequence_logps(trainer.model, batch), ref)
    from pyft.train.run import _save_final

    _save_final(cfg, trainer.model, Path(cfg.model), trainer.train_ds)
    before = load_file(start / "adapter_model.safetensors")
    after = load_file(tmp_path / "dpo" / "adapter" / "adapter_model.safetensors")
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)


def test_disable_dropout_zeroes_modules_but_keeps_the_saved_config():
    from transformers import LlamaConfig, LlamaForCausalLM

    from pyft.train.dropout import disable_dropout

    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64,
                                         attention_dropout=0.1))
    model.model.layers[0].mlp = torch.nn.Sequential(model.model.layers[0].mlp, torch.nn.Dropout(0.3))
    disable_dropout(model)
    attn = [m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")]
    assert attn and all(p == 0.0 for p in attn)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.config.attention_dropout == 0.1


@pytest.mark.parametrize("tuning", ["ia3", "oft", "bottleneck"])
def test_dpo_with_other_adapters_starts_at_log2_against_the_base_with_adapters_off(task, tmp_path, tuning):
    """These adapters start as the identity, so with the base-with-adapters-off reference the first DPO
    loss is exactly log 2 (policy = reference); after a few steps the policy has moved away from it."""
    import math

    from pyft.align.reference import AdapterDisabledReference

    trainer = build_trainer(_align(task, tmp_path, "dpo", task["sft"], task["pref"], 3, 1e-2, tuning=tuning,
                                   train={"eval_every": None}))
    assert isinstance(trainer.objective.reference, AdapterDisabledReference)
    first = trainer.train_step()
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # identical log-probs, up to fp32 rounding
    trainer.train_step()
    last = trainer.train_step()
    assert last["loss"] != pytest.approx(math.log(2), abs=1e-4)


def test_fsdp_full_dpo_with_precomputed_reference_equals_one_process(task, tmp_path):
    """Full-tuning DPO sharded on 2 processes, the reference log-probs precomputed (by both ranks,
    before sharding), gives the weights and losses of one process with the same 8 pairs."""
    common = ["method=dpo", "tuning=full", f"model={task['sft']}", f"data={task['pref']}", "train.lr=1e-5",
              "train.max_steps=2", "train.schedule=constant", "train.eval_every=2", "align.precompute_ref=true"]
    train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'fsdp'}", "train.batch_size=4", "train.parallel=fsdp"])
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    a = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "model").named_parameters()}
    b = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "model").named_parameters()}
    tol = _reorder_tol(task["sft"], task["pref"], steps=2, rows=2 * 8)
    for k, w in a.items():
        assert float((w - b[k]).abs().max() / w.abs().max().clamp_min(1e-12)) <= tol, k
    for x, y in zip(_metrics(tmp_path / "single"), _metrics(tmp_path / "fsdp")):
        for key in ("loss", "rewards/margins", "eval_loss"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=tol, abs=1e-7), key


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_fsdp_lora_kto_and_orpo_train_sharded(task, tmp_path, method):
    """KTO (its KL estimate all-reduced inside the loss, the reference the base with adapters off) and
    ORPO (no reference) train under FSDP on 2 processes, evaluate on ranks holding different numbers
    of rows, and write a complete adapter."""
    data = task["kto"] if method == "kto" else task["pref"]
    args = [f"method={method}", f"model={task['sft']}", f"data={data}", "train.lr=1e-3", "train.max_steps=2",
            "train.eval_every=2", "train.batch_size=4", "train.parallel=fsdp", f"output={tmp_path / 'fsdp'}"]
    r = torchrun_train(args)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(tmp_path / "fsdp")
    steps = [x for x in rows if "loss" in x]
    assert len(steps) == 2 and all(math.isfinite(x["loss"]) for x in steps)
    assert "eval_loss" in rows[-1]
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert weights and all(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k)


def test_fsdp_lora_reward_model_equals_one_process(task, tmp_path):
    """A LoRA reward model trained sharded: rank 0 gathers every weight (the adapter is merged into a
    whole sequence-classification model/) and both outputs equal one process's with the same 8 pairs."""
    from safetensors.torch import load_file

    common = ["method=rm", "tuning=lora", f"model={task['base']}", f"data={task['pref']}", "train.lr=1e-3",
              "train.max_steps=2", "train.schedule=constant", "train.eval_every=2"]
    train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'fsdp'}", "train.batch_size=4", "train.parallel=fsdp"])
    assert r.returncode == 0, r.stderr[-3000:]
    tol = _reorder_tol(task["base"], task["pref"], steps=2, rows=2 * 8)
    for part in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        a, b = load_file(tmp_path / "single" / part), load_file(tmp_path / "fsdp" / part)
        assert a and set(a) == set(b), part
        for k, x in a.items():
            assert float((x - b[k]).abs().max() / x.abs().max().clamp_min(1e-12)) <= tol, (part, k)
