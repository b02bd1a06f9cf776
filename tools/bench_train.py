#!/usr/bin/env python
"""LoRA SFT throughput and peak memory: pyft against transformers' Trainer + peft, side by side.

Both runs use the same random-init model, the same prepared data (the bundled demo conversations
joined eight at a time into multi-turn chats, unpacked, padded per batch), the same LoRA (all linear layers, r=16), batch size, learning rate
and number of steps. Each runs in its own process so its peak memory is its own. Timing starts
after 3 warm-up steps. Prints a table and ends with one JSON line.

CPU (default): a small Llama shape. GPU: ``--shape 1b`` or ``--shape 8b`` (bf16, SDPA).
Usage: ``python tools/bench_train.py [--shape small|1b|8b] [--steps N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
}
WARMUP = 3


def peak_memory(cuda: bool) -> int:
    import resource

    import torch

    if cuda:
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_pyft(args) -> dict:
    import torch

    from pyft.train import build_trainer, load_config

    cuda = torch.cuda.is_available()
    cfg = load_config(model=args.model, data=args.data, output=args.out, method="lora",
                      lora={"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
                      train={"max_steps": args.steps + WARMUP, "batch_size": args.batch, "lr": 1e-4,
                             "schedule": "constant", "precision": "bf16" if cuda else "fp32", "log_every": 10**9})
    trainer = build_trainer(cfg)
    for _ in range(WARMUP):
        trainer.train_step()
    if cuda:
        torch.cuda.synchronize()
    t0, tokens = time.perf_counter(), 0
    for _ in range(args.steps):
        rows_before = trainer.stream.position()
        trainer.train_step()
        tokens += _tokens_of_last_step(trainer, rows_before)
    if cuda:
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "peak_bytes": peak_memory(cuda)}


def _tokens_of_last_step(trainer, before: dict) -> int:
    """Input tokens (without padding) of the rows the last step consumed."""
    from pyft.train.loop import RowStream

    stream = RowStream(len(trainer.train_ds), trainer.t.seed, before["epoch"], before["offset"])
    rows = stream.take(trainer.t.batch_size * trainer.t.grad_accum)
    return sum(len(trainer.train_ds[i]["input_ids"]) for i in rows)


def run_hf(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    import pyft.data

    cuda = torch.cuda.is_available()
    ds = pyft.data.load(args.data)
    rows = [{"input_ids": ds[i]["input_ids"].tolist(), "labels": ds[i]["labels"].tolist()} for i in range(len(ds))]
    pad = ds.info.meta["tokenizer"]["pad_token_id"] or 0

    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad)
        labels = torch.full((len(batch), n), -100)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[r, :k], labels[r, :k], mask[r, :k] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    clock: dict = {"tokens": 0}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == WARMUP:
                if cuda:
                    torch.cuda.synchronize()
                clock["t0"] = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            clock["t1"] = time.perf_counter()

    class CountingCollator:
        def __call__(self, batch):
            out = collate(batch)
            if "t0" in clock:
                clock["tokens"] += int(out["attention_mask"].sum())
            return out

    targs = TrainingArguments(output_dir=args.out, per_device_train_batch_size=args.batch, max_steps=args.steps + WARMUP,
                              learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=10**9, save_strategy="no",
                              report_to=[], bf16=cuda, use_cpu=not cuda, dataloader_num_workers=0,
                              remove_unused_columns=False, disable_tqdm=True)
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=CountingCollator(), callbacks=[Timer()]).train()
    return {"seconds": clock["t1"] - clock["t0"], "tokens": clock["tokens"], "peak_bytes": peak_memory(cuda)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--run", choices=["pyft", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        result = run_pyft(args) if args.run == "pyft" else run_hf(args)
        print("RESULT " + json.dumps(result))
        return 0

    from pyft import _core
    from pyft.data import prepare
    from pyft.data.demo import demo_path
    from pyft.testing import make_tiny_model, make_tokenizer

    if _core.build_profile() != "release":
        print("refusing to benchmark a debug build", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-train-"))
    tok = make_tokenizer(work / "tok", style="chatml", vocab_size=8192)
    model = make_tiny_model(work / "model", tok, arch="llama", **SHAPES[args.shape])
    # Longer conversations: every 8 bundled chats joined into one multi-turn chat (~250-300 tokens).
    chats = [json.loads(x)["messages"] for x in demo_path().read_text(encoding="utf-8").splitlines()]
    joined = [[m for c in chats[i : i + 8] for m in c if m["role"] != "system"] for i in range(0, len(chats), 8)]
    (work / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in joined), encoding="utf-8")
    prepare(work / "chats.jsonl", model, work / "data", max_len=args.max_len, progress=False)
    results = {}
    for name in ("pyft", "hf"):
        cmd = [sys.executable, __file__, "--run", name, "--model", str(model), "--data", str(work / "data"),
               "--out", str(work / f"out-{name}"), "--steps", str(args.steps), "--batch", str(args.batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        results[name] = json.loads(line[-1][7:])
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"LoRA r=16 all-linear, {args.shape} Llama shape, batch {args.batch}, {args.steps} timed steps, {device}")
    print(f"{'path':<36}{'tokens/s':>12}{'peak memory (GiB)':>20}")
    for name, label in (("pyft", "pyft"), ("hf", "transformers Trainer + peft")):
        r = results[name]
        print(f"{label:<36}{r['tokens'] / r['seconds']:>12,.0f}{r['peak_bytes'] / 2**30:>20.2f}")
    speed = (results["pyft"]["tokens"] / results["pyft"]["seconds"]) / (results["hf"]["tokens"] / results["hf"]["seconds"])
    mem = results["pyft"]["peak_bytes"] / results["hf"]["peak_bytes"]
    print(f"pyft / HF: {speed:.2f}x tokens/s, {mem:.2f}x peak memory")
    print(json.dumps({"bench": "train", "shape": args.shape, "device": device, "speedup": speed, "memory_ratio": mem,
                      **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
