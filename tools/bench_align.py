#!/usr/bin/env python
"""LoRA DPO throughput and peak memory: pyft against TRL's ``DPOTrainer`` (+ peft), side by side.

Both runs train the same random-init Llama on the same preference pairs with the same LoRA (r=16,
alpha 32, all linear layers), DPO loss (sigmoid, beta 0.1, reference = the policy with its adapters
disabled), batch size, max length, learning rate (constant, AdamW) and number of steps, with no
gradient checkpointing, evaluation or saving. The model's vocabulary is padded to a realistic size
(32000 CPU, 128256 for ``1b``) although the locally trained tokenizer has ~7K tokens, so the output
layer costs what it does in real models.

Data: synthetic pairs of realistic, variable length (about 64-512 tokens per sequence on CPU, up to
1024 for ``1b``): a user prompt made of sentences of the bundled corpus, a chosen answer opening with
"Sure!" and a rejected one opening with "No." (as ``pyft.testing.preference``), each with its own
length, in the Llama-3 chat template, prepared once by ``pyft.data.prepare`` (no truncation). TRL
gets those same token ids (``prompt_ids``/``chosen_ids``/``rejected_ids``, its own collator pads
them), in the same order as pyft's sampler, so every step of both sides sees the same pairs.

Each side runs in its own process. Timing covers the steps after the warm-up steps (wall time of
whole steps: collation, forward, reference forward, backward, optimizer). Tokens/s counts the real
tokens of prompt+chosen and prompt+rejected of the timed steps, from the data; each side's own
count per step (pyft's batch, TRL's ``attention_mask``) is checked against it. Peak memory is the
increase over the process's memory right before the first step (after imports, model load and
trainer setup): peak RSS (``/proc/self/clear_refs`` reset) on CPU, ``torch.cuda.max_memory_allocated``
on GPU. Prints a table and ends with one JSON line.

CPU (default): hidden 512, 6 layers, fp32. GPU: ``--device cuda --shape 1b`` (the Llama-3.2-1B shape
with an untied output layer, bf16 on both sides).
Usage: ``python tools/bench_align.py [--device cpu|cuda] [--shape small|1b] [--steps N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
}
# Per shape: (batch size in pairs, timed steps, max length). The CPU run fits ~10 minutes on 2 cores.
DEFAULTS = {"small": (2, 5, 512), "1b": (8, 10, 1024)}
WARMUP = 2  # the first two steps run slower on CPU (fresh memory pages), whatever the model size
LR = 1e-4
BETA = 0.1
SEED = 42


# -- measurement helpers (both children) ------------------------------------------------------------
def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_baseline(cuda: bool) -> int:
    """Current memory, with the peak reset to it: CUDA allocated bytes, or the RSS."""
    import gc

    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # VmHWM := VmRSS
    return _status("VmRSS")


def memory_peak(cuda: bool) -> int:
    """Peak since :func:`memory_baseline`."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if cuda else _status("VmHWM")


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def step_rows(n_rows: int, batch: int, steps: int) -> list[list[int]]:
    """The dataset rows of each step, in pyft's sampling order (seeded per-epoch permutation)."""
    from pyft.train.loop import RowStream

    stream = RowStream(n_rows, SEED)
    return [stream.take(batch) for _ in range(steps)]


# -- the two sides ----------------------------------------------------------------------------------
def run_pyft(args) -> dict:
    from pyft.train import build_trainer, load_config

    cuda = args.device == "cuda"
    cfg = load_config(model=args.model, data=args.data, output=args.out, method="dpo",
                      lora={"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
                      align={"beta": BETA, "loss_type": "sigmoid"},
                      train={"max_steps": args.steps + WARMUP, "batch_size": args.batch, "lr": LR,
                             "schedule": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": SEED,
                             "precision": "bf16" if cuda else "fp32", "device": args.device,
                             "log_every": 10**9})
    trainer = build_trainer(cfg)
    base = memory_baseline(cuda)
    records, clock = [], [_now(cuda)]
    for _ in range(args.steps + WARMUP):
        records.append(trainer.train_step())
        clock.append(_now(cuda))
    return _result(cuda, base, clock, records)


def run_trl(args) -> dict:
    # TRL is a benchmark oracle only: imported here, never by pyft.
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    import pyft.data

    cuda = args.device == "cuda"
    ds = pyft.data.load(args.data)
    order = [i for rows in step_rows(len(ds), args.batch, args.steps + WARMUP) for i in rows]
    columns = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for i in order:  # pyft's order, read sequentially below: both sides see the same pairs per step
        item = ds[i]
        for key in ("prompt", "chosen", "rejected"):
            columns[f"{key}_ids"].append(item[key].tolist())
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32)
    records: list[dict] = []
    clock: list[tuple[float, float]] = []

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on ids tokenized by pyft. TRL 1.16's ``_prepare_dataset`` always re-derives the
        ids from ``prompt``/``chosen``/``rejected`` text, so it is skipped; its collator pads our ids."""

        def _prepare_dataset(self, dataset, *unused, **kw):
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            m = self._metrics["train"]
            records.append({"loss": float(loss.detach()), "rewards/accuracies": m["rewards/accuracies"][-1],
                            "tokens": int(inputs["attention_mask"].sum())})
            return loss

    class StepClock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            clock.append(_now(cuda))

    config = DPOConfig(
        output_dir=args.out, per_device_train_batch_size=args.batch, max_length=args.max_len,
        max_steps=args.steps + WARMUP, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch_fused" if cuda else "adamw_torch", seed=SEED,
        beta=BETA, loss_type=["sigmoid"], train_sampling_strategy="sequential", gradient_checkpointing=False,
        bf16=cuda, use_cpu=not cuda, dataloader_num_workers=0, report_to="none", logging_strategy="no",
        save_strategy="no", eval_strategy="no", disable_tqdm=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    collator = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=args.max_len)
    trainer = PretokenizedDPOTrainer(model=model, ref_model=None, args=config,
                                     train_dataset=Dataset.from_dict(columns), processing_class=tok,
                                     data_collator=collator, peft_config=lora, callbacks=[StepClock()])
    base = memory_baseline(cuda)
    clock.append(_now(cuda))
    trainer.train()
    return _result(cuda, base, clock, records)


def _now(cuda: bool) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds, after the device finished its queued work."""
    sync(cuda)
    return time.perf_counter(), time.process_time()


def _result(cuda: bool, base: int, clock: list[tuple[float, float]], records: list[dict]) -> dict:
    """What a child reports: per-step wall and CPU seconds, its own token counts, losses and
    accuracies, and memory."""
    return {"step_seconds": [b[0] - a[0] for a, b in itertools.pairwise(clock)],
            "step_cpu_seconds": [b[1] - a[1] for a, b in itertools.pairwise(clock)],
            "tokens": [r["tokens"] for r in records], "loss": [r["loss"] for r in records],
            "accuracy": [r["rewards/accuracies"] for r in records], "baseline_bytes": base,
            "peak_bytes": memory_peak(cuda) - base}


# -- data -------------------------------------------------------------------------------------------
def make_pairs(path: Path, tokenizer_dir: Path, n: int, max_len: int, seed: int = 0) -> Path:
    """Write ``n`` preference records of variable length: a prompt of 24 to ``max_len * 3/8`` tokens,
    chosen ("Sure! ...") and rejected ("No. ...") answers of 40 to ``max_len * 5/8`` tokens each, made
    of corpus sentences; every templated sequence fits in ``max_len`` (checked with the tokenizer)."""
    from transformers import AutoTokenizer

    from pyft.testing import CORPUS_PATH
    from pyft.testing.preference import BREAK_PREFIX, RULE_PREFIX

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    lines = [x for x in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if x.strip()]
    sizes = [len(ids) + 1 for ids in tok(lines, add_special_tokens=False)["input_ids"]]  # +1: the join
    rng = random.Random(seed)

    def text(tokens: int) -> str:  # sentences of at most about `tokens` tokens
        out, have = [], 0
        while have < tokens - 8:
            i = rng.randrange(len(lines))
            if have + sizes[i] <= tokens:
                out.append(lines[i])
                have += sizes[i]
        return " ".join(out)

    def length(messages: list[dict]) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    records = []
    while len(records) < n:
        p = rng.randint(24, max_len * 3 // 8)
        c, r = (min(rng.randint(40, max_len * 5 // 8), max_len - 16 - p) for _ in range(2))
        x = {"prompt": [{"role": "user", "content": text(p)}],
             "chosen": [{"role": "assistant", "content": f"{RULE_PREFIX} {text(c - 3)}"}],
             "rejected": [{"role": "assistant", "content": f"{BREAK_PREFIX} {text(r - 3)}"}]}
        if max(length(x["prompt"] + x[k]) for k in ("chosen", "rejected")) <= max_len:
            records.append(x)
    path.write_text("".join(json.dumps(x) + "\n" for x in records), encoding="utf-8")
    return path


# -- driver -----------------------------------------------------------------------------------------
def _child(name: str, args, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--run", name, "--model", str(work / "model"), "--data",
           str(work / "data"), "--out", str(work / f"out-{name}"), "--steps", str(args.steps), "--batch",
           str(args.batch), "--max-len", str(args.max_len), "--device", args.device]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{name} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[-1][7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--steps", type=int, help=f"timed steps, after {WARMUP} warm-up (default: 5, 10 for 1b)")
    ap.add_argument("--batch", type=int, help="preference pairs per step (default: 2, 8 for 1b)")
    ap.add_argument("--max-len", type=int, help="tokens per sequence (default: 512, 1024 for 1b)")
    ap.add_argument("--run", choices=["pyft", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batch, steps, max_len = DEFAULTS[args.shape]
    args.batch, args.steps, args.max_len = args.batch or batch, args.steps or steps, args.max_len or max_len
    if args.run:
        result = run_pyft(args) if args.run == "pyft" else run_trl(args)
        print("RESULT " + json.dumps(result))
        return 0

    import torch

    from pyft import _core

    if _core.build_profile() != "release":
        print("refusing to benchmark a debug build", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory(prefix="pyft-bench-align-") as tmp:
        work = Path(tmp)
        seq_lens, expected = make_inputs(args, work)
        results = {name: _child(name, args, work) for name in ("pyft", "trl")}
    for r in results.values():
        r["tokens_per_s"] = sum(expected[WARMUP:]) / sum(r["step_seconds"][WARMUP:])
        r["tokens_per_cpu_s"] = sum(expected[WARMUP:]) / sum(r["step_cpu_seconds"][WARMUP:])
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"DPO (sigmoid, beta {BETA}), LoRA r=16 all-linear, {args.shape} Llama shape "
          f"(vocab {SHAPES[args.shape]['vocab_size']}), {'bf16' if cuda else 'fp32'}, {device}")
    print(f"batch {args.batch} pairs, max length {args.max_len}, sequences of {min(seq_lens)}-"
          f"{max(seq_lens)} tokens (mean {sum(seq_lens) / len(seq_lens):.0f}), {WARMUP} warm-up + "
          f"{args.steps} timed steps")
    report(results, expected, cuda)
    check(results, expected)
    speed = results["pyft"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    mem = results["pyft"]["peak_bytes"] / results["trl"]["peak_bytes"]
    print(f"pyft / TRL: {speed:.2f}x tokens/s, {mem:.2f}x peak memory increase")
    print(json.dumps({"bench": "align", "method": "dpo", "shape": args.shape, "device": device,
                      "batch": args.batch, "max_len": args.max_len, "steps": args.steps, "speedup": speed,
                      "memory_ratio": mem,
                      **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()}}))
    return 0


def make_inputs(args, work: Path) -> tuple[list[int], list[int]]:
    """Tokenizer, model and prepared pairs in ``work``; returns every sequence's length and the real
    tokens of each step (pyft's row order)."""
    from pyft.data import load, prepare
    from pyft.testing import make_tiny_model, make_tokenizer

    tok = make_tokenizer(work / "tok", style="llama3", vocab_size=8192)  # the corpus yields ~7K tokens
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    make_tiny_model(work / "model", tok, arch="llama", dtype=dtype,
                    max_position_embeddings=max(2048, args.max_len), **SHAPES[args.shape])
    n_steps = args.steps + WARMUP
    make_pairs(work / "pairs.jsonl", tok, args.batch * n_steps, args.max_len)
    info = prepare(work / "pairs.jsonl", work / "model", work / "data", max_len=args.max_len, progress=False)
    if info.counts["truncated"] or info.counts["kept"] != args.batch * n_steps:
        raise RuntimeError(f"data: expected {args.batch * n_steps} untruncated pairs, got {info.counts}")
    ds = load(work / "data")
    seq_lens, expected = [], []
    for rows in step_rows(len(ds), args.batch, n_steps):
        lens = [len(ds[i]["prompt"]) + len(ds[i][k]) for i in rows for k in ("chosen", "rejected")]
        seq_lens += lens
        expected.append(sum(lens))
    return seq_lens, expected


def check(results: dict[str, dict], expected: list[int]) -> None:
    """Both sides trained on the data's tokens, started at the reference (loss ln 2) and moved."""
    for name, r in results.items():
        if r["tokens"] != expected:
            raise AssertionError(f"{name} trained on other tokens than the data: {r['tokens']} vs {expected}")
        if abs(r["loss"][0] - math.log(2)) > 1e-4:
            raise AssertionError(f"{name}: first DPO loss {r['loss'][0]:.6f} is not ln 2 (policy != ref)")
        if max(abs(x - r["loss"][0]) for x in r["loss"][1:]) < 1e-4:
            raise AssertionError(f"{name}: the loss never changed; it did not train")


def report(results: dict[str, dict], expected: list[int], cuda: bool) -> None:
    """Per-step table (tokens counted from the data and by each side, wall seconds, loss), then the
    summary table."""
    p, t = results["pyft"], results["trl"]
    print(f"{'step':>4}{'tokens (data)':>15}{'pyft':>8}{'TRL':>8}{'pyft s':>9}{'TRL s':>8}{'pyft loss':>11}"
          f"{'TRL loss':>10}")
    for i, n in enumerate(expected):
        print(f"{i + 1:>4}{n:>15}{p['tokens'][i]:>8}{t['tokens'][i]:>8}{p['step_seconds'][i]:>9.2f}"
              f"{t['step_seconds'][i]:>8.2f}{p['loss'][i]:>11.4f}{t['loss'][i]:>10.4f}"
              + ("  (warm-up)" if i < WARMUP else ""))
    memory = "CUDA allocated" if cuda else "RSS"
    gib = 2**30
    rows = [("tokens/s", p["tokens_per_s"], t["tokens_per_s"], "{:,.0f}"),
            ("tokens per CPU second", p["tokens_per_cpu_s"], t["tokens_per_cpu_s"], "{:,.0f}"),
            (f"peak {memory} increase (GiB)", p["peak_bytes"] / gib, t["peak_bytes"] / gib, "{:.3f}"),
            (f"{memory} before step 1 (GiB)", p["baseline_bytes"] / gib, t["baseline_bytes"] / gib, "{:.3f}")]
    print()
    print(f"{'':<32}{'pyft':>10}{'TRL':>10}{'pyft / TRL':>12}")
    for label, a, b, fmt in rows:
        print(f"{label:<32}{fmt.format(a):>10}{fmt.format(b):>10}{a / b:>12.2f}")
    print(f"{'rewards/accuracies, last step':<32}{p['accuracy'][-1]:>10.2f}{t['accuracy'][-1]:>10.2f}")
    mean = {k: sum(r["accuracy"][WARMUP:]) / len(r["accuracy"][WARMUP:]) for k, r in results.items()}
    print(f"{'rewards/accuracies, timed mean':<32}{mean['pyft']:>10.2f}{mean['trl']:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
