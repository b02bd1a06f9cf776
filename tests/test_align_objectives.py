"""pyft.align.objectives against TRL 1.16's trainers on a tiny model: loss, parameter gradients and metrics.

TRL's loss methods run unbound on a stand-in ``self`` (its own helper methods bound to it) with the
real model: ``DPOTrainer._compute_loss`` and ``KTOTrainer._compute_loss`` on a copy patched with
``add_fused_lm_head`` and reference log-probs precomputed by the fused reference model;
``ORPOTrainer``/``CPOTrainer.get_batch_loss_metrics`` on batches from their collator. pyft's
objective sees one micro-batch (its totals are that batch's counts).
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch

from pyft import load_model
from pyft.align.objectives import CpoObjective, DpoObjective, KtoObjective, OrpoObjective
from pyft.align.reference import FrozenCopyReference
from pyft.testing import make_tiny_model
from pyft.train.config import AlignSection
from trl_oracle import trainer_stub, trl_kl_rotation

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")

pytestmark = pytest.mark.usefixtures("single_thread")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_exp_utils = pytest.importorskip("trl.experimental.utils")

FUSED_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-5


@pytest.fixture(scope="module")
def models(tokenizer_dirs, tmp_path_factory):
    """A tiny llama policy and a reference with other weights (float32)."""
    base = tmp_path_factory.mktemp("align_objectives")
    policy = load_model(make_tiny_model(base / "policy", tokenizer_dirs["chatml"], seed=0), dtype="float32")
    ref = load_model(make_tiny_model(base / "ref", tokenizer_dirs["chatml"], seed=1), dtype="float32")
    return policy, ref


def _fused(model, outputs=FUSED_OUTPUTS):
    fused = copy.deepcopy(model)
    trl_utils.add_fused_lm_head(fused, outputs=outputs)
    return fused


def _fused_logps(fused, input_ids, attention_mask, completion_mask):
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    out = fused(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(1)


def _ids(rng, vocab, lo, hi):
    return rng.integers(0, vocab, int(rng.integers(lo, hi + 1))).astype(np.int64)


def _preference_rows(seed, vocab, n=4):
    rng = np.random.default_rng(seed)
    return [{"prompt": _ids(rng, vocab, 1, 8), "chosen": _ids(rng, vocab, 1, 10), "rejected": _ids(rng, vocab, 1, 10)}
            for _ in range(n)]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(ours, theirs, rtol=GRAD_RTOL):
    assert ours.keys() == theirs.keys() and ours
    for name in theirs:
        scale = theirs[name].abs().max().clamp_min(1e-12)
        err = ((ours[name] - theirs[name]).abs().max() / scale).item()
        assert err <= rtol, f"{name}: relative gradient error {err:.3g}"


def _assert_metrics_close(ours, theirs, keys, atol=LOSS_ATOL):
    for key in keys:
        assert abs(ours[key] - theirs[key]) <= atol * max(1.0, abs(theirs[key])), (key, ours[key], theirs[key])


def _pyft_step(objective, model, items):
    """One micro-batch step of a pyft objective: (loss, finalized metrics, parameter gradients)."""
    batch = objective.collate(items, list(range(len(items))), "train")
    totals = objective.counts(batch)
    model.zero_grad()
    loss, sums = objective.loss(model, batch, totals)
    loss.backward()
    grads = _grads(model)
    model.zero_grad()
    return loss.detach(), objective.finalize(sums, totals), grads


# --------------------------------------------------------------------------------------------------------------- DPO


DPO_CASES = {
    "sigmoid": dict(loss_type="sigmoid"),
    "ipo": dict(loss_type="ipo"),
    "mpo": dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),
    "robust-js": dict(loss_type="robust", label_smoothing=0.1, f_divergence="js_divergence"),
}


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_objective_matches_trl(models, case):
    policy, ref = models
    options = DPO_CASES[case]
    align = AlignSection(beta=0.1, **options)
    pad = policy.config.pad_token_id
    rows = _preference_rows(1, policy.config.vocab_size)

    examples = [{k + "_ids": r[k].tolist() for k in ("prompt", "chosen", "rejected")} for r in rows]
    batch = trl_dpo.DataCollatorForPreference(pad_token_id=pad)(examples)
    with torch.no_grad():  # TRL's precomputed reference log-probs
        ref_logps = _fused_logps(_fused(ref, ("log_probs",)), batch["input_ids"], batch["attention_mask"],
                                 batch["completion_mask"])
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref_logps.chunk(2)
    types_ = [options["loss_type"]] if isinstance(options["loss_type"], str) else options["loss_type"]
    stub = trainer_stub(trl_dpo.DPOTrainer, beta=0.1, loss_types=types_,
                 loss_weights=options.get("loss_weights", [1.0] * len(types_)),
                 label_smoothing=options.get("label_smoothing", 0.0),
                 f_divergence_type=options.get("f_divergence", "reverse_kl"), f_alpha_divergence_coef=1.0,
                 ld_alpha=None, use_weighting=False, precompute_ref_logps=True,
                 args=types.SimpleNamespace(discopop_tau=0.05))
    fused = _fused(policy)
    trl_loss = trl_dpo.DPOTrainer._compute_loss(stub, fused, batch, False)
    trl_loss.backward()
    trl_metrics = {k: v[-1] for k, v in stub._metrics["train"].items()}

    objective = DpoObjective(align, FrozenCopyReference(ref, 4096), pad, "packed", 4096)
    loss, metrics, grads = _pyft_step(objective, policy, rows)

    assert abs(loss.item() - trl_loss.item()) <= LOSS_ATOL, (loss.item(), trl_loss.item())
    _assert_grads_close(grads, _grads(fused))
    _assert_metrics_close(metrics, trl_metrics, ["rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                                 "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen",
                                                 "logits/rejected", "entropy", "mean_token_accuracy"])


# --------------------------------------------------------------------------------------------------------------- KTO


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_objective_matches_trl(models, loss_type):
    policy, ref = models
    pad = policy.config.pad_token_id
    rng = np.random.default_rng(2)
    vocab = policy.config.vocab_size
    labels = [True, False, False, False, False, True, False, False]  # 1 desirable : 3 undesirable
    items = [{"prompt_ids": _ids(rng, vocab, 1, 8), "completion_ids": _ids(rng, vocab, 1, 10), "label": lab}
             for lab in labels]
    align = AlignSection(beta=0.1, loss_type=loss_type, desirable_weight=3.0)

    examples = [{"prompt_ids": it["prompt_ids"].tolist(), "completion_ids": it["completion_ids"].tolist(),
                 "label": it["label"]} for it in items]
    calculate_kl = loss_type == "kto"
    if calculate_kl:
        kl = trl_kl_rotation()({"completion_ids": [e["completion_ids"] for e in examples]})["KL_completion_ids"]
        for e, k in zip(examples, kl):
            e["KL_completion_ids"] = k
    batch = trl_kto.DataCollatorForUnpairedPreference(pad_token_id=pad)(examples)
    with torch.no_grad():
        fused_ref = _fused(ref, ("log_probs",))
        batch["ref_logps"] = _fused_logps(fused_ref, batch["input_ids"], batch["attention_mask"],
                                          batch["completion_mask"])
        if calculate_kl:
            batch["ref_KL_logps"] = _fused_logps(fused_ref, batch["KL_input_ids"], batch["KL_attention_mask"],
                                                 batch["KL_completion_mask"])
    stub = trainer_stub(trl_kto.KTOTrainer, ["_compute_kl_logps"], beta=0.1, loss_type=loss_type, desirable_weight=3.0,
                 undesirable_weight=1.0, precompute_ref_logps=True, calculate_KL=calculate_kl)
    fused = _fused(policy)
    trl_loss = trl_kto.KTOTrainer._compute_loss(stub, fused, batch, False)
    trl_loss.backward()
    trl_metrics = {k: v[-1] for k, v in stub._metrics["train"].items()}

    objective = KtoObjective(align, FrozenCopyReference(ref, 4096), pad, "packed", 4096)
    loss, metrics, grads = _pyft_step(objective, policy, items)

    assert abs(loss.item() - trl_loss.item()) <= LOSS_ATOL, (loss.item(), trl_loss.item())
    _assert_grads_close(grads, _grads(fused))
    _assert_metrics_close(metrics, trl_metrics, ["kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                                 "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
                                                 "entropy"])


# ------------------------------------------------------------------------------------------------------ ORPO and CPO


def _trl_paired_batch(rows, pad):
    """TRL's ORPO/CPO batch: ``{chosen,rejected}_{input_ids,attention_mask,labels}`` per row (``labels`` = -100 on
    the prompt, as ``tokenize_row`` makes them), padded by TRL's ``DPODataCollatorWithPadding``."""
    features = []
    for r in rows:
        f = {}
        for side in ("chosen", "rejected"):
            ids = np.concatenate([r["prompt"], r[side]]).tolist()
            f[f"{side}_input_ids"] = ids
            f[f"{side}_attention_mask"] = [1] * len(ids)
            f[f"{side}_labels"] = [-100] * len(r["prompt"]) + r[side].tolist()
        features.append(f)
    return trl_exp_utils.DPODataCollatorWithPadding(pad_token_id=pad)(features)


def _trl_metrics_step(trainer_cls, stub, model, batch):
    model.zero_grad()
    loss, metrics = trainer_cls.get_batch_loss_metrics(stub, model, batch, "train")
    loss.backward()
    grads = _grads(model)
    model.zero_grad()
    return loss.detach(), metrics, grads


PAIR_KEYS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected"]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_objective_matches_trl(models, beta):
    """Chosen NLL over prompt + response, average log-probs and the odds-ratio term, as ORPOTrainer computes them."""
    policy, _ = models
    pad = policy.config.pad_token_id
    rows = _preference_rows(3, policy.config.vocab_size)
    stub = trainer_stub(trl_orpo.ORPOTrainer, ["concatenated_forward", "concatenated_inputs", "get_batch_logps",
                                        "odds_ratio_loss"], beta=beta, padding_value=pad)
    trl_loss, trl_metrics, trl_grads = _trl_metrics_step(trl_orpo.ORPOTrainer, stub, policy,
                                                         _trl_paired_batch(rows, pad))
    loss, metrics, grads = _pyft_step(OrpoObjective(AlignSection(beta=beta), pad, "packed", 4096), policy, rows)

    assert abs(loss.item() - trl_loss.item()) <= LOSS_ATOL, (loss.item(), trl_loss.item())
    _assert_grads_close(grads, trl_grads)
    _assert_metrics_close(metrics, trl_metrics, PAIR_KEYS + ["nll_loss", "log_odds_ratio", "log_odds_chosen"])


CPO_CASES = {
    # name: (AlignSection options, simpo)
    "cpo-sigmoid": (dict(loss_type="sigmoid", cpo_alpha=1.0), False),
    "cpo-ipo": (dict(loss_type="ipo", cpo_alpha=1.0), False),
    "simpo": (dict(beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0), True),
    "cpo-simpo-smoothed": (dict(beta=2.0, simpo_gamma=0.5, cpo_alpha=0.5, label_smoothing=0.1), True),
    "alphapo": (dict(beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0, alphapo=0.3), True),
}


@pytest.mark.parametrize("case", list(CPO_CASES))
def test_cpo_objective_matches_trl(models, case):
    options, simpo = CPO_CASES[case]
    align = AlignSection(**options)
    policy, _ = models
    pad = policy.config.pad_token_id
    rows = _preference_rows(4, policy.config.vocab_size)
    stub = trainer_stub(trl_cpo.CPOTrainer, ["concatenated_forward", "concatenated_inputs", "get_batch_logps", "cpo_loss"],
                 beta=align.beta, loss_type="simpo" if simpo else align.loss_type,
                 label_smoothing=align.label_smoothing, simpo_gamma=align.simpo_gamma, alpha=align.alphapo,
                 cpo_alpha=align.cpo_alpha, pad_token_id=pad)
    trl_loss, trl_metrics, trl_grads = _trl_metrics_step(trl_cpo.CPOTrainer, stub, policy,
                                                         _trl_paired_batch(rows, pad))
    loss, metrics, grads = _pyft_step(CpoObjective(align, simpo, pad, "packed", 4096), policy, rows)

    assert abs(loss.item() - trl_loss.item()) <= LOSS_ATOL, (loss.item(), trl_loss.item())
    _assert_grads_close(grads, trl_grads)
    _assert_metrics_close(metrics, trl_metrics, PAIR_KEYS + (["nll_loss"] if align.cpo_alpha else []))


def _objectives(ref, pad):
    return {
        "dpo-mpo": DpoObjective(AlignSection(**DPO_CASES["mpo"]), FrozenCopyReference(ref, 4096), pad, "packed", 4096),
        "orpo": OrpoObjective(AlignSection(beta=0.1), pad, "packed", 4096),
        "cpo-simpo": CpoObjective(AlignSection(**CPO_CASES["cpo-simpo-smoothed"][0]), True, pad, "packed", 4096),
    }


@pytest.mark.parametrize("name", ["dpo-mpo", "orpo", "cpo-simpo"])
def test_accumulation_equals_one_batch(models, name):
    """Micro-batches of 1 and 3 pairs, normalised by the step's totals, give the 4-pair batch's loss and gradients
    (the token means of the NLL/SFT terms are over the whole step)."""
    policy, ref = models
    pad = policy.config.pad_token_id
    rows = _preference_rows(5, policy.config.vocab_size)
    objective = _objectives(ref, pad)[name]
    loss, _, grads = _pyft_step(objective, policy, rows)

    parts = [objective.collate(rows[:1], [0], "train"), objective.collate(rows[1:], [1, 2, 3], "train")]
    counts = [objective.counts(b) for b in parts]
    totals = {k: sum(c[k] for c in counts) for k in counts[0]}
    policy.zero_grad()
    total = 0.0
    for b in parts:
        part_loss, _ = objective.loss(policy, b, totals)
        part_loss.backward()
        total += part_loss.item()
    acc_grads = _grads(policy)
    policy.zero_grad()
    assert abs(total - loss.item()) <= LOSS_ATOL
    _assert_grads_close(acc_grads, grads)


@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_objective_matches_trl(tokenizer_dirs, tmp_path, center):
    """A one-label classifier scores right-padded rows as ``RewardTrainer.compute_loss`` does."""
    from pyft.align.objectives import RewardObjective
    from pyft.models import load_reward_model

    trl_reward = pytest.importorskip("trl.trainer.reward_trainer")
    torch.manual_seed(0)  # the new score head
    model = load_reward_model(make_tiny_model(tmp_path / "rm", tokenizer_dirs["chatml"]), dtype="float32")
    pad = model.config.pad_token_id
    rows = _preference_rows(6, model.config.vocab_size)
    for r in rows:  # the classifier reads the last token that is not padding: keep padding ids out of the rows
        for k in r:
            r[k][r[k] == pad] = pad + 1
    examples = [{f"{side}_ids": np.concatenate([r["prompt"], r[side]]).tolist() for side in ("chosen", "rejected")}
                for r in rows]
    inputs = trl_reward.DataCollatorForPreference(pad_token_id=pad)(examples)
    stub = trainer_stub(trl_reward.RewardTrainer, args=types.SimpleNamespace(center_rewards_coefficient=center))
    model.zero_grad()
    trl_loss = trl_reward.RewardTrainer.compute_loss(stub, model, inputs)
    trl_loss.backward()
    trl_grads = _grads(model)
    trl_metrics = {k: v[-1] for k, v in stub._metrics["train"].items()}

    objective = RewardObjective(AlignSection(center_rewards_coefficient=center), pad)
    loss, metrics, grads = _pyft_step(objective, model, rows)
    assert abs(loss.item() - trl_loss.item()) <= LOSS_ATOL, (loss.item(), trl_loss.item())
    _assert_grads_close(grads, trl_grads)
    _assert_metrics_close(metrics, trl_metrics, ["accuracy", "margin", "mean_reward"])
