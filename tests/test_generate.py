"""pyft.generate against transformers' `generate` (and PEFT for adapters): greedy token equality for a base,
base + LoRA and NF4 base + LoRA, batched and left-padded; seeded sampling; end-of-turn and stop strings;
JSONL in/out; `pyft generate`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from pyft.cli.main import main
from pyft.errors import DataError
from pyft.generate import Generator, SamplingSettings
from pyft.generate.chat import chat_loop
from pyft.generate.jsonl import generate_jsonl
from pyft.generate.prompts import Prompt
from pyft.testing import make_tiny_model

CHATS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "What is the capital of France? Please answer in one word."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}],
]


@pytest.fixture(scope="module")
def model_dir(tokenizer_dirs, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("gen") / "llama", tokenizer_dirs["llama3"], arch="llama")


@pytest.fixture(scope="module")
def lora_dir(model_dir, tmp_path_factory) -> Path:
    """A random (non-zero B) PEFT LoRA adapter written by HF peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = tmp_path_factory.mktemp("gen") / "lora"
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False)).save_pretrained(out)
    return out


def _reference(model, gen: Generator, chats, max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy generate, one unpadded prompt at a time (no batching, no pyft code path)."""
    out = []
    for chat in chats:
        ids = torch.tensor([gen.encode(gen.prompt_text(Prompt(messages=chat)), chat=True)])
        with torch.no_grad():
            seq = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=gen.eos_token_ids, pad_token_id=gen.pad_token_id)
        out.append(seq[0, ids.shape[1]:].tolist())
    return out


def _trim(ids: list[int], gen: Generator) -> list[int]:
    end = next((i for i, t in enumerate(ids) if t in gen.eos_token_ids), None)
    return ids if end is None else ids[:end + 1]


def test_greedy_equals_transformers_for_the_base(model_dir):
    from transformers import AutoModelForCausalLM

    gen = Generator(model_dir, dtype="float32")
    got = gen.complete([Prompt(messages=c) for c in CHATS], SamplingSettings(max_new_tokens=12), batch_size=3)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    want = _reference(ref, gen, CHATS, 12)
    assert [c.token_ids for c in got] == [_trim(w, gen) for w in want]
    assert len({c.prompt_tokens for c in got}) == 3, "prompts of different lengths exercise left padding"
    for c in got:
        assert c.completion_tokens == len(c.token_ids) and c.finish_reason in ("stop", "length")
        assert c.text == gen.tokenizer.decode([t for t in c.token_ids if t not in gen.eos_token_ids],
                                              skip_special_tokens=True)


def test_greedy_equals_peft_for_base_plus_lora(model_dir, lora_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    gen = Generator(model_dir, adapter=lora_dir, dtype="float32")
    got = gen.complete([Prompt(messages=c) for c in CHATS], SamplingSettings(max_new_tokens=12), batch_size=2)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = PeftModel.from_pretrained(base, lora_dir).eval()
    want = _reference(ref, gen, CHATS, 12)
    assert [c.token_ids for c in got] == [_trim(w, gen) for w in want]
    plain = Generator(model_dir, dtype="float32").complete([Prompt(messages=CHATS[1])],
                                                           SamplingSettings(max_new_tokens=12))
    assert plain[0].token_ids != got[1].token_ids, "the adapter must change the output"


def test_greedy_nf4_base_plus_lora_equals_unbatched_generate(model_dir, lora_dir, tmp_path):
    """NF4 base (pyft's bitsandbytes-exact checkpoint) + LoRA: batched, left-padded pyft output equals
    transformers' generate on the same loaded model, prompt by prompt."""
    from pyft.models import load_model
    from pyft.quant.checkpoint import quantize_checkpoint

    quantize_checkpoint(model_dir, tmp_path / "nf4", dtype=torch.float32)
    gen = Generator(tmp_path / "nf4", adapter=lora_dir, dtype="float32")
    got = gen.complete([Prompt(messages=c) for c in CHATS], SamplingSettings(max_new_tokens=10), batch_size=3)
    ref = load_model(tmp_path / "nf4", dtype="float32", adapter=lora_dir)
    assert type(ref.model.layers[0].mlp.up_proj).__name__ != "Linear", "the base must load as NF4"
    want = _reference(ref, gen, CHATS, 10)
    assert [c.token_ids for c in got] == [_trim(w, gen) for w in want]


def test_end_of_turn_ids_come_from_the_template(model_dir):
    gen = Generator(model_dir, dtype="float32")
    eot = gen.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in gen.eos_token_ids and gen.tokenizer.eos_token_id in gen.eos_token_ids


def test_stops_at_the_templates_end_of_turn(model_dir, tmp_path):
    """Make <|eot_id|> likely (its output row is a scaled copy of a token greedy decoding picks):
    generation stops there with finish_reason 'stop', like transformers' generate with that eos."""
    from transformers import AutoModelForCausalLM

    gen = Generator(model_dir, dtype="float32")
    first = gen.complete([Prompt(messages=CHATS[0])], SamplingSettings(max_new_tokens=8))[0]
    eot = gen.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    with torch.no_grad():
        head = gen.model.lm_head.weight
        head[eot] = head[first.token_ids[3]] * 3
    got = gen.complete([Prompt(messages=CHATS[0])], SamplingSettings(max_new_tokens=8))[0]
    assert got.finish_reason == "stop" and got.token_ids[-1] == eot and got.completion_tokens < 8
    assert "<|eot_id|>" not in got.text
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref.lm_head.weight.data.copy_(gen.model.lm_head.weight)
    assert got.token_ids == _trim(_reference(ref, gen, CHATS[:1], 8)[0], gen)


def test_stop_strings_cut_the_text(model_dir):
    gen = Generator(model_dir, dtype="float32")
    full = gen.complete([Prompt(messages=CHATS[1])], SamplingSettings(max_new_tokens=16))[0]
    assert full.finish_reason == "length" and len(full.text) > 6
    stop = full.text[4:7]
    cut = gen.complete([Prompt(messages=CHATS[1])], SamplingSettings(max_new_tokens=16, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    assert cut.completion_tokens < full.completion_tokens


def test_seeded_sampling_is_reproducible(model_dir):
    gen = Generator(model_dir, dtype="float32")
    prompts = [Prompt(messages=c) for c in CHATS]

    def run(seed: int) -> list[list[int]]:
        s = SamplingSettings(max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=40, min_p=0.01,
                             repetition_penalty=1.1, seed=seed)
        return [c.token_ids for c in gen.complete(prompts, s, batch_size=2)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_raw_text_prompt_gets_the_tokenizers_bos(model_dir):
    gen = Generator(model_dir, dtype="float32")
    assert gen.encode("Once upon a time", chat=False)[0] == gen.tokenizer.bos_token_id
    got = gen.complete([Prompt(text="Once upon a time")], SamplingSettings(max_new_tokens=5))[0]
    ids = torch.tensor([gen.encode("Once upon a time", chat=False)])
    want = gen.model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=gen.eos_token_ids,
                              pad_token_id=gen.pad_token_id)[0, ids.shape[1]:].tolist()
    assert got.token_ids == _trim(want, gen)


def test_jsonl_in_and_out(model_dir, tmp_path):
    inp = tmp_path / "prompts.jsonl"
    rows = [{"id": 1, "prompt": "Hello there"}, {"id": 2, "messages": CHATS[2]}]
    inp.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    gen = Generator(model_dir, dtype="float32")
    totals = generate_jsonl(gen, inp, tmp_path / "out.jsonl", SamplingSettings(max_new_tokens=6), batch_size=2,
                            progress=None)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    direct = gen.complete([Prompt(messages=[{"role": "user", "content": "Hello there"}]), Prompt(messages=CHATS[2])],
                          SamplingSettings(max_new_tokens=6))
    assert [o["id"] for o in out] == [1, 2] and out[1]["messages"] == CHATS[2]
    assert [o["completion"] for o in out] == [c.text for c in direct]
    assert [o["completion_tokens"] for o in out] == [c.completion_tokens for c in direct]
    assert totals.prompts == 2 and totals.tokens == sum(c.completion_tokens for c in direct)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2"):
        generate_jsonl(gen, bad, tmp_path / "never.jsonl", SamplingSettings(max_new_tokens=2), progress=None)
    assert not (tmp_path / "never.jsonl").exists()


def test_cli_generate(model_dir, tmp_path, capsys):
    assert main(["generate", str(model_dir), "--prompt", "Hello there", "--max-new-tokens", "6",
                 "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    gen = Generator(model_dir, dtype="float32")
    want = gen.complete([Prompt(messages=[{"role": "user", "content": "Hello there"}])],
                        SamplingSettings(max_new_tokens=6))[0]
    assert printed == want.text
    inp = tmp_path / "p.jsonl"
    inp.write_text('{"prompt": "Hello there"}\n')
    assert main(["generate", str(model_dir), "--input", str(inp), "--output", str(tmp_path / "o.jsonl"),
                 "--max-new-tokens", "6", "--dtype", "float32"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["completion"] == want.text
    assert main(["generate", str(model_dir), "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 1


class _Writes(io.StringIO):
    """Counts the writes, to see the reply arrive in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_chat_loop_keeps_history_and_streams(model_dir):
    gen = Generator(model_dir, dtype="float32")
    settings = SamplingSettings(max_new_tokens=8)
    out = _Writes()
    replies = chat_loop(gen, settings, inp=io.StringIO("Hello there\nAnother one?\n/reset\nHello there\n"), out=out)
    assert replies == 3
    r1 = gen.complete([Prompt(messages=[{"role": "user", "content": "Hello there"}])], settings)[0].text
    r2 = gen.complete([Prompt(messages=[{"role": "user", "content": "Hello there"},
                                        {"role": "assistant", "content": r1},
                                        {"role": "user", "content": "Another one?"}])], settings)[0].text
    text = out.getvalue()
    assert text.count(f"assistant> {r1}") == 2 and f"assistant> {r2}" in text and "(conversation reset)" in text
    assert out.writes > 10, "tokens are written as they are generated"
