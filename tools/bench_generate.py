#!/usr/bin/env python
"""Generation throughput: ``pyft generate`` (``pyft.generate.Generator``) against the plain transformers
``generate`` loop a user would write, at batch 1 and batch 16, greedy.

Both sides use the same random-init model (the ``small`` Llama shape of ``tools/bench_train.py`` with a
32000-token vocabulary unless ``--shape``), the same chat prompts rendered by the same template, the
same end-of-turn ids and ``max_new_tokens``. The transformers side tokenizes with
``apply_chat_template``, pads on the left with the tokenizer and calls ``model.generate`` per batch.
Throughput = generated tokens (up to and including the end-of-turn token) / wall seconds, after one
warm-up batch per side. Prints a table and ends with one JSON line.

Usage: ``python tools/bench_generate.py [--shape tiny|small] [--prompts 32] [--max-new-tokens 64]
[--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_train import SHAPES  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Explain photosynthesis in one sentence.",
             "Write a haiku about the sea.", "How many legs does a spider have?",
             "Give me three tips for better sleep, please, with a short reason for each.",
             "Translate 'good morning' into Spanish.", "What is 17 times 3?", "Name a primary colour."]


def _hf_batches(model, tok, chats, batch, settings, eos_ids):
    import torch

    tok.padding_side = "left"
    done = 0
    t0 = time.perf_counter()
    for i in range(0, len(chats), batch):
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats[i:i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                 eos_token_id=eos_ids, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            end = next((j for j, t in enumerate(row) if t in eos_ids), None)
            done += len(row) if end is None else end + 1
    return done, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["tiny", "small"], default="small")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyft.generate import Generator, SamplingSettings
    from pyft.generate.prompts import Prompt
    from pyft.testing import make_tiny_model, make_tokenizer

    work = Path(tempfile.mkdtemp(prefix="pyft-bench-generate-"))
    tok_dir = make_tokenizer(work / "tok", style="chatml", vocab_size=4096)
    model_dir = make_tiny_model(work / "model", tok_dir, arch="llama", vocab_size=32000, **SHAPES[args.shape])
    chats = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3)}] for i in range(args.prompts)]
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    gen = Generator(model_dir, dtype="float32", device=args.device)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for batch in (1, 16):
        n = min(len(chats), max(batch * 2, 8))
        sub = chats[:n]
        gen.complete([Prompt(messages=c) for c in sub[:batch]], settings, batch_size=batch)  # warm-up
        t0 = time.perf_counter()
        done = gen.complete([Prompt(messages=c) for c in sub], settings, batch_size=batch)
        pyft_s = time.perf_counter() - t0
        pyft_tokens = sum(c.completion_tokens for c in done)
        _hf_batches(hf, tok, sub[:batch], batch, settings, gen.eos_token_ids)  # warm-up
        hf_tokens, hf_s = _hf_batches(hf, tok, sub, batch, settings, gen.eos_token_ids)
        rows.append({"batch": batch, "prompts": n, "pyft_tokens": pyft_tokens, "pyft_s": pyft_s,
                     "pyft_tok_s": pyft_tokens / pyft_s, "hf_tokens": hf_tokens, "hf_s": hf_s,
                     "hf_tok_s": hf_tokens / hf_s})
    print(f"random {args.shape} Llama, vocab 32000, greedy, max_new_tokens {args.max_new_tokens}, {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'prompts':>8} {'pyft tok/s':>11} {'transformers tok/s':>19} {'ratio':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['prompts']:>8} {r['pyft_tok_s']:>11.1f} {r['hf_tok_s']:>19.1f} "
              f"{r['pyft_tok_s'] / r['hf_tok_s']:>6.2f}")
    print(json.dumps({"bench": "generate", "shape": args.shape, "device": args.device, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
