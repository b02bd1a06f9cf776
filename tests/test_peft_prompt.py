"""Prompt tuning and P-tuning against HF PEFT's PROMPT_TUNING / P_TUNING on tiny Llama and Qwen2 models: initial
weights, logits and gradients (through `model(...)` and the training path `model.get_decoder()(...)`), packed rows
of several documents, generation, adapters saved by either loaded by the other, and the error messages.

PEFT returns logits for the virtual positions too; pyft removes them, so comparisons take PEFT's logits from
position `num_virtual_tokens` on."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from pyft.errors import DataError
from pyft.peft import (
    PromptTuningConfig,
    PTuningConfig,
    adapters_disabled,
    apply_p_tuning,
    apply_prompt_tuning,
    load_adapter,
    save_prompt_adapter,
)
from pyft.peft.prompt import MERGEABLE, NOT_MERGEABLE_REASON, prompt_module, remove_prompt
from pyft.testing import make_tiny_model

N = 5  # virtual tokens
IDS = torch.tensor([[5, 17, 9, 200, 31, 44, 8, 3], [7, 7, 120, 64, 2, 90, 11, 5]])
# the prompt kinds: (pyft config, PEFT config kwargs)
KINDS = {
    "prompt": (PromptTuningConfig(num_virtual_tokens=N), {"peft": "prompt"}),
    "p_tuning_mlp": (PTuningConfig(num_virtual_tokens=N, encoder_hidden_size=24), {"encoder": "MLP"}),
    "p_tuning_lstm": (PTuningConfig(num_virtual_tokens=N, encoder="lstm", encoder_hidden_size=12,
                                    encoder_num_layers=2), {"encoder": "LSTM"}),
}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tokenizer_dirs, tmp_path_factory, single_thread):
    return make_tiny_model(tmp_path_factory.mktemp("prompt") / request.param, tokenizer_dirs["chatml"],
                           arch=request.param)


def _base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _peft_config(kind: str, **extra):
    from peft import PromptEncoderConfig
    from peft import PromptTuningConfig as PeftPromptTuningConfig

    ours = KINDS[kind][0]
    if isinstance(ours, PromptTuningConfig):
        return PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, **extra)
    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N,
                               encoder_reparameterization_type=KINDS[kind][1]["encoder"],
                               encoder_hidden_size=ours.encoder_hidden_size, encoder_num_layers=ours.encoder_num_layers)


def _pair(model_dir, kind: str):
    """PEFT's model and pyft's, each built after `torch.manual_seed(0)`: pyft creates its parameters in PEFT's
    order, so they start equal (asserted by the callers)."""
    from peft import get_peft_model

    torch.manual_seed(0)
    ref = get_peft_model(_base(model_dir), _peft_config(kind))
    torch.manual_seed(0)
    ours = _base(model_dir)
    config = KINDS[kind][0]
    (apply_prompt_tuning if isinstance(config, PromptTuningConfig) else apply_p_tuning)(ours, config)
    return ref, ours


def _ref_params(ref) -> dict[str, torch.Tensor]:
    return {n.split(".default.")[1]: p for n, p in ref.named_parameters() if p.requires_grad}


def _our_params(ours) -> dict[str, torch.Tensor]:
    return {n.split("pyft_prompt.")[1]: p for n, p in ours.named_parameters() if p.requires_grad}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _decoder_logits(model, ids, positions=None):
    """The training path (pyft.losses.forward.forward_hidden): decoder hidden states, then the output layer."""
    if positions is None:
        positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    hidden = model.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden)


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_init_logits_and_gradients_as_peft(model_dir, kind):
    ref, ours = _pair(model_dir, kind)
    rp, op = _ref_params(ref), _our_params(ours)
    assert set(op) == set(rp)  # PEFT's parameter names (embedding, mlp_head.*, lstm_head.*)
    for name, p in op.items():
        assert torch.equal(p, rp[name]), name  # same random draws in the same order
    # only the prompt trains
    assert all(n.startswith("model.pyft_prompt.") for n, p in ours.named_parameters() if p.requires_grad)
    ref.train()
    ours.train()
    want = ref(input_ids=IDS).logits[:, N:]  # PEFT: [B, N + T, V]; pyft: [B, T, V]
    got = ours(input_ids=IDS).logits
    trained = _decoder_logits(ours, IDS)
    assert got.shape == trained.shape == IDS.shape + (want.shape[-1],)
    # fp32, and the same operations on the same inputs (the virtual tokens placed at positions 0..N-1, the real
    # tokens at N..): at most a few ulps apart, far below 1e-6 relative
    assert _rel(got, want) <= 1e-6
    assert _rel(trained, want) <= 1e-6
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (want * weights).sum().backward()
    (trained * weights).sum().backward()
    for name, p in op.items():
        assert p.grad is not None and _rel(p.grad, rp[name].grad) <= 1e-6, name
    with torch.no_grad():
        assert _rel(got, _base(model_dir)(input_ids=IDS).logits) > 1e-3, "the virtual tokens must change the logits"


@pytest.mark.parametrize("kind", ["prompt", "p_tuning_mlp"])
def test_packed_documents_each_see_their_own_virtual_tokens(model_dir, kind):
    """A packed row of 3 documents (and a row of 2 documents plus a padding tail, as PackedRowsCollator builds
    it): each document's logits equal PEFT's on that document alone, and the prompt gradients equal the sum of
    PEFT's per-document gradients."""
    ref, ours = _pair(model_dir, kind)
    docs = [[5, 17, 9, 200], [31, 44, 8, 3, 12, 90], [7, 120, 64], [2, 90, 11, 5, 6], [300, 301, 302]]
    rows = [[0, 1, 2], [3, 4]]
    width = max(sum(len(docs[d]) for d in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    where = {}
    for r, row in enumerate(rows):
        at = 0
        for d in row:
            ids[r, at:at + len(docs[d])] = torch.tensor(docs[d])
            positions[r, at:at + len(docs[d])] = torch.arange(len(docs[d]))
            where[d] = (r, at)
            at += len(docs[d])
        positions[r, at:] = torch.arange(width - at)  # the padding tail: its own pseudo-document
    ref.train()
    ours.train()
    logits = _decoder_logits(ours, ids, positions)
    assert logits.shape[:2] == ids.shape
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    loss = 0.0
    for d, doc in enumerate(docs):
        r, at = where[d]
        want = ref(input_ids=torch.tensor([doc])).logits[0, N:]
        got = logits[r, at:at + len(doc)]
        # the block-diagonal mask hides the other documents exactly (their attention weights are 0); what differs
        # is the summation order over the longer rows: a few ulps
        assert _rel(got, want) <= 1e-6, d
        (want * weights[r, at:at + len(doc)]).sum().backward()  # PEFT's gradients accumulate over the documents
        loss = loss + (got * weights[r, at:at + len(doc)]).sum()
    loss.backward()
    rp = _ref_params(ref)
    for name, p in _our_params(ours).items():
        assert _rel(p.grad, rp[name].grad) <= 1e-6, name


def test_left_padding_with_an_attention_mask_equals_the_row_alone(model_dir):
    """With an attention mask the virtual tokens go first and the real tokens still start at position N."""
    _, ours = _pair(model_dir, "prompt")
    short = [9, 200, 31, 44]
    padded = torch.tensor([[0, 0, 0, 0] + short, IDS[1].tolist()])
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        alone = ours(input_ids=torch.tensor([short])).logits
        second = ours(input_ids=IDS[1:]).logits
        # padding at position 0 (what generate passes) or 1 (older transformers): the real tokens are what counts
        for pad_position in (0, 1):
            positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, pad_position)
            both = ours(input_ids=padded, attention_mask=mask, position_ids=positions).logits
            assert _rel(both[0, 4:], alone[0]) <= 1e-6
            assert _rel(both[1], second[0]) <= 1e-6


@pytest.mark.filterwarnings("ignore:Position ids are not supported")  # PEFT drops generate's position ids
def test_generate_equals_peft_and_the_virtual_tokens_enter_once(model_dir):
    """Greedy tokens equal PEFT's. PEFT 0.21.2's cached generate re-inserts the virtual tokens at every step under
    transformers 5.x (it looks for `past_key_values` in the generation kwargs, which are now named `cache`), so
    the oracle is PEFT's `generate(use_cache=False)`, which runs PEFT's forward on the whole sequence each step."""
    ref, ours = _pair(model_dir, "p_tuning_mlp")
    ref.eval()
    ours.eval()
    ids = IDS[:1]
    seen = []
    hook = ours.get_decoder().register_forward_pre_hook(
        lambda m, a, k: seen.append(k["inputs_embeds"].shape[1] if k.get("inputs_embeds") is not None
                                    else k["input_ids"].shape[1]), with_kwargs=True, prepend=False)
    out = {"max_new_tokens": 8, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}
    with torch.no_grad():
        want = ref.generate(input_ids=ids, use_cache=False, **out)
        got = ours.generate(input_ids=ids, **out)
        no_cache = ours.generate(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **out)
    hook.remove()
    assert got.sequences.tolist() == want.sequences.tolist() == no_cache.sequences.tolist()
    # the logits of every step too (a decoding step at the wrong position can still pick the same tokens: that
    # gives ~5e-3 here); the cached steps attend over keys computed earlier, in another order of operations: a
    # few ulps (measured ≤ 3e-7)
    for mine, theirs in zip(got.logits, want.logits, strict=True):
        assert _rel(mine, theirs) <= 1e-6
    # with the cache: one prefill of T + N embeddings (our pre-hook ran first), then one token per step
    cached = seen[:8]
    assert cached == [ids.shape[1] + N] + [1] * 7


@pytest.mark.filterwarnings("ignore:Position ids are not supported")  # PEFT drops generate's position ids
def test_generate_command_with_a_prompt_adapter(model_dir, tmp_path):
    """`pyft generate --adapter` takes a PEFT prompt-tuning adapter (left padding, attention mask, KV cache)."""
    from pyft.generate import Generator, SamplingSettings
    from pyft.generate.prompts import Prompt

    ref, _ = _pair(model_dir, "prompt")
    ref.save_pretrained(tmp_path / "peft")
    ref.eval()
    gen = Generator(model_dir, adapter=tmp_path / "peft", dtype="float32")
    chats = [[{"role": "user", "content": "Hello there"}], [{"role": "user", "content": "Hi, how are you today?"}]]
    got = gen.complete([Prompt(messages=c) for c in chats], SamplingSettings(max_new_tokens=6))
    for chat, completion in zip(chats, got):
        ids = torch.tensor([gen.encode(gen.prompt_text(Prompt(messages=chat)), chat=True)])
        with torch.no_grad():
            want = ref.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False,
                                eos_token_id=gen.eos_token_ids, pad_token_id=gen.pad_token_id)[0, ids.shape[1]:]
        want = want.tolist()
        end = next((i for i, t in enumerate(want) if t in gen.eos_token_ids), None)
        assert completion.token_ids == (want if end is None else want[:end + 1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_peft_adapter_loads_in_pyft(model_dir, kind, tmp_path):
    from peft import PeftModel

    ref, _ = _pair(model_dir, kind)
    ref.eval()
    ref.save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(_base(model_dir), tmp_path / "peft").eval()
    ours = _base(model_dir).eval()
    assert load_adapter(ours, tmp_path / "peft") == ["model.pyft_prompt"]
    assert not any(p.requires_grad for p in ours.parameters())
    with torch.no_grad():
        got = ours(input_ids=IDS).logits
        assert _rel(got, loaded(input_ids=IDS).logits[:, N:]) <= 1e-6
        assert _rel(got, ref(input_ids=IDS).logits[:, N:]) <= 1e-6  # P-tuning: the saved encoder output


@pytest.mark.parametrize("kind", list(KINDS))
def test_pyft_adapter_loads_in_peft_with_peft_config_fields(model_dir, kind, tmp_path):
    from peft import PeftModel

    ref, ours = _pair(model_dir, kind)
    ref.save_pretrained(tmp_path / "peft")
    save_prompt_adapter(ours, tmp_path / "ours", base_model_name_or_path=str(model_dir))
    mine = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert mine == theirs  # every field, every value (PEFT records the same base path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].dtype == torch.float32
    assert tensors["prompt_embeddings"].shape == (N, ours.config.hidden_size)
    loaded = PeftModel.from_pretrained(_base(model_dir), tmp_path / "ours").eval()
    ours.eval()
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, loaded(input_ids=IDS).logits[:, N:]) <= 1e-6
    # and back into pyft, trainable: the virtual tokens train directly (P-tuning's encoder is not saved)
    again = _base(model_dir)
    load_adapter(again, tmp_path / "ours", trainable=True)
    assert [n for n, p in again.named_parameters() if p.requires_grad] == ["model.pyft_prompt.embedding.weight"]
    save_prompt_adapter(again, tmp_path / "again", base_model_name_or_path=str(model_dir))
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text()) == theirs


def test_sample_vocab_and_text_init_equal_peft(model_dir, tokenizer_dirs):
    from peft import get_peft_model
    from transformers import AutoTokenizer

    tok_dir = str(tokenizer_dirs["chatml"])
    text = "Classify the sentiment"
    cases = [(PromptTuningConfig(num_virtual_tokens=N, init="sample_vocab"), {"prompt_tuning_init": "SAMPLE_VOCAB"}),
             (PromptTuningConfig(num_virtual_tokens=N, init="text", init_text=text, tokenizer=tok_dir),
              {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": text, "tokenizer_name_or_path": tok_dir}),
             (PromptTuningConfig(num_virtual_tokens=2, init="text", init_text=text, tokenizer=tok_dir), None)]
    for config, extra in cases:
        torch.manual_seed(0)
        ours = _base(model_dir)
        apply_prompt_tuning(ours, config)
        got = prompt_module(ours).embedding.weight
        if extra is not None:
            torch.manual_seed(0)
            ref = get_peft_model(_base(model_dir), _peft_config("prompt", **extra))
            assert torch.equal(got, _ref_params(ref)["embedding.weight"]), config.init
        if config.init == "text":  # the text's token ids, repeated or cut to num_virtual_tokens
            ids = AutoTokenizer.from_pretrained(tok_dir)(text)["input_ids"]
            n = config.num_virtual_tokens
            assert len(ids) not in (0, n)
            want_ids = (ids * n)[:n]
            assert torch.equal(got, ours.get_input_embeddings().weight[want_ids])


def test_text_init_never_runs_tokenizer_code(model_dir, tokenizer_dirs, tmp_path):
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dirs["chatml"], tok)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": ["custom.CustomTokenizer", None]}, tokenizer_class="CustomTokenizer")
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (tok / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                   "from transformers import PreTrainedTokenizerFast as CustomTokenizer\n")
    model = _base(model_dir)
    with pytest.raises(ValueError, match="tokenizer"):
        apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=3, init="text", init_text="hi", tokenizer=str(tok)))
    assert not marker.exists()
    assert prompt_module(model) is None


def test_adapters_disabled_and_remove_give_the_base_model(model_dir):
    base = _base(model_dir)
    with torch.no_grad():
        plain = base(input_ids=IDS).logits
    _, ours = _pair(model_dir, "p_tuning_mlp")
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, plain) > 1e-3
        with adapters_disabled(ours):
            assert torch.equal(ours(input_ids=IDS).logits, plain)
            assert torch.equal(_decoder_logits(ours, IDS), plain)
        assert _rel(ours(input_ids=IDS).logits, plain) > 1e-3
        remove_prompt(ours)
        assert torch.equal(ours(input_ids=IDS).logits, plain)
    assert not hasattr(ours, "pyft_prompt_config") and prompt_module(ours) is None


@pytest.mark.parametrize("kind", ["prompt", "p_tuning_mlp"])
def test_adamw_steps_reduce_the_loss_through_the_decoder(model_dir, kind):
    torch.manual_seed(0)
    model = _base(model_dir)
    config = KINDS[kind][0]
    (apply_prompt_tuning if kind == "prompt" else apply_p_tuning)(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1 if kind == "prompt" else 1e-2)
    ids = IDS[:, 1:]
    labels = IDS[:, 1:]

    def loss_now():
        logits = _decoder_logits(model, ids)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())

    with torch.no_grad():
        start = float(loss_now())
    for _ in range(20):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    with torch.no_grad():
        end = float(loss_now())
    # a tiny random model is steered only a little by 5 virtual tokens (about 8.3 -> 8.15 nats here); a broken
    # gradient path leaves the loss where it was
    assert end < start - 0.1, (start, end)


def test_not_mergeable():
    assert MERGEABLE is False
    for word in ("merge", "PEFT", "vLLM", "llama.cpp"):
        assert word in NOT_MERGEABLE_REASON


def test_config_errors():
    for kwargs, field in [({"num_virtual_tokens": 0}, "num_virtual_tokens"), ({"init": "vocab"}, "init"),
                          ({"init": "text", "tokenizer": "t"}, "init_text"),
                          ({"init": "text", "init_text": "hi"}, "tokenizer"),
                          ({"init_text": "hi"}, "init_text")]:
        with pytest.raises(ValueError, match=field):
            PromptTuningConfig(**kwargs)
    for kwargs, field in [({"encoder": "gru"}, "encoder"), ({"encoder_hidden_size": 0}, "encoder_hidden_size"),
                          ({"encoder_num_layers": 0}, "encoder_num_layers"), ({"encoder_dropout": 1.0}, "encoder_dropout"),
                          ({"num_virtual_tokens": True}, "num_virtual_tokens")]:
        with pytest.raises(ValueError, match=field):
            PTuningConfig(**kwargs)


def test_load_errors_name_the_file_and_the_field(model_dir, tmp_path):
    from safetensors.torch import save_file

    _, ours = _pair(model_dir, "prompt")
    with pytest.raises(ValueError, match="already has a prompt adapter"):
        apply_prompt_tuning(ours, PromptTuningConfig(num_virtual_tokens=2))
    good = tmp_path / "good"
    save_prompt_adapter(ours, good)
    config = json.loads((good / "adapter_config.json").read_text())
    weights = good / "adapter_model.safetensors"
    hidden = ours.config.hidden_size

    def attempt(name, changes=None, tensors=None):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({**config, **(changes or {})}))
        if tensors is None:
            (d / "adapter_model.safetensors").write_bytes(weights.read_bytes())
        else:
            save_file(tensors, str(d / "adapter_model.safetensors"))
        with pytest.raises((ValueError, DataError)) as err:  # DataError: a field of the wrong JSON type
            load_adapter(_base(model_dir), d)
        return str(err.value)

    msg = attempt("dim", {"token_dim": hidden * 2})
    assert "adapter_config.json" in msg and "`token_dim`" in msg
    msg = attempt("count", {"num_virtual_tokens": N + 1})
    assert "adapter_model.safetensors" in msg and "`prompt_embeddings`" in msg and str((N + 1, hidden)) in msg
    msg = attempt("subs", {"num_transformer_submodules": 2})
    assert "adapter_config.json" in msg and "`num_transformer_submodules`" in msg
    msg = attempt("missing", tensors={"other": torch.zeros(N, hidden)})
    assert "adapter_model.safetensors" in msg and "`prompt_embeddings`" in msg
    msg = attempt("type", {"num_virtual_tokens": "5"})
    assert "adapter_config.json" in msg and "`num_virtual_tokens`" in msg
    msg = attempt("init", {"prompt_tuning_init": "ZEROS"})
    assert "adapter_config.json" in msg and "`prompt_tuning_init`" in msg
    msg = attempt("encoder", {"peft_type": "P_TUNING", "encoder_reparameterization_type": "GRU"})
    assert "adapter_config.json" in msg and "`encoder_reparameterization_type`" in msg
    msg = attempt("task", {"task_type": "SEQ_2_SEQ_LM"})
    assert "adapter_config.json" in msg and "`task_type`" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no prompt adapter"):
            save_prompt_adapter(_base(model_dir), tmp_path / "none")
