"""``train.kl_to_base``: SFT with a token-level KL to the starting model, against forgetting.

The loss numerics are in ``test_losses_kl.py``; here the run: which reference it gets (the base with
adapters off under LoRA/QLoRA, no second copy; a frozen copy under full fine-tuning), what it logs,
how it normalises, what the config refuses, and that it does hold back forgetting.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import torch

import pyft
import pyft.data
from pyft.align.reference import AdapterDisabledReference, FrozenCopyReference
from pyft.errors import ConfigError
from pyft.methods import METHODS, SFT
from pyft.testing import CORPUS_PATH, make_tiny_model
from pyft.train import build_trainer, load_config, train

from helpers import CONVERSATIONS, perturb_adapters, write_jsonl


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory, single_thread):
    base = tmp_path_factory.mktemp("train_kl")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="llama")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for c in CONVERSATIONS for m in [c] * 4])
    pyft.data.prepare(src, model, base / "data", val_ratio=0.2, seed=0)
    return {"model": model, "data": base / "data"}


def _cfg(setup, out, method="lora", **train):
    t = {"lr": 1e-2, "max_steps": 2, "batch_size": 8, "seed": 3, "log_every": 100, "schedule": "constant",
         "kl_to_base": 0.1, **train}
    return load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out), method=method,
                       lora={"r": 4, "alpha": 8, "dropout": 0.0}, train=t)


def _causal_lms() -> int:
    """Causal LMs alive in this process (each a whole copy of its weights)."""
    gc.collect()
    return sum(type(o).__name__.endswith("ForCausalLM") for o in gc.get_objects())


def _base_model(setup):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(setup["model"]).eval()


def _first_batch(trainer):
    ds = trainer.train_ds
    return trainer.objective.collate([ds[i] for i in range(4)], list(range(4)), "train")


def test_lora_reference_is_the_base_with_adapters_off_and_no_copy(setup, tmp_path):
    before = _causal_lms()
    trainer = build_trainer(_cfg(setup, tmp_path / "lora"))
    assert _causal_lms() - before == 1  # the policy only
    reference = trainer.objective.reference
    assert isinstance(reference, AdapterDisabledReference) and reference.modules() == []
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for v in vars(reference).values())
    perturb_adapters(trainer.model)  # the policy now differs from the base
    batch = _first_batch(trainer)
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    trainer.model.train()
    hidden, head = reference.forward_hidden(trainer.model, inputs)
    ref_logits = head(hidden)
    base_logits = _base_model(setup)(**inputs, use_cache=False).logits.detach()
    torch.testing.assert_close(ref_logits, base_logits)  # float32 defaults: rtol 1.3e-6, atol 1e-5
    assert not ref_logits.requires_grad
    with torch.no_grad():
        policy_logits = trainer.model(**inputs, use_cache=False).logits
    assert (policy_logits - base_logits).abs().max() > 1e-2
    assert all(m.training for m in trainer.model.modules())  # the reference pass (eval mode) put the mode back


def test_the_reference_pass_runs_without_dropout(setup, tmp_path):
    """train.model_dropout applies to the policy's forward; the reference is the base's own
    (deterministic) prediction."""
    trainer = build_trainer(_cfg(setup, tmp_path / "dropout", model_dropout=0.5))
    trainer.model.train()
    batch = _first_batch(trainer)
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    reference = trainer.objective.reference
    first, second = (reference.forward_hidden(trainer.model, inputs)[0] for _ in range(2))
    assert torch.equal(first, second)
    with torch.no_grad():
        assert not torch.equal(*(trainer.model(**inputs, use_cache=False).logits for _ in range(2)))


def test_full_finetuning_reference_is_a_frozen_copy_without_gradients(setup, tmp_path):
    before = _causal_lms()
    trainer = build_trainer(_cfg(setup, tmp_path / "full", method="full", lr=1e-3))
    assert _causal_lms() - before == 2  # the policy and its frozen copy
    reference = trainer.objective.reference
    assert isinstance(reference, FrozenCopyReference)
    copy = reference.model
    assert not {id(p) for p in copy.parameters()} & {id(p) for p in trainer.model.parameters()}
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training
    start = {n: p.detach().clone() for n, p in copy.named_parameters()}
    first = trainer.train_step()
    second = trainer.train_step()
    assert first["kl"] == 0.0 and second["kl"] > 0  # identical weights at the first step, then apart
    assert all(p.grad is None for p in copy.parameters())
    assert all(torch.equal(p, start[n]) for n, p in copy.named_parameters())
    moved = dict(trainer.model.named_parameters())
    assert any(not torch.equal(moved[n], start[n]) for n in start)
    batch = _first_batch(trainer)
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    hidden, head = reference.forward_hidden(trainer.model, inputs)
    torch.testing.assert_close(head(hidden), _base_model(setup)(**inputs, use_cache=False).logits.detach())


def test_kl_starts_at_zero_grows_and_is_logged(setup, tmp_path, capsys):
    """LoRA's B starts at zero, so the first step's policy is the base: KL exactly 0; it grows as the
    adapter trains, and shows in metrics.jsonl, evaluation records and the progress lines."""
    out = tmp_path / "run"
    result = train(_cfg(setup, out, max_steps=6, batch_size=4, eval_every=3, log_every=3))
    steps = [r for r in result.history if "loss" in r]
    evals = [r for r in result.history if "eval_loss" in r]
    assert steps[0]["kl"] == 0.0 and evals[0]["eval_kl"] == 0.0
    assert steps[-1]["kl"] > 1e-4 and evals[-1]["eval_kl"] > 1e-4
    assert {"eval_loss", "eval_ppl", "eval_kl"} <= set(evals[-1])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["kl"] for x in lines if "loss" in x] == [r["kl"] for r in steps]
    err = capsys.readouterr().err
    assert f"kl {steps[2]['kl']:.4f}" in err  # the step-3 progress line
    assert f"ppl {evals[-1]['eval_ppl']:.2f}  kl {evals[-1]['eval_kl']:.4f}" in err
    plain = train(_cfg(setup, tmp_path / "plain", max_steps=1, kl_to_base=0.0)).history
    assert not any("kl" in r or "eval_kl" in r for r in plain)  # off: no reference pass, nothing logged


def test_kl_gradients_accumulate_like_one_batch_and_ignore_checkpointing_and_smoothing(setup, tmp_path):
    """With the adapters moved away from the base, the KL term adds to the gradients; it is
    normalised by the step's target tokens like the CE (batch 8 = 4 x accumulation 2), gradient
    checkpointing changes nothing, and label smoothing changes the CE but not the KL."""
    def step(name, **train):
        trainer = build_trainer(_cfg(setup, tmp_path / name, **train))
        perturb_adapters(trainer.model)
        metrics, _ = trainer.accumulate_gradients()
        return metrics, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    m1, g1 = step("one")
    m2, g2 = step("acc", batch_size=4, grad_accum=2)
    m3, g3 = step("gc", gradient_checkpointing=True)
    m0, g0 = step("off", kl_to_base=0.0)
    assert m1["kl"] > 1e-3 and m1["loss"] == pytest.approx(m0["loss"], rel=1e-6)
    assert m2["kl"] == pytest.approx(m1["kl"], rel=1e-5) and m3["kl"] == pytest.approx(m1["kl"], rel=1e-6)
    for k in g1:
        scale = g1[k].abs().max().clamp_min(1e-12)
        assert ((g1[k] - g2[k]).abs().max() / scale) <= 1e-5, k
        assert ((g1[k] - g3[k]).abs().max() / scale) <= 1e-6, k
    assert max(((g1[k] - g0[k]).abs().max() / g1[k].abs().max().clamp_min(1e-12)).item() for k in g1) > 1e-3
    smooth, _ = step("smooth", label_smoothing=0.1)
    assert smooth["kl"] == pytest.approx(m1["kl"], rel=1e-6) and smooth["loss"] != pytest.approx(m1["loss"])


def test_qlora_reference_is_the_nf4_base_with_adapters_off(setup, tmp_path):
    from pyft.quant import NF4Linear

    before = _causal_lms()
    trainer = build_trainer(_cfg(setup, tmp_path / "qlora", method="qlora", precision="fp32"))
    assert _causal_lms() - before == 1
    assert isinstance(trainer.objective.reference, AdapterDisabledReference)
    assert any(isinstance(m, NF4Linear) for m in trainer.model.modules())
    assert trainer.train_step()["kl"] == 0.0
    perturb_adapters(trainer.model)
    metrics = trainer.train_step()
    assert 0 < metrics["kl"] < math.inf and math.isfinite(metrics["grad_norm"])


def test_config_checks_name_the_key():
    ok = load_config(model="m", data="d", overrides=["train.kl_to_base=0.25"])
    assert ok.train.kl_to_base == 0.25 and load_config(model="m", data="d").train.kl_to_base == 0.0
    for bad in ("-0.1", ".nan", ".inf"):
        with pytest.raises(ConfigError, match=r"train\.kl_to_base: must be >= 0"):
            load_config(model="m", data="d", overrides=[f"train.kl_to_base={bad}"])
    with pytest.raises(ConfigError, match=r"train\.kl_to_base: expected a number, got 'lots'"):
        load_config(model="m", data="d", overrides=["train.kl_to_base=lots"])
    for method in ("dpo", "orpo", "rm"):
        with pytest.raises(ConfigError, match=rf"train\.kl_to_base: only sft adds a KL to the base model, not method "
                                              rf"{method}"):
            load_config(model="m", data="d", method=method, train={"kl_to_base": 0.1})
    load_config(model="m", data="d", method="dpo", train={"kl_to_base": 0.0})  # 0 = off, accepted everywhere
    with pytest.raises(ConfigError, match=r"align\.precompute_ref: train\.kl_to_base .* cannot be precomputed"):
        load_config(model="m", data="d", method="full", align={"precompute_ref": True}, train={"kl_to_base": 0.1})
    assert [m.name for m in METHODS.values() if m.kl_to_base] == [SFT]


def test_sft_templates_show_the_key_off():
    configs = Path(pyft.__file__).parent / "configs"
    for name in ("lora_sft.yaml", "qlora_sft.yaml", "full_sft.yaml"):
        cfg = load_config(configs / name)
        assert cfg.train.kl_to_base == 0.0
        assert any(line.strip().startswith("kl_to_base: 0.0") and "#" in line
                   for line in (configs / name).read_text().splitlines()), name


# -- forgetting ----------------------------------------------------------------------------------
#: The narrow task: one fixed answer to many near-identical questions.
NARROW = [{"messages": [{"role": "user", "content": f"What is the code for box {i}?"},
                        {"role": "assistant", "content": "The code is zebra."}]} for i in range(64)]


def _general_documents() -> tuple[list[str], list[str]]:
    """Six-line documents from the first 60k characters of the bundled corpus (questions and
    answers, dialogues, prose, code): 7 of every 8 to pretrain on, the 8th held out (40 of them)."""
    lines = [x for x in CORPUS_PATH.read_text(encoding="utf-8")[:60000].splitlines() if x.strip()]
    docs = ["\n".join(lines[i : i + 6]) for i in range(0, len(lines), 6)]
    return [d for i, d in enumerate(docs) if i % 8], [d for i, d in enumerate(docs) if i % 8 == 0][:40]


def _perplexity(model, tokenizer, texts: list[str]) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor(tokenizer(text)["input_ids"])
            logits = model(input_ids=ids[None]).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum").item()
            n += len(ids) - 1
    return math.exp(nll / n)


def test_kl_to_base_holds_back_forgetting(tokenizer_dirs, tmp_path, single_thread):
    """A tiny Llama pretrained briefly on general text (the base), then LoRA-tuned on a narrow task
    with and without train.kl_to_base = 0.1: with the KL its perplexity on held-out general text
    rises much less, while it learns the task about as well.

    Measured (fixed seeds, fp32, one CPU thread): general perplexity 107 for the base, 5222 after
    tuning without KL, 1968 with it; task eval loss 0.011 and 0.031 nats. Asserted: the increase
    with KL is at most 0.6x the one without (measured 0.36x, so CPU-to-CPU rounding differences,
    which move these by well under 10 %, cannot flip it), and both runs learned the task: eval loss
    below 0.1 nats, i.e. the answer tokens' mean probability above 90 % (the untrained base's is
    below 1 %), so the comparison is at similar task loss, not a KL that simply blocked learning.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    general, held_out = _general_documents()
    model = make_tiny_model(tmp_path / "random", tokenizer_dirs["chatml"], arch="llama")
    pyft.data.prepare(write_jsonl(tmp_path / "general.jsonl", [{"text": d} for d in general]), model,
                      tmp_path / "general", format="text", pack="bfd", max_len=128)
    fp32 = {"batch_size": 8, "log_every": 1000, "precision": "fp32", "seed": 0}
    train(load_config(model=str(model), data=str(tmp_path / "general"), output=str(tmp_path / "pre"), method="full",
                      train={"max_steps": 40, "lr": 3e-3, "schedule": "cosine", **fp32}))
    base = tmp_path / "pre" / "model"
    tokenizer = AutoTokenizer.from_pretrained(base)
    ppl_base = _perplexity(AutoModelForCausalLM.from_pretrained(base).eval(), tokenizer, held_out)
    pyft.data.prepare(write_jsonl(tmp_path / "narrow.jsonl", NARROW), base, tmp_path / "narrow", val_ratio=0.25, seed=0)
    ppl, task = {}, {}
    for beta in (0.0, 0.1):
        out = tmp_path / f"kl{beta}"
        result = train(load_config(
            model=str(base), data=str(tmp_path / "narrow"), output=str(out),
            lora={"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["lm_head"]},
            train={"max_steps": 60, "lr": 3e-3, "schedule": "constant", "kl_to_base": beta, **fp32}))
        tuned = pyft.load_model(base, dtype="float32", adapter=out / "adapter").eval()
        ppl[beta], task[beta] = _perplexity(tuned, tokenizer, held_out), result.eval_loss
    print(f"general perplexity: base {ppl_base:.1f}, without KL {ppl[0.0]:.1f}, with KL {ppl[0.1]:.1f}; "
          f"task eval loss {task[0.0]:.4f} / {task[0.1]:.4f}")
    assert ppl[0.0] > 2 * ppl_base  # the narrow task does make the model forget
    assert ppl[0.1] - ppl_base < 0.6 * (ppl[0.0] - ppl_base), (ppl_base, ppl)
    assert task[0.0] < 0.1 and task[0.1] < 0.1, task
