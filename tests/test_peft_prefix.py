"""Prefix tuning / P-tuning v2 against HF PEFT's PREFIX_TUNING on tiny Llama (MHA) and Qwen2 (GQA: 4 heads, 2 KV
heads): logits and gradients through `model(...)` and pyft's training path (`get_decoder()`, no cache), packed rows,
greedy generation, adapters saved by either loaded by the other, and the errors for adapters that do not fit."""

from __future__ import annotations

import json

import pytest
import torch

from pyft.peft import adapters_disabled, load_adapter
from pyft.peft.prefix import (
    MERGEABLE,
    NOT_MERGEABLE_REASON,
    PrefixConfig,
    apply_prefix_tuning,
    prefix_config_for,
    prefix_encoder,
    save_prefix_adapter,
)
from pyft.testing import make_tiny_model

# PEFT (the oracle) hands the prefix to transformers 5 under the deprecated name `past_key_values`
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

N = 5
IDS = torch.tensor([[5, 17, 9, 200, 31, 44, 8, 3], [7, 7, 120, 64, 2, 90, 11, 5]])
# fp32 on both sides. Without projection the operations are the same in the same order (bit-equal in practice).
# With projection PEFT runs the MLP once per batch row over all layers, pyft once per layer on the prefix rows
# (the batch summed first), so gradients are the same fp32 sums taken in another order: measured ≤ 5e-7.
TOL = 1e-6


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tokenizer_dirs, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("prefix") / request.param, tokenizer_dirs["chatml"],
                           arch=request.param)


def _base(model_dir, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)


def _peft(model_dir, projection, attn="sdpa"):
    from peft import PrefixTuningConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(_base(model_dir, attn), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N,
                                                                     prefix_projection=projection))


def _pair(model_dir, projection, attn="sdpa"):
    """PEFT's model and pyft's with the same prefix parameters (PEFT's random init copied)."""
    ref = _peft(model_dir, projection, attn)
    ours = _base(model_dir, attn)
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=N, projection=projection))
    prefix_encoder(ours).load_state_dict(ref.prompt_encoder["default"].state_dict())
    return ref, ours


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _decoder_logits(model, **inputs):
    """pyft's training path: the decoder without a cache, then the output layer."""
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden)


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters()}


def _zero(module):
    for p in module.parameters():
        p.grad = None


def test_gqa_shapes_and_config(model_dir, tmp_path):
    """PEFT's GQA rewrite: token_dim = head_dim * KV heads; the saved config is PEFT's, field for field."""
    for projection in (False, True):
        ref, ours = _pair(model_dir, projection)
        cfg = ours.config
        kv, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
        assert prefix_encoder(ours)().shape == (N, cfg.num_hidden_layers * 2 * kv * head_dim)
        ref.save_pretrained(tmp_path / f"peft{projection}")
        save_prefix_adapter(ours, tmp_path / f"ours{projection}")
        theirs = json.loads((tmp_path / f"peft{projection}" / "adapter_config.json").read_text())
        mine = json.loads((tmp_path / f"ours{projection}" / "adapter_config.json").read_text())
        assert mine == theirs
        assert mine["num_attention_heads"] == kv and mine["token_dim"] == kv * head_dim
    if model_dir.name == "qwen2":
        assert cfg.num_key_value_heads < cfg.num_attention_heads


def test_zero_init_as_peft(model_dir, tmp_path):
    """init_zero is PEFT's init_weights="zero": a zero prefix (with projection: the MLP's output layer at zero)."""
    from peft import PrefixTuningConfig, get_peft_model

    for projection in (False, True):
        ref = get_peft_model(_base(model_dir), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N,
                                                                  prefix_projection=projection, init_weights="zero"))
        ours = _base(model_dir)
        apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=N, projection=projection, init_zero=True))
        assert not prefix_encoder(ours)().any()
        ref.save_pretrained(tmp_path / f"peft{projection}")
        save_prefix_adapter(ours, tmp_path / f"ours{projection}")
        assert json.loads((tmp_path / f"ours{projection}" / "adapter_config.json").read_text()) == \
            json.loads((tmp_path / f"peft{projection}" / "adapter_config.json").read_text())


@pytest.mark.parametrize("projection", [False, True])
def test_logits_and_gradients_equal_peft(model_dir, projection):
    ref, ours = _pair(model_dir, projection)
    ref.train()
    ours.train()
    lr = ref(input_ids=IDS, labels=IDS)
    lo = ours(input_ids=IDS, labels=IDS)
    assert _rel(lo.logits, lr.logits) <= TOL
    lr.loss.backward()
    lo.loss.backward()
    want = _grads(ref.prompt_encoder["default"])
    got = _grads(prefix_encoder(ours))
    assert set(got) == set(want) == ({"embedding.weight"} | ({"transform.0.weight", "transform.0.bias",
                                                               "transform.2.weight", "transform.2.bias"}
                                                              if projection else set()))
    for name in want:
        assert _rel(got[name], want[name]) <= TOL, name
    # pyft's training path (decoder, no cache, explicit mask and positions): the same logits and gradients
    _zero(prefix_encoder(ours))
    logits = _decoder_logits(ours, input_ids=IDS)
    assert _rel(logits, lr.logits) <= TOL
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), IDS[:, 1:].flatten()).backward()
    for name, g in _grads(prefix_encoder(ours)).items():
        assert _rel(g, want[name]) <= TOL, name
    # only the prefix trains
    assert all(n.startswith("model.prefix_encoder.") for n, p in ours.named_parameters() if p.requires_grad)


def test_activation_checkpointing_keeps_the_prefix(model_dir):
    """With activation checkpointing (as `pyft train` turns it on) transformers drops the KV cache inside each
    layer; the prefix still reaches every layer, in the forward and in the recomputation, with PEFT's values
    (PEFT itself, checkpointed, loses it)."""
    ref, ours = _pair(model_dir, True)
    ref.train()
    lr = ref(input_ids=IDS, labels=IDS)
    lr.loss.backward()
    want = _grads(ref.prompt_encoder["default"])
    ours.train()
    kwargs = {"use_reentrant": False}
    if hasattr(ours, "activation_checkpointing_enable"):
        ours.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for through_decoder in (True, False):
        _zero(prefix_encoder(ours))
        if through_decoder:
            logits = _decoder_logits(ours, input_ids=IDS)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), IDS[:, 1:].flatten())
        else:
            out = ours(input_ids=IDS, labels=IDS)
            logits, loss = out.logits, out.loss
        assert _rel(logits, lr.logits) <= TOL
        loss.backward()
        for name, g in _grads(prefix_encoder(ours)).items():
            assert _rel(g, want[name]) <= TOL, (through_decoder, name)


def test_eager_attention_and_padding_mask(model_dir):
    """The eager path (an additive float mask) and a left-padded 2-D mask, through the decoder, against PEFT."""
    ref, ours = _pair(model_dir, False, attn="eager")
    mask = torch.ones_like(IDS)
    mask[1, :3] = 0
    with torch.no_grad():
        want = ref(input_ids=IDS, attention_mask=mask).logits
        assert _rel(_decoder_logits(ours, input_ids=IDS, attention_mask=mask), want) <= TOL
        assert _rel(ours(input_ids=IDS, attention_mask=mask).logits, want) <= TOL


# In fp32 a packed row runs its attention over other matrix shapes than each document alone, and the
# per-document gradients are added after each backward rather than inside one: the same sums rounded in another
# order, measured ≤ 4e-7 on logits but up to 1.3e-6 on the embedding gradient under projection. In float64 the
# same comparison is exact to ~1e-15, which shows it is only rounding: checked at 1e-12.
PACKED_TOL = {torch.float32: (TOL, 1e-5), torch.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("projection", [False, True])
def test_packed_row_equals_peft_per_document(model_dir, projection, dtype):
    """One packed row of 3 documents (positions restart, no mask, as PackedRowsCollator builds) plus a row of
    2 documents and a padding tail: each document gets PEFT's logits for it alone, and the prefix gradient of
    the summed loss is the sum of PEFT's per-document gradients."""
    logits_tol, grad_tol = PACKED_TOL[dtype]
    ref, ours = _pair(model_dir, projection)
    ref.to(dtype)
    ours.to(dtype)
    docs = [[[5, 17, 9, 200, 31], [44, 8, 3], [7, 120, 64, 2, 90, 11]],
            [[12, 13, 14, 15, 16, 17, 18], [40, 41, 42, 43]]]
    width = max(sum(len(d) for d in row) for row in docs) + 2
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    pos = torch.zeros_like(ids)
    spans = []
    for r, row in enumerate(docs):
        start = 0
        for d in row:
            ids[r, start:start + len(d)] = torch.tensor(d)
            pos[r, start:start + len(d)] = torch.arange(len(d))
            spans.append((r, start, len(d)))
            start += len(d)
        pos[r, start:] = torch.arange(width - start)  # the padding tail: its own pseudo-document
    logits = _decoder_logits(ours, input_ids=ids, position_ids=pos)
    loss = 0.0
    for r, start, length in spans:
        doc = ids[r:r + 1, start:start + length]
        want = ref(input_ids=doc).logits
        got = logits[r:r + 1, start:start + length]
        assert _rel(got, want) <= logits_tol, (r, start)
        torch.nn.functional.cross_entropy(want[0, :-1], doc[0, 1:], reduction="sum").backward()
        loss = loss + torch.nn.functional.cross_entropy(got[0, :-1], doc[0, 1:], reduction="sum")
    loss.backward()
    want_g = _grads(ref.prompt_encoder["default"])
    for name, g in _grads(prefix_encoder(ours)).items():
        assert _rel(g, want_g[name]) <= grad_tol, name
    # model(...) on the packed row too (it runs without a cache: packing needs the explicit mask)
    with torch.no_grad():
        out = ours(input_ids=ids, position_ids=pos)
    assert _rel(out.logits, logits) <= logits_tol


def test_generate_equals_peft_greedy(model_dir):
    """Greedy decoding with the KV cache (the prefix written once, then one token per step) equals greedy
    decoding with PEFT's forward recomputed on the whole sequence at every step. (PEFT 0.21.2's own
    `generate` drops the prefix under transformers 5: it is not the oracle.)"""
    ref, ours = _pair(model_dir, False)
    new = 8
    seq, steps = IDS, []
    with torch.no_grad():
        for _ in range(new):
            steps.append(ref(input_ids=seq).logits[:, -1])
            seq = torch.cat([seq, steps[-1].argmax(-1, keepdim=True)], dim=1)
        out = ours.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=new, do_sample=False,
                            return_dict_in_generate=True, output_logits=True)
        assert torch.equal(out.sequences, seq)
        # each step's logits too (one new token against the cache vs the whole sequence recomputed: ≤ 1e-6)
        for got, want in zip(out.logits, steps, strict=True):
            assert _rel(got, want) <= TOL
        cache = getattr(out, "cache", None) or out.past_key_values
        # prefix once + prompt + all generated tokens but the last (never fed back)
        assert cache.get_seq_length() == N + seq.shape[1] - 1
        no_cache = ours.generate(input_ids=IDS, max_new_tokens=new, do_sample=False, use_cache=False)
        assert torch.equal(no_cache, seq)


def test_generate_left_padded_batch(model_dir):
    """A left-padded batch: the 2-D mask gets the prefix's columns at every step and positions come from the mask
    (transformers' rule, shifted by n): equal to greedy decoding with PEFT's forward given the same mask and
    positions."""
    ref, ours = _pair(model_dir, False)
    mask = torch.ones_like(IDS)
    mask[1, :3] = 0
    ids = IDS.masked_fill(mask == 0, 0)
    new = 6
    seq, m = ids, mask
    with torch.no_grad():
        for _ in range(new):
            pos = (m.cumsum(-1) - 1).clamp_min(0)
            nxt = ref(input_ids=seq, attention_mask=m, position_ids=pos).logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], dim=1), torch.cat([m, torch.ones_like(nxt)], dim=1)
        out = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("projection", [False, True])
def test_pyft_adapter_loads_in_peft(model_dir, tmp_path, projection):
    from peft import PeftModel

    _, ours = _pair(model_dir, projection)
    save_prefix_adapter(ours, tmp_path / "ours")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].dtype == torch.float32
    peft_model = PeftModel.from_pretrained(_base(model_dir), tmp_path / "ours")
    with torch.no_grad():
        # with projection pyft computes the MLP per layer slice, the saved table in one matmul: a few ulps
        assert _rel(ours(input_ids=IDS).logits, peft_model(input_ids=IDS).logits) <= TOL


@pytest.mark.parametrize("projection", [False, True])
def test_peft_adapter_loads_in_pyft(model_dir, tmp_path, projection):
    ref = _peft(model_dir, projection)
    ref.save_pretrained(tmp_path / "peft")
    ours = _base(model_dir)
    adapted = load_adapter(ours, tmp_path / "peft")
    assert adapted == [f"model.layers.{i}.self_attn" for i in range(ours.config.num_hidden_layers)]
    ref.eval()
    with torch.no_grad():
        want = ref(input_ids=IDS).logits
        assert _rel(ours(input_ids=IDS).logits, want) <= TOL
        assert _rel(_decoder_logits(ours, input_ids=IDS), want) <= TOL
    assert not any(p.requires_grad for p in ours.parameters())
    # saved again by pyft: the same file content as PEFT's
    save_prefix_adapter(ours, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text()) == \
        json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "again" / "adapter_model.safetensors")["prompt_embeddings"],
                       load_file(tmp_path / "peft" / "adapter_model.safetensors")["prompt_embeddings"])


def test_adapters_disabled_gives_the_base_model(model_dir):
    _, ours = _pair(model_dir, True)
    base = _base(model_dir)
    with torch.no_grad():
        want = base(input_ids=IDS).logits
        assert not torch.allclose(ours(input_ids=IDS).logits, want)
        with adapters_disabled(ours):
            assert torch.equal(ours(input_ids=IDS).logits, want)
            assert torch.equal(_decoder_logits(ours, input_ids=IDS), _decoder_logits(base, input_ids=IDS))
        assert not torch.allclose(ours(input_ids=IDS).logits, want)


def test_adamw_steps_reduce_the_loss_through_the_decoder(model_dir, tmp_path):
    ours = _base(model_dir)
    torch.manual_seed(0)
    apply_prefix_tuning(ours, prefix_config_for("prefix_tuning", num_virtual_tokens=4))
    params = [p for p in ours.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.cat([IDS[:1], IDS[1:]], dim=1)
    pos = torch.cat([torch.arange(8), torch.arange(8)])[None]  # two packed documents

    def loss():
        logits = _decoder_logits(ours, input_ids=ids, position_ids=pos)
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])

    first = float(loss().detach())
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < first - 0.05
    # a trained projection adapter saves the MLP's output, and loads back to the same logits
    save_prefix_adapter(ours, tmp_path / "trained")
    again = _base(model_dir)
    load_adapter(again, tmp_path / "trained", trainable=True)
    with torch.no_grad():
        assert _rel(again(input_ids=IDS).logits, ours(input_ids=IDS).logits) <= TOL
    assert [n for n, p in again.named_parameters() if p.requires_grad] == ["model.prefix_encoder.embedding.weight"]


def test_configs_and_names():
    assert PrefixConfig().num_virtual_tokens == 20 and not PrefixConfig().projection
    assert prefix_config_for("p_tuning_v2") == PrefixConfig(projection=False)
    assert prefix_config_for("prefix_tuning", num_virtual_tokens=8) == PrefixConfig(8, projection=True)
    for bad in ({"num_virtual_tokens": 0}, {"encoder_hidden_size": 0}, {"num_virtual_tokens": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PrefixConfig(**bad)
    with pytest.raises(ValueError, match="unknown prefix method"):
        prefix_config_for("p_tuning")
    assert MERGEABLE is False and "vLLM" in NOT_MERGEABLE_REASON and "llama.cpp" in NOT_MERGEABLE_REASON


def test_errors(tokenizer_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    llama = make_tiny_model(tmp_path / "llama", tokenizer_dirs["chatml"], arch="llama")
    qwen = make_tiny_model(tmp_path / "qwen2", tokenizer_dirs["chatml"], arch="qwen2")
    ref = _peft(qwen, False)
    ref.save_pretrained(tmp_path / "qwen_adapter")
    # made for another base model: the field that differs is named
    with pytest.raises(ValueError, match=r"adapter_config\.json: field `num_attention_heads` = 2 but this base "
                                         r"model needs 4"):
        load_adapter(_base(llama), tmp_path / "qwen_adapter")
    # a tensor whose shape does not fit the config
    adapter = tmp_path / "qwen_adapter"
    table = load_file(adapter / "adapter_model.safetensors")["prompt_embeddings"]
    save_file({"prompt_embeddings": table[:, :-1].contiguous()}, adapter / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: tensor `prompt_embeddings` has shape "
                                         r"\(5, 127\).*field `num_virtual_tokens` = 5"):
        load_adapter(_base(qwen), adapter)
    save_file({"prompt_embeddings": table, "extra": table.clone()}, adapter / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="found also `extra`"):
        load_adapter(_base(qwen), adapter)
    raw = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**raw, "num_virtual_tokens": "5"}))
    with pytest.raises(Exception, match="field `num_virtual_tokens` must be a positive integer"):
        load_adapter(_base(qwen), adapter)
    # twice, and attention implementations without the masks pyft builds
    model = _base(qwen)
    apply_prefix_tuning(model, PrefixConfig(num_virtual_tokens=3))
    with pytest.raises(ValueError, match="already has a prefix"):
        apply_prefix_tuning(model, PrefixConfig())
    model.get_decoder().config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation 'sdpa' or 'eager'"):
        _decoder_logits(model, input_ids=IDS)
    model.get_decoder().config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="4-D mask"):
        model(input_ids=IDS, attention_mask=torch.ones(2, 1, 8, 11, dtype=torch.bool))
