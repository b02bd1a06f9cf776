"""`pyft eval`: perplexity against a direct computation, held-out loss equal to the trainer's evaluation,
rows and their errors, comparison arithmetic, outputs, and the CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import CONVERSATIONS, write_jsonl

import pyft.data
from pyft.cli.main import main
from pyft.errors import DataError
from pyft.eval.perplexity import GENERAL_CORPUS, read_texts, text_perplexity
from pyft.eval.run import compare_reports, evaluate, read_eval_rows
from pyft.generate import Generator, SamplingSettings
from pyft.generate.prompts import Prompt
from pyft.testing import make_tiny_model


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="llama")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(3)])
    pyft.data.prepare(src, model, base / "data", val_ratio=0.3, seed=0)
    return {"model": model, "data": base / "data", "base": base}


def test_shipped_general_corpus_is_multilingual():
    records = read_texts()
    langs = {r["lang"] for r in records}
    assert GENERAL_CORPUS.is_file() and len(records) >= 25
    assert {"en", "de", "fr", "es", "zh", "ja", "ru", "ar", "hi"} <= langs


def test_perplexity_equals_a_direct_computation(setup):
    """Token-weighted NLL over non-overlapping windows, against per-token log-softmax sums in float64."""
    gen = Generator(setup["model"], dtype="float32")
    records = [{"text": "The water cycle moves water between the oceans.", "lang": "en"},
               {"text": "Der Rhein ist einer der längsten Flüsse Europas. " * 3, "lang": "de"}]
    got = text_perplexity(gen.model, gen.tokenizer, records, window=8)
    total, count = 0.0, 0
    for r in records:
        ids = gen.tokenizer(r["text"])["input_ids"]
        for s in range(0, len(ids) - 1, 8):
            chunk = torch.tensor([ids[s:s + 9]])
            if chunk.shape[1] < 2:
                continue
            with torch.no_grad():
                logp = torch.log_softmax(gen.model(input_ids=chunk[:, :-1]).logits.double(), -1)
            total -= float(logp[0].gather(1, chunk[0, 1:, None]).sum())
            count += chunk.shape[1] - 1
    # float32 logits vs float64 log-softmax: relative error ~1e-6 per token, far below 1e-4
    assert got["tokens"] == count and got["nll"] == pytest.approx(total / count, rel=1e-4)
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert set(got["by_lang"]) == {"en", "de"}


def test_heldout_loss_equals_the_trainers_evaluation(setup, tmp_path):
    from pyft.eval.heldout import heldout_loss
    from pyft.train import build_trainer, load_config

    cfg = load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(tmp_path / "o"),
                      lora={"r": 4, "alpha": 8, "dropout": 0.0}, train={"max_steps": 1, "batch_size": 4})
    trainer = build_trainer(cfg)
    want = trainer.evaluate()
    got = heldout_loss(trainer.model, setup["data"], batch_size=4)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6) and got["ppl"] == pytest.approx(want["ppl"], rel=1e-6)
    assert got["rows"] == len(pyft.data.load(setup["data"], "validation"))


def test_rows_need_a_reference_or_label(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"e.jsonl line 2: needs a `reference`"):
        read_eval_rows(p)
    p.write_text('{"prompt": "a", "label": 3}\n')
    with pytest.raises(DataError, match=r"line 1: `label` must be a string"):
        read_eval_rows(p)
    p.write_bytes(b'{"prompt": "a", "reference": "b"}\n\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"e.jsonl line 3: not UTF-8"):
        read_eval_rows(p)
    p.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"e.jsonl line 2: not JSON"):
        read_eval_rows(p)
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"lang": "en"}\n')
    with pytest.raises(DataError, match=r"g.jsonl line 1: needs a string `text`"):
        read_texts(bad)


def test_compare_reports_arithmetic():
    base = {"generation": {"exact_match": 0.2, "token_f1": 0.3, "n": 10}, "general": {"ppl": 10.0, "by_lang": {}}}
    tuned = {"generation": {"exact_match": 0.5, "token_f1": 0.6, "n": 10}, "general": {"ppl": 12.5, "by_lang": {}}}
    c = compare_reports(base, tuned)
    assert c["task_metric"] == "exact_match" and c["task_gain"] == pytest.approx(0.3)
    assert c["general_change_pct"] == pytest.approx(25.0)
    same_em = compare_reports({"generation": {"exact_match": 0.0, "token_f1": 0.1}},
                              {"generation": {"exact_match": 0.0, "token_f1": 0.4}})
    assert same_em["task_metric"] == "token_f1" and same_em["task_gain"] == pytest.approx(0.3)
    only_loss = compare_reports({"heldout": {"loss": 2.0, "ppl": 7.4}}, {"heldout": {"loss": 1.5, "ppl": 4.5}})
    assert only_loss["task_gain"] == pytest.approx(0.5), "a lower loss is a gain"


def test_evaluate_end_to_end_with_labels_and_references(setup, tmp_path):
    gen = Generator(setup["model"], dtype="float32")
    settings = SamplingSettings(max_new_tokens=6)
    prompts = ["What is the capital of France?", "Add 2 and 3.", "Name a colour."]
    texts = [c.text for c in gen.complete([Prompt(messages=[{"role": "user", "content": p}]) for p in prompts],
                                          settings)]
    rows = [{"prompt": prompts[0], "reference": texts[0]},            # exact match by construction
            {"prompt": prompts[1], "reference": ["nothing like it"]},
            {"prompt": prompts[2], "label": "red", "choices": ["red", "blue"]}]
    data = write_jsonl(tmp_path / "e.jsonl", rows)
    report = evaluate(gen, data=data, prepared=setup["data"], general=True, settings=settings, latency_prompts=2)
    assert report["generation"]["n"] == 2 and report["generation"]["exact_match"] == pytest.approx(0.5)
    assert report["classification"]["accuracy"] in (0.0, 1.0)
    assert [p["completion"] for p in report["predictions"]] == texts
    assert report["heldout"]["loss"] > 0 and report["general"]["tokens"] > 500
    assert report["latency"]["prompts"] == 2 and report["latency"]["ttft_s"] > 0


def test_cli_eval_compare_writes_report_and_plots(setup, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float32)
    get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                 init_lora_weights=False)).save_pretrained(tmp_path / "adapter")
    data = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Add 2 and 3.", "reference": "5"},
                                              {"prompt": "Name a colour.", "label": "red", "choices": ["red", "blue"]}])
    out = tmp_path / "report"
    assert main(["eval", str(setup["model"]), "--adapter", str(tmp_path / "adapter"), "--data", str(data),
                 "--prepared", str(setup["data"]), "--compare", str(setup["model"]), "--out", str(out),
                 "--max-new-tokens", "4", "--dtype", "float32", "--latency-prompts", "1"]) == 0
    printed = capsys.readouterr().out
    assert "general.ppl" in printed and "task gain" in printed
    report = json.loads((out / "eval.json").read_text())
    assert set(report) >= {"base", "tuned", "delta", "task_gain", "general_change_pct"}
    assert report["tuned"]["general"]["ppl"] != report["base"]["general"]["ppl"], "the adapter changes the model"
    for png in ("forgetting.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2


def test_harness_is_optional_with_a_clear_message(setup, capsys):
    import importlib.util

    from pyft.eval.harness import harness_model_args

    assert harness_model_args("/m", "/a", "bfloat16") == "pretrained=/m,dtype=bfloat16,peft=/a"
    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm_eval is installed here")
    assert main(["eval", str(setup["model"]), "--harness", "hellaswag"]) == 1
    assert "pip install lm-eval" in capsys.readouterr().err
