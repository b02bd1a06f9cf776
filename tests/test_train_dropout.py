"""``set_model_dropout``/``disable_dropout`` (reference: the same weights loaded by transformers with
the dropout fields of the config set, which is what "dropout p" means for each architecture).

Outputs are compared with ``torch.equal``: with the same seed both models draw the same dropout
masks in the same order and run the same float operations, so any difference is a real one.
"""

from __future__ import annotations

import pytest
import torch

from pyft.testing import make_tiny_model
from pyft.train.dropout import disable_dropout, set_model_dropout

#: The config fields that hold each architecture's dropout probabilities.
DROPOUT_FIELDS = {
    "llama": ("attention_dropout",),
    "qwen2": ("attention_dropout",),
    "mistral": ("attention_dropout",),
    "phi": ("attention_dropout", "resid_pdrop", "embd_pdrop"),  # nn.Dropout modules + functional attention
    "gpt_neox": ("attention_dropout", "hidden_dropout"),
    "gpt2": ("attn_pdrop", "resid_pdrop", "embd_pdrop"),  # nn.Dropout modules only
}


def _save_direct(arch: str, out):
    """Tiny random models of the architectures pyft.testing does not build, saved without dropout."""
    import transformers

    small = {"vocab_size": 128, "num_attention_heads": 4}
    config = {
        "mistral": lambda: transformers.MistralConfig(**small, hidden_size=64, intermediate_size=128,
                                                      num_hidden_layers=2, num_key_value_heads=2),
        "phi": lambda: transformers.PhiConfig(**small, hidden_size=64, intermediate_size=128, num_hidden_layers=2),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**small, hidden_size=64, intermediate_size=128,
                                                       num_hidden_layers=2),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                                                eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
    }[arch]()
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dirs(tokenizer_dirs, tmp_path_factory, single_thread):
    base = tmp_path_factory.mktemp("dropout")
    dirs = {arch: make_tiny_model(base / arch, tokenizer_dirs["chatml"], arch=arch) for arch in ("llama", "qwen2")}
    for arch in ("mistral", "phi", "gpt_neox", "gpt2"):
        dirs[arch] = _save_direct(arch, base / arch)
    return dirs


def _load(path, **config):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **config)


def _train_forward(model, ids, seed=7):
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", sorted(DROPOUT_FIELDS))
def test_set_model_dropout_matches_config_dropout(arch, model_dirs):
    p = 0.3
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = _load(model_dirs[arch])
    assert all(getattr(ours.config, f) == 0.0 for f in DROPOUT_FIELDS[arch])  # saved without dropout
    eval_out = ours.eval()(input_ids=ids).logits.detach()
    changed = set_model_dropout(ours, p)
    assert changed
    ref = _load(model_dirs[arch], **{f: p for f in DROPOUT_FIELDS[arch]})
    out, expected = _train_forward(ours, ids), _train_forward(ref, ids)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, eval_out, atol=1e-3)  # dropout really applied
    assert all(getattr(ours.config, f) == 0.0 for f in DROPOUT_FIELDS[arch])  # config left alone


@pytest.mark.parametrize("arch", sorted(DROPOUT_FIELDS))
def test_zero_model_dropout_equals_eval(arch, model_dirs):
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    model = _load(model_dirs[arch], **{f: 0.2 for f in DROPOUT_FIELDS[arch]})
    eval_out = model.eval()(input_ids=ids).logits.detach()
    assert not torch.allclose(_train_forward(model, ids), eval_out, atol=1e-3)
    set_model_dropout(model, 0.0)
    assert torch.equal(_train_forward(model, ids), eval_out)
    assert model.config.attention_dropout == 0.2 if arch != "gpt2" else model.config.attn_pdrop == 0.2


def test_disable_dropout_equals_eval_and_reaches_adapters(model_dirs):
    from pyft.peft import LoraConfig, apply_lora

    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    model = _load(model_dirs["phi"], attention_dropout=0.2, resid_pdrop=0.2, embd_pdrop=0.2)
    apply_lora(model, LoraConfig(r=4, dropout=0.1))
    eval_out = model.eval()(input_ids=ids).logits.detach()
    disable_dropout(model)
    assert torch.equal(_train_forward(model, ids), eval_out)
    assert all(m.p == 0.0 for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout))


def test_set_model_dropout_leaves_adapter_dropout(model_dirs):
    from pyft.peft import LoraConfig, apply_lora

    model = _load(model_dirs["llama"])
    adapted = apply_lora(model, LoraConfig(r=4, dropout=0.1))
    changed = set_model_dropout(model, 0.25)
    lora = [m for n, m in model.named_modules() if n.endswith("lora_dropout")]
    assert len(lora) == len(adapted) and all(m.p == 0.1 for m in lora)
    assert not any("lora_dropout" in name for name in changed)
    attention = [m for m in model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert len(attention) == model.config.num_hidden_layers and all(m.attention_dropout == 0.25 for m in attention)


@pytest.mark.parametrize("p", [-0.1, 1.0, 2])
def test_set_model_dropout_refuses_bad_probability(p):
    with pytest.raises(ValueError, match=r"model dropout must be in \[0, 1\)"):
        set_model_dropout(torch.nn.Dropout(0.1), p)
