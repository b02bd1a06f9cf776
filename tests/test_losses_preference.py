"""pyft.losses.preference against TRL 1.16's own code.

TRL's trainer methods (``DPOTrainer._compute_loss``, ``KTOTrainer._compute_loss``,
``ORPOTrainer.odds_ratio_loss``, ``CPOTrainer.cpo_loss``, ``RewardTrainer.compute_loss``) run unbound
on a stand-in ``self`` with the attributes they read, and on a fake model that returns per-token
log-probs built from leaf tensors. pyft's loss gets the same sequence log-probs; values, gradients
with respect to the per-token log-probs and the logged metrics must agree.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from pyft.losses.preference import (
    DPO_LOSS_TYPES,
    cpo_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    log1mexp,
    orpo_loss,
    reward_model_loss,
)
from trl_oracle import CpuAccelerator, trainer_stub, trl_kl_rotation

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_reward = pytest.importorskip("trl.trainer.reward_trainer")

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")
ATOL = 1e-6


class _FusedHeadLM:
    """A causal LM patched with TRL's fused head (``add_fused_lm_head``), reduced to its contract:
    per-token log-probs ``[R, T-1]`` of ``labels[:, 1:]``, zero where the label is -100.

    ``per_token`` maps each ``input_ids`` tensor (by identity) to the log-probs to return.
    """

    def __init__(self, *per_token: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.per_token = per_token
        self.calls = 0

    def __call__(self, *, input_ids, labels, fused_lm_head, **kwargs):
        assert fused_lm_head
        (tok,) = [t for ids, t in self.per_token if ids is input_ids]
        self.calls += 1
        g = torch.Generator().manual_seed(self.calls)
        shape = tok.shape
        return types.SimpleNamespace(
            log_probs=tok.masked_fill(labels[:, 1:] == -100, 0.0),
            entropy=torch.rand(shape, generator=g),
            mean_logits=torch.randn(shape, generator=g),
            is_top1=torch.rand(shape, generator=g) > 0.5,
        )


def _random_ids(g: torch.Generator, lo: int, hi: int) -> list[int]:
    n = int(torch.randint(lo, hi + 1, (1,), generator=g))
    return torch.randint(3, 500, (n,), generator=g).tolist()


def _token_logps(g: torch.Generator, shape) -> torch.Tensor:
    """Realistic per-token log-probs in [-5, 0)."""
    return -5.0 * torch.rand(shape, generator=g, dtype=torch.float32) - 1e-4


def _leaf_pair(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent leaves with the values of ``t`` (one for TRL, one for pyft)."""
    return t.clone().requires_grad_(True), t.clone().requires_grad_(True)


def _assert_close(actual, expected, atol=ATOL, what=""):
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, what
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}\n{actual}\n{expected}"


# --------------------------------------------------------------------------------------------------------------- DPO


def _dpo_case(seed: int, n_pairs: int = 6):
    """TRL-collated preference batch (varying prompt/completion lengths), per-token log-probs and
    reference log-probs a few nats away from the policy's."""
    g = torch.Generator().manual_seed(seed)
    examples = [{"prompt_ids": _random_ids(g, 1, 6), "chosen_ids": _random_ids(g, 1, 12),
                 "rejected_ids": _random_ids(g, 1, 12)} for _ in range(n_pairs)]
    examples[0]["rejected_ids"] = examples[0]["chosen_ids"]
    batch = trl_dpo.DataCollatorForPreference(pad_token_id=0)(examples)
    tok = _token_logps(g, (2 * n_pairs, batch["input_ids"].shape[1] - 1))
    logps = (tok * batch["completion_mask"][:, 1:]).sum(1)
    ref = logps + 2.0 * torch.randn(2 * n_pairs, generator=g)
    # Pair 0 is a tie (rejected = chosen, same log-probs): no reward accuracy, zero margin.
    assert batch["input_ids"][0].equal(batch["input_ids"][n_pairs])
    tok[n_pairs], ref[n_pairs] = tok[0], ref[0]
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:n_pairs], ref[n_pairs:]
    return batch, tok


def _run_dpo_both(batch, tok, *, beta=0.1, loss_types=("sigmoid",), loss_weights=None, label_smoothing=0.0,
                  f_divergence="reverse_kl", f_alpha=1.0):
    """(TRL loss, TRL metrics, TRL grad, pyft loss, pyft metrics, pyft grad)."""
    loss_types = list(loss_types)
    weights = [1.0] * len(loss_types) if loss_weights is None else list(loss_weights)
    tok_trl, tok_pyft = _leaf_pair(tok)
    stub = trainer_stub(beta=beta, loss_types=loss_types, loss_weights=weights, label_smoothing=label_smoothing,
                         f_divergence_type=f_divergence, f_alpha_divergence_coef=f_alpha, ld_alpha=None,
                         use_weighting=False, precompute_ref_logps=True, args=types.SimpleNamespace(discopop_tau=0.05))
    trl_loss = trl_dpo.DPOTrainer._compute_loss(stub, _FusedHeadLM((batch["input_ids"], tok_trl)), dict(batch), False)
    trl_loss.backward()

    b = len(batch["ref_chosen_logps"])
    mask = batch["completion_mask"]
    shift = mask[:, 1:]
    logps = (tok_pyft * shift).sum(1)
    lengths = mask.sum(1).float()
    sft_nll = -tok_pyft[:b][shift[:b].bool()].mean()
    losses, metrics = dpo_loss(logps[:b], logps[b:], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                               beta=beta, loss_type=loss_types, loss_weights=loss_weights,
                               label_smoothing=label_smoothing, f_divergence=f_divergence, f_alpha=f_alpha,
                               len_c=lengths[:b], len_r=lengths[b:], sft_nll=sft_nll)
    pyft_loss = losses.mean()
    pyft_loss.backward()
    return trl_loss, stub._metrics["train"], tok_trl.grad, pyft_loss, metrics, tok_pyft.grad


def _check_dpo(seed, **options):
    batch, tok = _dpo_case(seed)
    trl_loss, trl_metrics, trl_grad, pyft_loss, metrics, pyft_grad = _run_dpo_both(batch, tok, **options)
    assert torch.isfinite(trl_loss)
    _assert_close(pyft_loss.detach(), trl_loss.detach(), what="loss")
    assert trl_grad.abs().max() > 0
    _assert_close(pyft_grad, trl_grad, what="grad")
    for key in PAIR_METRICS:
        _assert_close(metrics[key].mean(), trl_metrics[key][-1], what=key)


SMOOTHING = {"robust": 0.1, "exo_pair": 0.1, "aot": 0.1, "aot_unpaired": 0.1}


def test_every_dpo_loss_type_is_covered():
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                                   "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}


@pytest.mark.parametrize("f_divergence,f_alpha", [("reverse_kl", 1.0), ("forward_kl", 1.0), ("js_divergence", 1.0),
                                                  ("alpha_divergence", 0.5)])
@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_matches_trl(loss_type, f_divergence, f_alpha):
    _check_dpo(7, loss_types=[loss_type], label_smoothing=SMOOTHING.get(loss_type, 0.0), f_divergence=f_divergence,
               f_alpha=f_alpha)


@pytest.mark.parametrize("seed", [1, 2])
def test_dpo_mpo_combination_matches_trl(seed):
    """MPO: ``sigmoid`` + ``bco_pair`` + ``sft`` with weights 0.8, 0.2, 1.0."""
    _check_dpo(seed, beta=0.25, loss_types=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])


def test_dpo_beta_and_alpha_one_limit_match_trl():
    _check_dpo(3, beta=0.5, loss_types=["sigmoid", "ipo"], f_divergence="alpha_divergence", f_alpha=1.0)


def test_dpo_sigmoid_label_smoothing_is_cdpo():
    """TRL 1.16 ignores ε for ``sigmoid``; pyft's ``sigmoid`` with ε > 0 is cDPO, the form of TRL ≤ 0.24
    (spec: ``−logσ(βΔ)(1−ε) − logσ(−βΔ)ε``), which TRL 1.16 still computes in CPO's ``sigmoid`` loss."""
    eps, beta = 0.1, 0.1
    batch, tok = _dpo_case(11)
    _, _, _, plain_loss, _, _ = _run_dpo_both(batch, tok, beta=beta)
    trl_loss, _, _, cdpo_loss, _, _ = _run_dpo_both(batch, tok, beta=beta, label_smoothing=eps)
    _assert_close(plain_loss.detach(), trl_loss.detach(), what="ε=0 vs TRL")  # TRL ignores ε
    assert abs(cdpo_loss.item() - trl_loss.item()) > 1e-3  # pyft does not

    b = len(batch["ref_chosen_logps"])
    lr = (tok * batch["completion_mask"][:, 1:]).sum(1) - torch.cat([batch["ref_chosen_logps"],
                                                                     batch["ref_rejected_logps"]])
    delta = lr[:b] - lr[b:]
    spec = (-torch.nn.functional.logsigmoid(beta * delta) * (1 - eps)
            - torch.nn.functional.logsigmoid(-beta * delta) * eps).mean()
    _assert_close(cdpo_loss.detach(), spec, what="cDPO vs spec")
    stub = trainer_stub(beta=beta, loss_type="sigmoid", label_smoothing=eps, simpo_gamma=0.5, alpha=0.0)
    cpo_losses, _, _ = trl_cpo.CPOTrainer.cpo_loss(stub, lr[:b], lr[b:])
    _assert_close(cdpo_loss.detach(), cpo_losses.mean(), what="cDPO vs TRL's label-smoothed sigmoid")


def test_dpo_rejects_bad_options():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="exo_pair"):
        dpo_loss(x, x, x, x, loss_type="exo_pair")
    with pytest.raises(ValueError, match="len_c"):
        dpo_loss(x, x, x, x, loss_type="ipo")
    with pytest.raises(ValueError, match="sft_nll"):
        dpo_loss(x, x, x, x, loss_type="sft")
    with pytest.raises(ValueError, match="loss_weights"):
        dpo_loss(x, x, x, x, loss_type=["sigmoid", "hinge"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        dpo_loss(x, x, x, x, loss_type="dpo")


# --------------------------------------------------------------------------------------------------------------- KTO


def _kto_kl_completions(examples: list[dict]) -> None:
    """Add TRL's own KL completions (:func:`trl_oracle.trl_kl_rotation`) to a batch of examples."""
    kl = trl_kl_rotation()({"completion_ids": [e["completion_ids"] for e in examples]})["KL_completion_ids"]
    for e, k in zip(examples, kl):
        e["KL_completion_ids"] = k


def _kto_case(seed: int, labels: list[bool], kl_shift: float):
    """A TRL-collated KTO batch; the reference of the KL pairs is ``kl_shift`` nats below the policy on average,
    so TRL's KL estimate is about ``kl_shift`` (negative: clamped to 0)."""
    g = torch.Generator().manual_seed(seed)
    examples = [{"prompt_ids": _random_ids(g, 1, 6), "completion_ids": _random_ids(g, 1, 12), "label": lab}
                for lab in labels]
    _kto_kl_completions(examples)
    n = len(labels)
    batch = trl_kto.DataCollatorForUnpairedPreference(pad_token_id=0)(examples)
    tok = _token_logps(g, (n, batch["input_ids"].shape[1] - 1))
    kl_tok = _token_logps(g, (n, batch["KL_input_ids"].shape[1] - 1))
    logps = (tok * batch["completion_mask"][:, 1:]).sum(1)
    kl_logps = (kl_tok * batch["KL_completion_mask"][:, 1:]).sum(1)
    batch["ref_logps"] = logps + 2.0 * torch.randn(n, generator=g)
    batch["ref_KL_logps"] = kl_logps - kl_shift + 0.5 * torch.randn(n, generator=g)
    return batch, tok, kl_tok


KTO_CASES = {
    # name: (loss_type, labels, desirable_weight, kl_shift)
    "kto-imbalanced-kl-positive": ("kto", [True, False, False, False] * 2, 3.0, 1.5),
    "kto-imbalanced-kl-negative": ("kto", [False, False, True, False] * 2, 3.0, -2.0),
    "kto-balanced": ("kto", [True, False] * 3, 1.0, 0.7),
    "apo_zero_unpaired-imbalanced": ("apo_zero_unpaired", [True, False, False, False] * 2, 3.0, 1.5),
}


@pytest.mark.parametrize("case", list(KTO_CASES))
def test_kto_matches_trl(case):
    loss_type, labels, desirable_weight, kl_shift = KTO_CASES[case]
    beta = 0.1
    batch, tok, kl_tok = _kto_case(5, labels, kl_shift)
    tok_trl, tok_pyft = _leaf_pair(tok)

    stub = trainer_stub(beta=beta, loss_type=loss_type, desirable_weight=desirable_weight, undesirable_weight=1.0,
                         precompute_ref_logps=True, calculate_KL=loss_type == "kto")
    stub._compute_kl_logps = types.MethodType(trl_kto.KTOTrainer._compute_kl_logps, stub)
    model = _FusedHeadLM((batch["input_ids"], tok_trl), (batch["KL_input_ids"], kl_tok))
    trl_loss = trl_kto.KTOTrainer._compute_loss(stub, model, dict(batch), False)
    trl_loss.backward()
    trl_metrics = stub._metrics["train"]

    logps = (tok_pyft * batch["completion_mask"][:, 1:]).sum(1)
    kl = 0.0
    if loss_type == "kto":
        kl_logps = (kl_tok * batch["KL_completion_mask"][:, 1:]).sum(1)
        raw_kl = kto_kl_estimate(kl_logps, batch["ref_KL_logps"])
        assert (raw_kl > 0.5) if kl_shift > 0 else (raw_kl < -0.5)  # the case tests what it says
        kl = raw_kl
    losses, m = kto_loss(logps, batch["ref_logps"], batch["label"], kl, beta=beta, desirable_weight=desirable_weight,
                         loss_type=loss_type)
    pyft_loss = losses.mean()
    pyft_loss.backward()

    _assert_close(pyft_loss.detach(), trl_loss.detach(), what="loss")
    assert tok_trl.grad.abs().max() > 0
    _assert_close(tok_pyft.grad, tok_trl.grad, what="grad")
    # Metrics as pyft's KTO objective reduces them: per-kind sums over per-kind counts.
    d = m["desirable"]
    nd, nu = int(d.sum()), int((~d).sum())
    ours = {"kl": m["kl"], "rewards/chosen": m["rewards"][d].sum() / nd, "logps/chosen": m["logps"][d].sum() / nd,
            "rewards/rejected": m["rewards"][~d].sum() / nu, "logps/rejected": m["logps"][~d].sum() / nu}
    ours["rewards/margins"] = ours["rewards/chosen"] - ours["rewards/rejected"]
    for key, value in ours.items():
        _assert_close(value, trl_metrics[key][-1], what=key)
    if loss_type == "kto" and kl_shift < 0:
        assert trl_metrics["kl"][-1] == 0.0 and m["kl"] == 0.0


def test_kto_rejects_unknown_loss_type():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown KTO loss type"):
        kto_loss(x, x, torch.ones(2, dtype=torch.bool), 0.0, loss_type="sigmoid")


# -------------------------------------------------------------------------------------------------------------- ORPO


def test_log1mexp_matches_trl():
    """Bit for bit, on a dense grid around the branch point −ln 2 and over the whole range."""
    x = torch.cat([torch.linspace(-0.8, -0.4, 2001), -torch.logspace(-7, 1.8, 500),
                   torch.tensor([-0.6932, -math.log(2), -0.6931])])
    a, b = _leaf_pair(x)
    ours, theirs = log1mexp(a), trl_orpo.log1mexp(b)
    assert torch.equal(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_matches_trl(beta):
    """pyft returns ``−β·logσ(log_odds)`` (added to the NLL); TRL returns ``β·logσ(log_odds)`` (subtracted)."""
    g = torch.Generator().manual_seed(3)
    # Average per-token log-probs on both sides of −ln 2 (log1mexp's two branches).
    avg = torch.cat([-0.69 * torch.rand(8, generator=g) - 1e-3, -0.7 - 2.5 * torch.rand(8, generator=g)])
    avg = avg[torch.randperm(16, generator=g)]
    c_trl, c_pyft = _leaf_pair(avg[:8])
    r_trl, r_pyft = _leaf_pair(avg[8:])
    assert (avg[:8] > -math.log(2)).any() and (avg[:8] < -math.log(2)).any()

    stub = types.SimpleNamespace(beta=beta, accelerator=CpuAccelerator())
    trl_losses, trl_rc, trl_rr, trl_ratio, trl_log_odds = trl_orpo.ORPOTrainer.odds_ratio_loss(stub, c_trl, r_trl)
    (-trl_losses.mean()).backward()  # TRL's total is nll − mean(losses)
    losses, metrics = orpo_loss(c_pyft, r_pyft, beta=beta)
    losses.mean().backward()

    _assert_close(losses.detach(), -trl_losses.detach(), what="losses")
    _assert_close(c_pyft.grad, c_trl.grad, what="grad chosen")
    _assert_close(r_pyft.grad, r_trl.grad, what="grad rejected")
    _assert_close(metrics["rewards/chosen"], trl_rc, what="rewards/chosen")
    _assert_close(metrics["rewards/rejected"], trl_rr, what="rewards/rejected")
    _assert_close(metrics["log_odds_ratio"].mean(), trl_ratio, what="log_odds_ratio")
    _assert_close(metrics["log_odds_chosen"].mean(), trl_log_odds, what="log_odds_chosen")


# ---------------------------------------------------------------------------------------------------- CPO/SimPO/AlphaPO


CPO_CASES = {
    # name: (loss_type, label_smoothing, alpha, averaged log-probs)
    "sigmoid": ("sigmoid", 0.0, 0.0, False),
    "sigmoid-smoothed": ("sigmoid", 0.1, 0.0, False),
    "hinge": ("hinge", 0.0, 0.0, False),
    "ipo": ("ipo", 0.0, 0.0, True),
    "simpo": ("simpo", 0.0, 0.0, True),
    "simpo-smoothed": ("simpo", 0.1, 0.0, True),
    "alphapo-simpo": ("simpo", 0.0, 0.3, True),
    "alphapo-sigmoid": ("sigmoid", 0.0, 0.3, True),
}


@pytest.mark.parametrize("case", list(CPO_CASES))
def test_cpo_matches_trl(case):
    loss_type, eps, alpha, averaged = CPO_CASES[case]
    beta, gamma = 0.1 if not averaged else 2.0, 0.5
    g = torch.Generator().manual_seed(9)
    n = 8
    lengths = torch.randint(2, 30, (2 * n,), generator=g).float()
    logps = _token_logps(g, (2 * n,)) * lengths / 2.5  # a sum of `lengths` tokens, about -1 nat each
    if averaged:
        logps = logps / lengths
    c_trl, c_pyft = _leaf_pair(logps[:n])
    r_trl, r_pyft = _leaf_pair(logps[n:])

    stub = types.SimpleNamespace(beta=beta, loss_type=loss_type, label_smoothing=eps, simpo_gamma=gamma, alpha=alpha,
                                 accelerator=CpuAccelerator())
    trl_losses, trl_rc, trl_rr = trl_cpo.CPOTrainer.cpo_loss(stub, c_trl, r_trl)
    trl_losses.mean().backward()
    losses, metrics = cpo_loss(c_pyft, r_pyft, beta=beta, loss_type=loss_type, label_smoothing=eps,
                               simpo_gamma=gamma, alpha=alpha)
    losses.mean().backward()

    _assert_close(losses.detach(), trl_losses.detach(), what="losses")
    assert c_trl.grad.abs().max() > 0
    _assert_close(c_pyft.grad, c_trl.grad, what="grad chosen")
    _assert_close(r_pyft.grad, r_trl.grad, what="grad rejected")
    _assert_close(metrics["rewards/chosen"], trl_rc, what="rewards/chosen")
    _assert_close(metrics["rewards/rejected"], trl_rr, what="rewards/rejected")
    _assert_close(metrics["rewards/accuracies"], (trl_rc > trl_rr).float(), what="rewards/accuracies")
    _assert_close(metrics["rewards/margins"], trl_rc - trl_rr, what="rewards/margins")


def test_cpo_rejects_unknown_loss_type():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown CPO loss type"):
        cpo_loss(x, x, loss_type="robust")


# ------------------------------------------------------------------------------------------------------ reward model


class _ScalarHead:
    """A sequence classifier with one label: ``.logits [2B, 1]``."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, **inputs):
        return types.SimpleNamespace(logits=self.logits)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_model_matches_trl(with_margin, center):
    g = torch.Generator().manual_seed(4)
    n = 6
    scores = 3.0 * torch.randn(2 * n, 1, generator=g)
    s_trl, s_pyft = _leaf_pair(scores)
    inputs = {"input_ids": torch.randint(3, 500, (2 * n, 7), generator=g),
              "attention_mask": torch.ones(2 * n, 7, dtype=torch.int64)}
    margin = None
    if with_margin:
        margin = torch.rand(n, generator=g) * 2.0
        inputs["margin"] = margin

    stub = trainer_stub(args=types.SimpleNamespace(center_rewards_coefficient=center))
    trl_loss = trl_reward.RewardTrainer.compute_loss(stub, _ScalarHead(s_trl), inputs)
    trl_loss.backward()
    losses, metrics = reward_model_loss(s_pyft[:n, 0], s_pyft[n:, 0], margin=margin,
                                        center_rewards_coefficient=center)
    pyft_loss = losses.mean()
    pyft_loss.backward()

    _assert_close(pyft_loss.detach(), trl_loss.detach(), what="loss")
    _assert_close(s_pyft.grad, s_trl.grad, what="grad")
    trl_metrics = stub._metrics["train"]
    _assert_close(metrics["accuracy"].mean(), trl_metrics["accuracy"][-1], what="accuracy")
    _assert_close(metrics["margin"].mean(), trl_metrics["margin"][-1], what="margin")
