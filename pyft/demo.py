"""``pyft demo``: the end-to-end demo on the embedded tiny model and the bundled data.

1. Builds the tiny base model: a ChatML byte-level BPE tokenizer trained locally on the bundled
   corpus and a random-init Llama-shape model (``DIR/base/``).
2. Prepares the bundled conversations into packed token shards with a validation split
   (``DIR/data/``) and shows one example with its trainable tokens highlighted.
3. Trains a LoRA adapter on CPU for a couple of minutes (``DIR/adapter/``, ``DIR/metrics.jsonl``,
   ``DIR/loss.png``).
4. Prints greedy answers to held-out prompts before and after training.
5. Makes it servable: merges the adapter into ``DIR/merged/`` (HF directory with the chat template
   and every end-of-turn id), exports ``DIR/ollama/`` (Q8_0 GGUF + Modelfile) and ``DIR/vllm/``,
   and prints the commands that serve them.

The base model is random, so it cannot know facts it never saw; what the adapter visibly learns
is the task formats of the bundled data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

#: Prompts whose facts never occur in the bundled data (see pyft/data/demo/README.md), with reference
#: answers in the data's style (``pyft eval`` scores the answers against them).
HELD_OUT = [
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("What is 4 plus 9?", "4 plus 9 is 13."),
    ("Spell the word river.", 'The word "river" is spelled r-i-v-e-r.'),
    ("What is the opposite of tall?", "The opposite of tall is short."),
    ("What day comes after Thursday?", "The day after Thursday is Friday."),
]
HELD_OUT_PROMPTS = [q for q, _ in HELD_OUT]

#: The demo's tiny base model: large enough to learn the formats in a couple of CPU minutes.
DEMO_SHAPE = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4)


def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy completions of single-turn chats (the assistant text only)."""
    import torch

    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def _evaluate(model: Path, adapter: Path | None, rows: Path) -> dict:
    """``pyft eval`` of the base (or base + adapter): exact match, token F1, ROUGE-L and BLEU on the held-out
    rows, and perplexity on the general-domain corpus shipped with pyft."""
    from pyft.eval.run import evaluate
    from pyft.generate import Generator, SamplingSettings

    generator = Generator(model, adapter=adapter, dtype="float32")
    return evaluate(generator, data=rows, general=True, settings=SamplingSettings(max_new_tokens=32),
                    latency_prompts=0)


def run_demo(out: str | os.PathLike[str] = "pyft-demo", max_steps: int = 250) -> Path:
    """Run the demo into ``out`` (replacing what an earlier demo left there). Returns ``out``."""
    import pyft
    from pyft.data import inspect, prepare
    from pyft.data.demo import demo_path
    from pyft.testing import make_tiny_model, make_tokenizer
    from pyft.train import load_config, train

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[demo] 1/5 building the tiny base model in {out_dir / 'base'}")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tok_dir = make_tokenizer(Path(tmp) / "tokenizer", style="chatml")
        staged = make_tiny_model(Path(tmp) / "base", tok_dir, arch="llama", **DEMO_SHAPE)
        if (out_dir / "base").exists():
            shutil.rmtree(out_dir / "base")
        os.replace(staged, out_dir / "base")
    print(f"[demo] 2/5 preparing the bundled data ({demo_path().name}) into {out_dir / 'data'}")
    info = prepare(
        demo_path(), out_dir / "base", out_dir / "data",
        max_len=256, pack="bfd", val_ratio=0.1, seed=0, dedup=True, overwrite=True, progress=False,
    )
    print()
    print(inspect(info.out_dir, index=len(pyft.data.load(info.out_dir)) - 1, color=None))

    eval_rows = out_dir / "held_out.jsonl"
    eval_rows.write_text("".join(json.dumps({"prompt": q, "reference": a}) + "\n" for q, a in HELD_OUT),
                         encoding="utf-8")
    before = _evaluate(out_dir / "base", None, eval_rows)

    print(f"\n[demo] 3/5 training a LoRA adapter (CPU, {max_steps} steps)")
    for stale in ("adapter", "checkpoints", "tensorboard", "metrics.jsonl", "loss.png", "merged", "ollama", "vllm"):
        path = out_dir / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    config = load_config(
        model=str(out_dir / "base"), data=str(out_dir / "data"), output=str(out_dir), method="lora",
        lora={"r": 32, "alpha": 64, "dropout": 0.0, "targets": "all-linear", "modules_to_save": ["lm_head"]},
        train={"max_steps": max_steps, "batch_size": 4, "lr": 3e-3, "schedule": "cosine", "warmup": 0.05,
               "eval_every": max(1, max_steps // 5), "log_every": 25, "precision": "fp32", "seed": 0},
    )
    result = train(config)

    print("\n[demo] 4/5 pyft eval: held-out prompts and general-domain text, before and after training")
    after = _evaluate(out_dir / "base", out_dir / "adapter", eval_rows)
    for b, a in zip(before["predictions"], after["predictions"], strict=True):
        print(f"\n  Q: {b['prompt']}\n     before: {b['completion'][:80]!r}\n     after:  {a['completion'][:80]!r}")
    from pyft.eval.run import compare_reports, format_report, write_outputs

    comparison = compare_reports(before, after)
    print("\n" + format_report(after, before))
    write_outputs(out_dir / "eval", after, comparison, overwrite=True)
    print("\n[demo] 5/5 merging and exporting for serving")
    commands = export_demo(out_dir)
    losses = [r["eval_loss"] for r in result.history if "eval_loss" in r]
    print(f"\n[demo] done in {time.perf_counter() - t0:.0f}s. Eval loss {losses[0]:.3f} -> {losses[-1]:.3f}. Outputs:")
    print(f"  {out_dir / 'base'}            tiny base model + tokenizer (transformers directory)")
    print(f"  {out_dir / 'data'}            prepared token shards (pyft.data.load)")
    print(f"  {out_dir / 'adapter'}         LoRA adapter in PEFT format (pyft.load_model(base, adapter=...))")
    print(f"  {out_dir / 'metrics.jsonl'}   training metrics")
    print(f"  {out_dir / 'loss.png'}        loss curves")
    print(f"  {out_dir / 'eval'}            pyft eval report: eval.json, predictions.jsonl, forgetting.png")
    print(f"  {out_dir / 'merged'}          adapter merged into the base (transformers / vLLM directory)")
    print(f"  {out_dir / 'ollama'}          model.gguf (Q8_0) + Modelfile for Ollama / llama.cpp")
    print(f"  {out_dir / 'vllm'}            merged model ready for vLLM")
    print("\nServe it with:")
    for c in commands:
        print("  " + c.replace("\n", "\n  "))
    return out_dir


def export_demo(out_dir: Path) -> list[str]:
    """Merge ``out_dir/adapter`` into ``out_dir/base`` and export ``merged/``, ``ollama/``, ``vllm/``.

    The demo adapter trains ``lm_head`` whole (``modules_to_save``), which GGUF LoRA and vLLM LoRA
    cannot carry, so every target is built from the merged weights. Returns the serve commands.
    """
    from pyft.export.targets import to_ollama, to_vllm
    from pyft.io.merge import merge

    base, adapter = out_dir / "base", out_dir / "adapter"
    merge(base, adapter, out_dir / "merged", overwrite=True)
    ollama = to_ollama(out_dir / "merged", out_dir / "ollama", qtype="q8_0", model_name="pyft-demo", overwrite=True)
    vllm = to_vllm(base, out_dir / "vllm", adapters=[adapter], merge=True, served_name="pyft-demo", overwrite=True)
    for r in ollama.reports:
        print(f"  wrote {r.path} ({r.bytes / 1e6:.1f} MB)")
    print(f"  wrote {out_dir / 'ollama' / 'Modelfile'} and {out_dir / 'vllm'}")
    return [*ollama.commands, *vllm.commands]
