"""`train.sample_every` (samples while training) and `eval.general` (forgetting measured by pyft train)."""

from __future__ import annotations

import json

import pytest
from helpers import CONVERSATIONS, write_jsonl

import pyft.data
from pyft.errors import ConfigError
from pyft.generate import Generator, SamplingSettings
from pyft.generate.prompts import Prompt
from pyft.testing import make_tiny_model
from pyft.train import load_config, train
from pyft.train.samples import row_prompt_ids


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("samples")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="llama")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(3)])
    pyft.data.prepare(src, model, base / "data", val_ratio=0.3, seed=0)
    return {"model": model, "data": base / "data"}


def _cfg(setup, out, train_opts=None, **sections):
    t = {"lr": 1e-2, "max_steps": 4, "batch_size": 4, "seed": 0, "log_every": 100, "report_to": "none",
         **(train_opts or {})}
    return load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out),
                       lora={"r": 4, "alpha": 8, "dropout": 0.0}, train=t, **sections)


def test_samples_are_logged_and_equal_the_model_at_that_step(setup, tmp_path):
    out = tmp_path / "run"
    train(_cfg(setup, out, {"sample_every": 2, "sample_max_new_tokens": 6}))
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(len(r["samples"]) == 3 for r in records)
    # The last samples are the final adapter's greedy completions of the validation prompts.
    val = pyft.data.load(setup["data"], "validation")
    prompts = [Prompt(ids=ids) for ids in (row_prompt_ids(val[i]) for i in range(len(val))) if ids][:3]
    gen = Generator(setup["model"], adapter=out / "adapter", dtype="float32")
    want = [c.text for c in gen.complete(prompts, SamplingSettings(max_new_tokens=6))]
    assert [s["completion"] for s in records[-1]["samples"]] == want


def test_sample_prompts_given_as_text(setup, tmp_path):
    out = tmp_path / "run"
    train(_cfg(setup, out, {"max_steps": 2, "sample_every": 2, "sample_max_new_tokens": 4,
                            "sample_prompts": ["What is the capital of France?"]}))
    (record,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert record["samples"][0]["prompt"] == "What is the capital of France?"
    with pytest.raises(ConfigError, match="train.sample_every"):
        _cfg(setup, tmp_path / "bad", {"sample_every": 0}).validate()


def test_eval_general_measures_before_and_after(setup, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyft.eval.perplexity import read_texts, text_perplexity

    out = tmp_path / "run"
    train(_cfg(setup, out, {"lr": 5e-2}, eval={"general": True, "general_max_increase": 0.0}))
    record = json.loads((out / "general.json").read_text())
    tok = AutoTokenizer.from_pretrained(setup["data"] / "tokenizer")
    base = text_perplexity(AutoModelForCausalLM.from_pretrained(setup["model"]), tok, read_texts())
    assert record["before"]["ppl"] == pytest.approx(base["ppl"], rel=1e-5), "before training = the base model"
    tuned = Generator(setup["model"], adapter=out / "adapter", dtype="float32")
    after = text_perplexity(tuned.model, tok, read_texts())
    assert record["after"]["ppl"] == pytest.approx(after["ppl"], rel=1e-5)
    assert record["change"] == pytest.approx(after["ppl"] / base["ppl"] - 1, rel=1e-5)
    err = capsys.readouterr().err
    assert ("[warning] general-domain perplexity" in err) == (record["change"] > 0)
