#!/usr/bin/env python
"""LoRA / QLoRA SFT throughput and peak memory: pyft against transformers' Trainer + peft, side by side.

Both runs use the same random-init model, the same prepared data (the bundled demo conversations
joined eight at a time into multi-turn chats, unpacked, padded per batch), the same LoRA (all linear layers, r=16), batch size, learning rate
and number of steps. Each runs in its own process so its peak memory is its own. Timing starts
after ``--warmup`` steps (3). Prints a table and ends with one JSON line.

``--method qlora``: the base in NF4 with double quantization on both sides: pyft's own
(``method: qlora``, quantized in Rust while loading, Triton dequant on CUDA) against transformers'
``BitsAndBytesConfig(load_in_4bit=True)`` + peft (bitsandbytes' kernels).

CPU: fp32, the ``small`` Llama shape by default. CUDA (``--device cuda``, the default when a GPU
is there): bf16 autocast over bf16 weights on both sides, SDPA attention on both sides (the JSON
line records each side's), peak memory = ``torch.cuda.max_memory_allocated`` of each process;
``--shape 1b`` (hidden 2048, 16 layers) or ``8b``. ``--shape tiny --steps 1 --warmup 1`` is a
smoke run (measures nothing; allowed on a debug build).

Usage: ``python tools/bench_train.py [--device auto|cpu|cuda] [--method lora|qlora]
[--shape tiny|small|1b|8b] [--steps N] [--warmup N] [--batch B]``.
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
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


def peak_memory(cuda: bool) -> int:
    """Peak bytes of this process: CUDA memory allocated by torch, or the peak RSS on CPU."""
    import resource

    import torch

    if cuda:
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def run_pyft(args) -> dict:
    from pyft.train import build_trainer, load_config

    cuda = args.device == "cuda"
    cfg = load_config(model=args.model, data=args.data, output=args.out, method=args.method,
                      lora={**LORA, "targets": "all-linear"},
                      train={"max_steps": args.steps + args.warmup, "batch_size": args.batch, "lr": 1e-4,
                             "schedule": "constant", "precision": "bf16" if cuda else "fp32", "log_every": 10**9,
                             "device": args.device})
    trainer = build_trainer(cfg)
    for _ in range(args.warmup):
        trainer.train_step()
    sync(cuda)
    t0, tokens = time.perf_counter(), 0
    for _ in range(args.steps):
        rows_before = trainer.stream.position()
        trainer.train_step()
        tokens += _tokens_of_last_step(trainer, rows_before)
    sync(cuda)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "peak_bytes": peak_memory(cuda),
            "attn": trainer.model.config._attn_implementation}


def _tokens_of_last_step(trainer, before: dict) -> int:
    """Input tokens (without padding) of the rows the last step consumed."""
    from pyft.train.loop import RowStream

    stream = RowStream(len(trainer.train_ds), trainer.options.seed, before["epoch"], before["offset"])
    rows = stream.take(trainer.options.batch_size * trainer.options.grad_accum)
    return sum(len(trainer.train_ds[i]["input_ids"]) for i in rows)


def run_hf(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    import pyft.data

    cuda = args.device == "cuda"
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

    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
    if args.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        if cuda:
            kwargs["device_map"] = {"": 0}  # quantized by bitsandbytes' CUDA kernels while loading
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    clock: dict = {"tokens": 0}

    def count_tokens(module, a, kw):  # the forward passes of the timed steps (after on_step_begin set t0)
        if "t0" in clock and module.training:
            clock["tokens"] += int(kw["attention_mask"].sum())

    model.register_forward_pre_hook(count_tokens, with_kwargs=True)

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup and "t0" not in clock:
                sync(cuda)
                clock["t0"] = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            sync(cuda)
            clock["t1"] = time.perf_counter()

    targs = TrainingArguments(output_dir=args.out, per_device_train_batch_size=args.batch,
                              max_steps=args.steps + args.warmup, learning_rate=1e-4, lr_scheduler_type="constant",
                              logging_steps=10**9, save_strategy="no", report_to=[], bf16=cuda, use_cpu=not cuda,
                              dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Timer()]).train()
    return {"seconds": clock["t1"] - clock["t0"], "tokens": clock["tokens"], "peak_bytes": peak_memory(cuda),
            "attn": model.config._attn_implementation}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--method", choices=["lora", "qlora"], default="lora")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
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

    import torch

    from pyft import _core
    from pyft.data import prepare
    from pyft.data.demo import demo_path
    from pyft.testing import make_tiny_model, make_tokenizer

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    if _core.build_profile() != "release":
        if args.shape != "tiny":
            print("refusing to benchmark a debug build (a --shape tiny smoke run is allowed)", file=sys.stderr)
            return 2
        print("note: a debug build of pyft._core (smoke run: the numbers mean nothing)", file=sys.stderr)
    cuda = args.device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-train-"))
    tok = make_tokenizer(work / "tok", style="chatml", vocab_size=8192)
    model = make_tiny_model(work / "model", tok, arch="llama", dtype="bfloat16" if cuda else "float32",
                            **SHAPES[args.shape])
    # Longer conversations: every 8 bundled chats joined into one multi-turn chat (~250-300 tokens).
    chats = [json.loads(x)["messages"] for x in demo_path().read_text(encoding="utf-8").splitlines()]
    joined = [[m for c in chats[i : i + 8] for m in c if m["role"] != "system"] for i in range(0, len(chats), 8)]
    (work / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in joined), encoding="utf-8")
    prepare(work / "chats.jsonl", model, work / "data", max_len=args.max_len, progress=False)
    results = {}
    for name in ("pyft", "hf"):
        cmd = [sys.executable, __file__, "--run", name, "--model", str(model), "--data", str(work / "data"),
               "--out", str(work / f"out-{name}"), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch", str(args.batch), "--device", args.device, "--method", args.method]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"the {name} run failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(line[-1][7:])
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    precision = "bf16" if cuda else "fp32"
    hf_label = "transformers Trainer + peft" + (" + bitsandbytes 4-bit" if args.method == "qlora" else "")
    print(f"{args.method.upper()} r=16 all-linear, {args.shape} Llama shape, {precision}, batch {args.batch}, "
          f"{args.steps} timed steps, {device}")
    print(f"{'path':<46}{'tokens/s':>12}{'peak memory (GiB)':>20}{'attention':>12}")
    for name, label in (("pyft", "pyft"), ("hf", hf_label)):
        r = results[name]
        print(f"{label:<46}{r['tokens'] / r['seconds']:>12,.0f}{r['peak_bytes'] / 2**30:>20.2f}{r['attn']:>12}")
    speed = (results["pyft"]["tokens"] / results["pyft"]["seconds"]) / (results["hf"]["tokens"] / results["hf"]["seconds"])
    mem = results["pyft"]["peak_bytes"] / results["hf"]["peak_bytes"]
    print(f"pyft / HF: {speed:.2f}x tokens/s, {mem:.2f}x peak memory")
    print(json.dumps({"bench": "train", "method": args.method, "shape": args.shape, "device": device,
                      "precision": precision, "speedup": speed, "memory_ratio": mem,
                      **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
