"""(IA)³ against HF PEFT's IA3: logits and gradients, adapters saved by either loaded by the other, and merging
equal to `merge_and_unload`, on tiny Llama and Qwen2 (biased q/k/v) models."""

from __future__ import annotations

import json

import pytest
import torch

from pyft.peft import Ia3Config, apply_ia3, load_adapter, merge_ia3, save_ia3_adapter
from pyft.peft.ia3 import ia3_modules
from pyft.testing import make_tiny_model

TARGETS = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD = ["down_proj"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tokenizer_dirs, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("ia3") / request.param, tokenizer_dirs["chatml"],
                           arch=request.param)


def _base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _peft(model_dir, tmp_path):
    """PEFT's IA3 with random vectors (init_ia3_weights=False), saved."""
    from peft import IA3Config, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(_base(model_dir), IA3Config(target_modules=TARGETS, feedforward_modules=FEEDFORWARD,
                                                            init_ia3_weights=False))
    peft_model.save_pretrained(tmp_path / "peft")
    return peft_model


IDS = torch.tensor([[5, 17, 9, 200, 31, 44, 8, 3], [7, 7, 120, 64, 2, 90, 11, 5]])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_peft_adapter_loads_with_equal_logits_and_gradients(model_dir, tmp_path):
    ref = _peft(model_dir, tmp_path)
    ours = _base(model_dir)
    adapted = load_adapter(ours, tmp_path / "peft", trainable=True)
    assert sorted(adapted) == sorted(n.removeprefix("base_model.model.") for n, m in ref.named_modules()
                                     if type(m).__name__ == "Linear" and hasattr(m, "ia3_l"))
    ff = {n: layer.is_feedforward for n, layer in ia3_modules(ours)}
    assert all(v == n.endswith("down_proj") for n, v in ff.items())
    ref.train()
    ours.train()
    lo, lr = ours(input_ids=IDS, labels=IDS), ref(input_ids=IDS, labels=IDS)
    # fp32 and the same operations in the same order on both sides (scale the input or output, then the
    # same matmul): what differs is at most a few ulps, far below 1e-6 relative
    assert _rel(lo.logits, lr.logits) <= 1e-6
    lo.loss.backward()
    lr.loss.backward()
    grads_ref = {n.removeprefix("base_model.model.").replace(".ia3_l.default", ".ia3_l"): p.grad
                 for n, p in ref.named_parameters() if "ia3_l" in n}
    grads_ours = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(grads_ours) == set(grads_ref)
    for name, g in grads_ours.items():
        assert _rel(g, grads_ref[name]) <= 1e-6, name
    # only the vectors train
    assert all("ia3_l" in n for n, p in ours.named_parameters() if p.requires_grad)


def test_pyft_adapter_loads_in_peft(model_dir, tmp_path):
    from peft import PeftModel

    ours = _base(model_dir)
    apply_ia3(ours, Ia3Config(targets=TARGETS, feedforward=FEEDFORWARD, init_ones=False))
    save_ia3_adapter(ours, tmp_path / "ours", base_model_name_or_path=str(model_dir))
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "IA3" and cfg["feedforward_modules"] == FEEDFORWARD
    ref = PeftModel.from_pretrained(_base(model_dir), tmp_path / "ours").eval()
    ours.eval()
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, ref(input_ids=IDS).logits) <= 1e-6
        plain = _base(model_dir)(input_ids=IDS).logits
        assert _rel(ours(input_ids=IDS).logits, plain) > 1e-3, "the adapter must change the logits"


def test_merge_equals_peft_merge_and_unload(model_dir, tmp_path):
    ref = _peft(model_dir, tmp_path).merge_and_unload()
    ours = _base(model_dir)
    load_adapter(ours, tmp_path / "peft")
    with torch.no_grad():
        before = ours(input_ids=IDS).logits
    merge_ia3(ours)
    assert not list(ia3_modules(ours))
    want = ref.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, want[name]), name  # W·l in float32 on both sides
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, before) <= 1e-5


def test_default_vectors_leave_the_model_unchanged_and_adapters_can_be_disabled(model_dir):
    from pyft.peft import adapters_disabled

    ours = _base(model_dir)
    with torch.no_grad():
        plain = ours(input_ids=IDS).logits
    apply_ia3(ours, Ia3Config(targets=TARGETS, feedforward=FEEDFORWARD))
    with torch.no_grad():
        assert torch.equal(ours(input_ids=IDS).logits, plain)
        for _, layer in ia3_modules(ours):
            layer.ia3_l.mul_(1.5)
        assert not torch.equal(ours(input_ids=IDS).logits, plain)
        with adapters_disabled(ours):
            assert torch.equal(ours(input_ids=IDS).logits, plain)


def test_config_errors():
    with pytest.raises(ValueError, match="feedforward"):
        Ia3Config(targets=["k_proj"], feedforward=["down_proj"])


def test_generate_with_an_ia3_adapter_equals_peft(model_dir, tmp_path):
    """`pyft generate --adapter` takes an IA3 adapter: greedy tokens equal PEFT's model.generate."""
    from pyft.generate import Generator, SamplingSettings
    from pyft.generate.prompts import Prompt

    ref = _peft(model_dir, tmp_path).eval()
    gen = Generator(model_dir, adapter=tmp_path / "peft", dtype="float32")
    chat = [{"role": "user", "content": "Hello there"}]
    got = gen.complete([Prompt(messages=chat)], SamplingSettings(max_new_tokens=8))[0]
    ids = torch.tensor([gen.encode(gen.prompt_text(Prompt(messages=chat)), chat=True)])
    with torch.no_grad():
        want = ref.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=gen.eos_token_ids,
                            pad_token_id=gen.pad_token_id)[0, ids.shape[1]:].tolist()
    end = next((i for i, t in enumerate(want) if t in gen.eos_token_ids), None)
    assert got.token_ids == (want if end is None else want[:end + 1])
