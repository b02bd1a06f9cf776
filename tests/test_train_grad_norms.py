"""Gradient norms per layer group (reference: ``torch.nn.utils.clip_grad_norm_``'s global norm and the
parameters' names) and the per-group exploding/vanishing warnings.

Tolerance of "Σ group² = global²": both sides start from the same float32 per-tensor norms; ours
squares them, sums each group's in float32 and takes a square root, the reference takes the
vector norm of all ``P`` of them. All terms are positive, so each side is within ``P·u`` relative
(``u = 2⁻²⁴``) of the exact sum of squares whatever the summation order, plus a few roundings for the
squares and roots: ``(2P + 8)·u`` on the squared norm.
"""

from __future__ import annotations

import math

import pytest
import torch

from pyft.testing import make_tiny_model
from pyft.train.grad_norms import GradientHealth, grad_norms_by_group, layer_groups

U32 = 2.0**-24


@pytest.fixture(scope="module")
def model_dirs(tokenizer_dirs, tmp_path_factory, single_thread):
    base = tmp_path_factory.mktemp("grad_norms")
    # llama: untied embeddings; qwen2: tied; 3 layers so block indices are not all 0/1
    return {arch: make_tiny_model(base / arch, tokenizer_dirs["chatml"], arch=arch, num_hidden_layers=3)
            for arch in ("llama", "qwen2")}


def _backward(model, dtype=torch.float32):
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    model.to(dtype).train()
    model(input_ids=ids, labels=ids).loss.backward()


def _global_norm(model) -> float:
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, math.inf))


def _by_name(model, prefix) -> float:
    """The reference group norm: the parameters whose names start with ``prefix``; each tensor's norm
    in float32 as ``clip_grad_norm_`` computes it (bf16 gradients converted first), combined in float64."""
    grads = [p.grad.float() for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None]
    return math.sqrt(sum(float(torch.linalg.vector_norm(g)) ** 2 for g in grads))


def _assert_sums_to_global(norms, model):
    n_params = sum(1 for p in model.parameters() if p.requires_grad and p.grad is not None)
    total = _global_norm(model)
    assert sum(v * v for v in norms.values()) == pytest.approx(total**2, rel=(2 * n_params + 8) * U32, abs=0)


def test_full_fine_tuning_groups(model_dirs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    _backward(model)
    norms = grad_norms_by_group(model)
    assert list(norms) == ["embeddings", "layers.0", "layers.1", "layers.2", "norm", "head"]
    _assert_sums_to_global(norms, model)
    # each group is exactly its parameters, by name (same per-tensor norms; ours combines ≤ 9 of them in
    # float32: (2·9 + 8)·u relative on the square, half that on the norm, rounded up to 32u)
    for group, prefix in [("embeddings", "model.embed_tokens."), ("layers.1", "model.layers.1."),
                          ("norm", "model.norm."), ("head", "lm_head.")]:
        assert norms[group] == pytest.approx(_by_name(model, prefix), rel=32 * U32)
    # frozen and gradient-less parameters are left out
    model.zero_grad(set_to_none=True)
    model.model.embed_tokens.weight.requires_grad_(False)
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    _backward(model)
    norms = grad_norms_by_group(model)
    assert list(norms) == ["layers.1", "layers.2", "norm", "head"]
    _assert_sums_to_global(norms, model)


def test_tied_embeddings_counted_once(model_dirs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    groups = layer_groups(model)
    assert "head" not in groups and sum(len(ps) for ps in groups.values()) == sum(1 for _ in model.parameters())
    _backward(model)
    norms = grad_norms_by_group(model, groups)
    assert list(norms) == ["embeddings", "layers.0", "layers.1", "layers.2", "norm"]
    _assert_sums_to_global(norms, model)
    assert norms["embeddings"] == pytest.approx(_by_name(model, "model.embed_tokens."), rel=8 * U32)


def test_lora_groups_hold_the_adapters(model_dirs):
    from transformers import AutoModelForCausalLM

    from pyft.peft import LoraConfig, apply_lora

    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    apply_lora(model, LoraConfig(r=4, modules_to_save=["lm_head"]))
    groups = layer_groups(model)
    assert list(groups) == ["layers.0", "layers.1", "layers.2", "head"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("lora_" in names[id(p)] for p in groups["layers.1"])
    assert len(groups["layers.1"]) == 2 * 7  # A and B of q, k, v, o, gate, up, down
    # B starts at zero, so train one step first: then A's gradients are not zero either
    _backward(model)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.zero_grad(set_to_none=True)
    _backward(model)
    norms = grad_norms_by_group(model, groups)
    _assert_sums_to_global(norms, model)
    assert norms["layers.2"] == pytest.approx(_by_name(model, "model.layers.2."), rel=32 * U32)


def test_bf16_gradients_are_normed_in_float32(model_dirs):
    """bf16 gradients: each tensor's norm stays float32 (clip_grad_norm_ rounds it to bf16, 2⁻⁸
    relative), so the reference is the float32 norm of the same values, converted: within the float32
    bound, far inside bf16's rounding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    _backward(model, torch.bfloat16)
    norms = grad_norms_by_group(model)
    assert norms["layers.0"] == pytest.approx(_by_name(model, "model.layers.0."), rel=32 * U32)
    exact = _by_name(model, "")
    n_params = sum(1 for _ in model.parameters())
    assert sum(v * v for v in norms.values()) == pytest.approx(exact**2, rel=(2 * n_params + 8) * U32)
    assert (2 * n_params + 8) * U32 < 2.0**-8 / 10  # the check could see a bf16 rounding of the norms


def test_no_gradients_gives_no_groups(model_dirs):
    from transformers import AutoModelForCausalLM

    assert grad_norms_by_group(AutoModelForCausalLM.from_pretrained(model_dirs["llama"])) == {}


# GradientHealth: the loop's rules, per group.

def _feed(health, sequence):
    """Feed ``[(step, norms)]``; the warnings as ``{step: text}``."""
    return {step: msg for step, norms in sequence if (msg := health.update(step, norms)) is not None}


def test_exploding_group_is_named():
    health = GradientHealth()
    steady = [(s, {"embeddings": 1.0, "layers.0": 0.5, "layers.1": 0.5, "head": 2.0}) for s in range(20)]
    assert _feed(health, steady) == {}
    warnings = _feed(health, [(20, {"embeddings": 1.0, "layers.0": 0.5, "layers.1": 6.0, "head": 2.0})])
    assert warnings == {20: "exploding gradients in layers.1: norm 6 is 12x its recent average"}


def test_worst_group_first_and_others_listed():
    health = GradientHealth()
    _feed(health, [(s, {"layers.0": 1.0, "layers.1": 1.0, "embeddings": 1.0}) for s in range(12)])
    msg = health.update(12, {"layers.0": 20.0, "layers.1": 50.0, "embeddings": 1e-9})
    assert msg == "exploding gradients in layers.1: norm 50 is 50x its recent average (also layers.0); " \
                  "vanishing in embeddings"


def test_vanishing_group_is_named():
    health = GradientHealth()
    seq = [(s, {"embeddings": 1.0, "layers.0": 1.0 if s < 15 else 1e-10}) for s in range(16)]
    assert _feed(health, seq) == {15: "vanishing gradients in layers.0: norm 1e-10; check the learning rate and "
                                      "the loss mask"}


def test_no_warning_in_the_first_ten_steps_and_one_per_fifty():
    health = GradientHealth()
    # a spike at step 5 is too early; the averages still learn from it
    seq = [(s, {"head": 100.0 if s == 5 else 1.0}) for s in range(10)]
    assert _feed(health, seq) == {}
    # vanishing from step 10 on: warned at 10, then not before 60
    seq = [(s, {"head": 0.0}) for s in range(10, 111)]
    assert list(_feed(health, seq)) == [10, 60, 110]


def test_running_average_is_the_loops():
    """Exponential average 0.9·avg + 0.1·norm, compared before the new norm joins (as Trainer._gradient_health)."""
    health = GradientHealth()
    avg = None
    for s, v in enumerate([1.0, 3.0, 0.5, 2.0] * 5):
        health.update(s, {"layers.0": v})
        avg = v if avg is None else 0.9 * avg + 0.1 * v
    assert health.averages["layers.0"] == avg
    # exactly 10x the average is not yet exploding; just above is
    assert health.update(20, {"layers.0": 10 * avg}) is None
    h2 = GradientHealth()
    h2.averages, h2.last_warning = {"layers.0": avg}, -(10**9)
    assert h2.update(20, {"layers.0": 10.01 * avg}).startswith("exploding gradients in layers.0")


def test_non_finite_norms_are_skipped():
    health = GradientHealth()
    _feed(health, [(s, {"norm": 1.0}) for s in range(12)])
    before = dict(health.averages)
    assert health.update(12, {"norm": math.inf}) is None and health.averages == before
    assert health.update(13, {"norm": math.nan}) is None and health.averages == before


def test_reward_model_score_is_the_head(model_dirs):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dirs["llama"], num_labels=1)
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids).logits.sum().backward()
    norms = grad_norms_by_group(model)
    assert list(norms) == ["embeddings", "layers.0", "layers.1", "layers.2", "norm", "head"]
    assert norms["head"] == pytest.approx(_by_name(model, "score."), rel=8 * U32)
    _assert_sums_to_global(norms, model)


def test_gpt2_style_names():
    """Blocks in ``h``, final norm ``ln_f``, position embeddings ``wpe`` (an embedding table, not ``other``)."""
    import transformers

    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)  # tied head
    groups = layer_groups(model)
    assert list(groups) == ["embeddings", "layers.0", "layers.1", "norm"]
    assert {id(p) for p in groups["embeddings"]} == {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    assert {id(p) for p in groups["norm"]} == {id(p) for p in model.transformer.ln_f.parameters()}
