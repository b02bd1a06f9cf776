"""The `pyft` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyft
from pyft.cli.main import main

from helpers import CONVERSATIONS, write_jsonl


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyft.cli.main", *args], capture_output=True, text=True)


def test_version_and_help():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"pyft {pyft.__version__}"
    r = _run("--help")
    assert r.returncode == 0 and "data" in r.stdout and "demo" in r.stdout
    r = _run("data", "prepare", "--help")
    assert r.returncode == 0 and "--pack" in r.stdout and "--mix FILE:RATIO" in r.stdout


def test_prepare_and_inspect(tokenizer_dirs, tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    out = tmp_path / "out"
    assert main(["data", "prepare", str(src), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(out),
                 "--pack", "bfd", "--max-len", "512", "--val-ratio", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "kept 5" in printed and "packing efficiency" in printed
    assert main(["data", "inspect", str(out), "--no-color"]) == 0
    shown = capsys.readouterr().out
    assert "[[" in shown and "]]" in shown and "<|im_start|>" in shown
    # trainable text is the assistant content plus <|im_end|>, never the user turn
    assert "[[<|im_start|>user" not in shown


def test_errors_exit_nonzero_with_location(tokenizer_dirs, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    r = _run("data", "prepare", str(src), "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert f"pyft: error: {src}:1: field `messages`: no assistant turn" in r.stderr
    assert not (tmp_path / "o").exists()


def test_demo_end_to_end_short(tmp_path, capsys):
    from pyft.demo import run_demo

    out = run_demo(tmp_path / "demo", max_steps=100)
    printed = capsys.readouterr().out
    assert "before:" in printed and "after:" in printed
    for name in ("base/config.json", "data/meta.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "metrics.jsonl", "loss.png", "merged/config.json",
                 "merged/chat_template.jinja", "ollama/model.gguf", "ollama/Modelfile", "vllm/config.json",
                 "eval/eval.json", "eval/predictions.jsonl", "eval/forgetting.png"):
        assert (out / name).is_file(), name
    # pyft eval on the held-out prompts: exact match before and after, answers closer to the references'
    # style (token F1), and the forgetting report on the shipped general corpus.
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert "generation.exact_match" in printed and "general.ppl" in printed
    assert report["tuned"]["generation"]["token_f1"] > report["base"]["generation"]["token_f1"]
    assert report["general_change_pct"] is not None and report["task_metric"] in ("exact_match", "token_f1")
    assert "ollama create pyft-demo -f" in printed and "vllm serve" in printed
    _llama_cpp_greedy_equals_transformers(out, tmp_path)


def _llama_cpp_greedy_equals_transformers(demo: Path, tmp_path: Path) -> None:
    """The trained demo model, exported as F16 GGUF, generates the same greedy tokens in llama.cpp as
    the merged model does in transformers."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyft.demo import HELD_OUT_PROMPTS
    from pyft.export import export_gguf

    gguf = export_gguf(demo / "merged", tmp_path / "demo-f16.gguf", qtype="f16").path
    tok = AutoTokenizer.from_pretrained(demo / "merged")
    model = AutoModelForCausalLM.from_pretrained(demo / "merged", dtype=torch.float32)
    llm = Llama(str(gguf), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for prompt in HELD_OUT_PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos)[0, len(ids):].tolist()
        llm.reset()
        got: list[int] = []
        llm.eval(ids)
        while len(got) < len(ref):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            got.append(nxt)
            if nxt == eos:
                break
            llm.eval([nxt])
        assert got == ref, (prompt, tok.decode(got), tok.decode(ref))


def test_train_cli_print_config_and_errors(tmp_path):
    r = _run("train", "--print-config", "model=m", "data=d", "train.lr=1e-4", "lora.r=4")
    assert r.returncode == 0 and "lr: 0.0001" in r.stdout and "r: 4" in r.stdout
    r = _run("train", "model=m", "data=d", "train.batchsize=4")
    assert r.returncode == 1 and "pyft: error: train.batchsize: unknown key" in r.stderr
