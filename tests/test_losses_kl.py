"""The chunked KL to the base model of ``train.kl_to_base`` (:func:`pyft.losses.token_nll_kl_sum`).

Reference: the dense computation on a tiny model in float64, ``[R, T, V]`` logits of the policy and
of the reference at once, ``F.kl_div(log p_ref, log p_model, log_target=True)`` (``Σ p_model·(log
p_model − log p_ref)``) over the shifted target positions, and ``F.cross_entropy`` for the NLL.

Tolerances: both sides run the same float64 forward and differ only in how the per-token terms are
summed (chunks of ``c`` rows, then chunk totals) and possibly in the last bit of a logit, so they
agree to a few hundred float64 ulps (``u = 2⁻⁵³ ≈ 1.1e-16``) of the total; 1e-12 relative leaves
three orders of magnitude to spare, while a wrong term (a missing ``p`` weight, the KL's direction
reversed, an unshifted position, a smoothed KL) moves the value by 1e-3 or more.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyft.data
from pyft.align.reference import AdapterDisabledReference, FrozenCopyReference, StartingAdapterReference
from pyft.data import PackedCollator, PackedRowsCollator
from pyft.losses import IGNORE_INDEX, token_nll_kl_sum, token_nll_sum
from pyft.losses.forward import sft_loss_kl_sum
from pyft.peft import LoraConfig, adapters_disabled, apply_lora
from pyft.testing import make_tiny_model

from helpers import CONVERSATIONS, perturb_adapters, write_jsonl

RTOL = 1e-12
CHUNKS = (1, 5, 64, 4096)


@pytest.fixture(scope="module")
def tiny(tokenizer_dirs, tmp_path_factory, single_thread):
    """A tiny Llama directory, and the same conversations prepared unpacked and packed (bfd)."""
    base = tmp_path_factory.mktemp("kl")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="llama")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    pyft.data.prepare(src, model, base / "plain")
    pyft.data.prepare(src, model, base / "packed", pack="bfd", max_len=160)
    return {"model": model, "plain": pyft.data.load(base / "plain"), "packed": pyft.data.load(base / "packed")}


def _batches(tiny) -> dict[str, dict[str, torch.Tensor]]:
    plain = [tiny["plain"][i] for i in range(len(tiny["plain"]))]
    packed = [tiny["packed"][i] for i in range(len(tiny["packed"]))]
    assert any(len(it["seq_lengths"]) > 1 for it in packed)  # rows hold several conversations
    return {"padded": PackedRowsCollator(0)(plain), "packed rows": PackedRowsCollator(0)(packed),
            "packed flat": PackedCollator()(packed)}


def _lora_model(tiny, seed=1, modules_to_save=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float64)
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0, modules_to_save=modules_to_save))
    model.double()
    perturb_adapters(model, seed)  # the policy differs from its base
    return model


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}


def _dense(model, ref_logits, batch, eps):
    """``(nll, kl)`` from full ``[R, T, V]`` logits (the reference's given)."""
    logits = model(**_inputs(batch), use_cache=False).logits
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1][keep], -1)
    ref_logp = F.log_softmax(ref_logits[:, :-1][keep], -1)
    nll = F.cross_entropy(logits[:, :-1][keep], batch["labels"][:, 1:][keep], reduction="sum", label_smoothing=eps)
    kl = F.kl_div(ref_logp, logp, log_target=True, reduction="sum")
    return nll, kl


@pytest.mark.parametrize("layout", ["padded", "packed rows", "packed flat"])
def test_chunked_kl_equals_the_dense_kl_and_its_gradient(tiny, layout):
    model = _lora_model(tiny)
    batch = _batches(tiny)[layout]
    reference = AdapterDisabledReference(4096)
    with torch.no_grad(), adapters_disabled(model):
        ref_logits = model(**_inputs(batch), use_cache=False).logits
    params = [p for p in model.parameters() if p.requires_grad]
    beta = 0.7
    nll, kl = _dense(model, ref_logits, batch, 0.1)
    want_grads = torch.autograd.grad(nll + beta * kl, params)
    assert kl > 1e-3  # the adapters moved the policy: a real comparison, not 0 == 0
    for chunk in CHUNKS:
        for eps in (0.0, 0.1):
            got_nll, got_kl = sft_loss_kl_sum(model, batch, chunk, eps,
                                              lambda inputs: reference.forward_hidden(model, inputs))
            assert got_kl.item() == pytest.approx(kl.item(), rel=RTOL), (chunk, eps)
            if eps:
                assert got_nll.item() == pytest.approx(nll.item(), rel=RTOL), chunk
                grads = torch.autograd.grad(got_nll + beta * got_kl, params)
                for g, w in zip(grads, want_grads):
                    assert torch.allclose(g, w, rtol=1e-9, atol=1e-12 * w.abs().max()), chunk


def test_nll_is_token_nll_sums_and_the_kl_ignores_label_smoothing():
    g = torch.Generator().manual_seed(0)
    hidden, ref_hidden = torch.randn(2, 9, 8, generator=g), torch.randn(2, 9, 8, generator=g)
    labels = torch.randint(0, 11, (2, 9), generator=g)
    labels[0, :3] = IGNORE_INDEX
    head, ref_head = nn.Linear(8, 11), nn.Linear(8, 11)
    kls = []
    for eps in (0.0, 0.2):
        nll, kl = token_nll_kl_sum(hidden, labels, head, ref_hidden, ref_head, 3, eps)
        # The same CE terms in float32: sums of the same per-token values, in another order at most.
        assert nll.item() == pytest.approx(token_nll_sum(hidden, labels, head, 3, eps).item(), rel=1e-6)
        kls.append(kl)
    assert torch.equal(kls[0], kls[1])
    # KL(p ‖ p) = 0 exactly, and it is not symmetric.
    assert token_nll_kl_sum(hidden, labels, head, hidden, head)[1].item() == 0.0
    forward = token_nll_kl_sum(hidden, labels, head, ref_hidden, ref_head)[1]
    backward = token_nll_kl_sum(ref_hidden, labels, ref_head, hidden, head)[1]
    assert forward > 0 and backward > 0 and abs(forward - backward) > 1e-3


def test_gradcheck_of_the_chunked_kl():
    """Finite differences of the chunked KL (float64) in the hidden states and the head's weight,
    through the checkpointed chunks; the reference gets no gradient."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    ref_hidden = torch.randn(2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    ref_weight = torch.randn(7, 4, dtype=torch.float64, generator=g)
    labels = torch.randint(0, 7, (2, 6), generator=g)
    labels[1, 4:] = IGNORE_INDEX

    def kl(h, w):
        return token_nll_kl_sum(h, labels, lambda x: x @ w.T, ref_hidden, lambda x: x @ ref_weight.T, 2)[1]

    assert torch.autograd.gradcheck(kl, (hidden, weight))
    token_nll_kl_sum(hidden, labels, lambda x: x @ weight.T, ref_hidden, lambda x: x @ ref_weight.T, 2)[1].backward()
    assert ref_hidden.grad is None and hidden.grad is not None


@pytest.mark.parametrize("kind", ["starting adapter", "frozen copy"])
def test_other_references_give_the_dense_kl_and_gradient(tiny, kind):
    """A continued adapter (its starting tensors swapped in, also in the trained ``lm_head`` and
    during backward's recomputation) and a frozen copy (full fine-tuning)."""
    model = _lora_model(tiny, modules_to_save=["lm_head"])
    batch = _batches(tiny)["packed rows"]
    start = copy.deepcopy(model)
    kinds = {"starting adapter": StartingAdapterReference, "frozen copy": FrozenCopyReference}
    reference = kinds[kind](model, 4096)
    perturb_adapters(model, seed=2)  # training moved on from the start
    with torch.no_grad():
        model.lm_head.trained_module.weight.mul_(1.1)
        ref_logits = start(**_inputs(batch), use_cache=False).logits
    params = [p for p in model.parameters() if p.requires_grad]
    nll, kl = _dense(model, ref_logits, batch, 0.0)
    want = torch.autograd.grad(nll + kl, params)
    got_nll, got_kl = sft_loss_kl_sum(model, batch, 7, 0.0, lambda inputs: reference.forward_hidden(model, inputs))
    assert kl > 1e-3 and got_kl.item() == pytest.approx(kl.item(), rel=RTOL)
    for g, w in zip(torch.autograd.grad(got_nll + got_kl, params), want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12 * w.abs().max())
    assert all(p.grad is None for m in reference.modules() for p in m.parameters())
