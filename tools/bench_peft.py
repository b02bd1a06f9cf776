#!/usr/bin/env python
"""Every tuning pyft trains, on one model and one task: trainable parameters, peak memory, tokens/s,
eval loss before and after, and whether the result merges into the weights.

The model and task are the demo's (``pyft demo``): the random-init Llama-shape tiny model
(:data:`pyft.demo.DEMO_SHAPE`, hidden 128, 4 layers) with its locally trained ChatML tokenizer, and the
bundled conversations prepared as the demo prepares them (packed to 256 tokens, 10 % validation).
The base is random-init, so, as the demo's LoRA does, every adapter also trains the output layer in
full (``modules_to_save: [lm_head]``; the hybrid's LoRA part does); the baseline row trains only
``lm_head`` and the final norm, to show what the adapters add. Each tuning trains for the demo's
step budget (``--steps``, 250) at batch 4 with a cosine schedule,
fp32, seed 0, at a learning rate suited to it (:data:`RUNS`; ``--lr NAME=VALUE`` overrides one), in its
own process, so its peak memory (``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) is
its own. tokens/s counts trained (target) tokens over the wall time of the training loop, its two
evaluations (at the start and the end) left out. ``learned`` says whether the final eval loss is at most half of
the starting one (the issue's bar for "learns the demo task").

Prints a Markdown table (the README's) and ends with one JSON line.

Usage: ``python tools/bench_peft.py [--steps N] [--only NAME,...] [--lr NAME=VALUE ...] [--device cpu|cuda]``.
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

#: The demo's base is random-init, so its output layer must learn the task's vocabulary: as the demo's
#: LoRA does, every adapter run also trains ``lm_head`` in full (``modules_to_save``, PEFT's way).
HEAD = {"modules_to_save": ["lm_head"]}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear", **HEAD}
#: name -> (config values, learning rate). Every run but ``full`` trains adapters over the frozen base.
RUNS: dict[str, tuple[dict, float]] = {
    "full": ({"method": "full"}, 1e-3),
    "baseline: lm_head + final norm only": ({"method": "full", "freeze": {"embeddings": True, "first_layers": 4}},
                                            3e-3),
    "lora": ({"method": "lora", "lora": LORA}, 3e-3),
    "rslora": ({"method": "lora", "lora": {**LORA, "rslora": True}}, 3e-3),
    "dora": ({"method": "lora", "lora": {**LORA, "dora": True}}, 3e-3),
    "qlora": ({"method": "qlora", "lora": LORA}, 3e-3),
    "ia3": ({"method": "ia3", "ia3": HEAD}, 3e-3),
    "oft": ({"method": "oft", "oft": HEAD}, 3e-3),
    "prompt_tuning": ({"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 20, **HEAD}}, 3e-3),
    "p_tuning": ({"method": "p_tuning", "p_tuning": {"num_virtual_tokens": 20, **HEAD}}, 3e-3),
    "prefix_tuning": ({"method": "prefix_tuning",
                       "prefix_tuning": {"num_virtual_tokens": 20, "projection": True, **HEAD}}, 3e-3),
    "p_tuning_v2": ({"method": "p_tuning_v2", "prefix_tuning": {"num_virtual_tokens": 20, **HEAD}}, 3e-3),
    "bottleneck (pfeiffer)": ({"method": "bottleneck", "bottleneck": {"kind": "pfeiffer", **HEAD}}, 3e-3),
    "bottleneck (houlsby)": ({"method": "bottleneck", "bottleneck": {"kind": "houlsby", **HEAD}}, 3e-3),
    "hybrid: prompt, then + lora": ({
        "method": "sft", "tuning": ["prompt_tuning", "lora"], "prompt_tuning": {"num_virtual_tokens": 20},
        "lora": {**LORA, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "stages": [{"train": ["prompt_tuning"], "steps": 50}, {"train": ["prompt_tuning", "lora"]}]}, 3e-3),
}


def setup(work: Path) -> tuple[Path, Path]:
    """The demo's base model and prepared data in ``work`` (built once per benchmark)."""
    from pyft.data import prepare
    from pyft.data.demo import demo_path
    from pyft.demo import DEMO_SHAPE
    from pyft.testing import make_tiny_model, make_tokenizer

    tok = make_tokenizer(work / "tokenizer", style="chatml")
    model = make_tiny_model(work / "base", tok, arch="llama", **DEMO_SHAPE)
    prepare(demo_path(), model, work / "data", max_len=256, pack="bfd", val_ratio=0.1, seed=0, dedup=True,
            progress=False)
    return model, work / "data"


def worker(name: str, work: Path, steps: int, lr: float, device: str) -> dict:
    """Train run ``name`` and return its row (runs in its own process)."""
    import resource

    import torch

    from pyft.methods import get_tuning
    from pyft.peft import trainable_parameters
    from pyft.train import build_trainer, load_config

    values, _ = RUNS[name]
    config = load_config(
        model=str(work / "base"), data=str(work / "data"), output=str(work / "runs" / name.split()[0]),
        overwrite=True, **values,
        train={"max_steps": steps, "batch_size": 4, "lr": lr, "schedule": "cosine", "warmup": 0.05,
               "eval_every": steps, "log_every": 10_000, "precision": "fp32", "seed": 0, "device": device},
    )
    trainer = build_trainer(config)
    trainable, total = trainable_parameters(trainer.model)
    head = sum(p.numel() for p in trainer.model.get_output_embeddings().parameters() if p.requires_grad)
    head = head if config.trains_adapter else 0  # lm_head trained in full beside the adapter
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    evaluate, eval_seconds = trainer.evaluate, [0.0]

    def timed_evaluate():
        t = time.perf_counter()
        try:
            return evaluate()
        finally:
            eval_seconds[0] += time.perf_counter() - t

    trainer.evaluate = timed_evaluate
    t0 = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - t0 - eval_seconds[0]
    evals = [r["eval_loss"] for r in result.history if "eval_loss" in r]
    tokens = sum(r.get("tokens", 0) for r in result.history if "loss" in r and "eval_loss" not in r)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"name": name, "trainable": trainable, "adapter": trainable - head if config.trains_adapter else None,
            "total": total, "peak_bytes": peak, "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds, "eval_start": evals[0], "eval_end": evals[-1],
            "learned": evals[-1] <= 0.5 * evals[0], "lr": lr, "steps": steps,
            "mergeable": all(get_tuning(t).mergeable for t in config.tuning_parts)}


def table(rows: list[dict], device: str) -> str:
    peak_name = "peak GPU memory" if device == "cuda" else "peak RSS"
    lines = [(f"| tuning | adapter params | trainable params (with lm_head) | {peak_name} | tokens/s | "
             "eval loss start → end | ≤ half | mergeable | lr |"),
             "|---|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | — | — | — | — | failed: {r['error']} | — | — | — |")
            continue
        share = 100 * r["trainable"] / r["total"]
        adapter = f"{r['adapter']:,}" if r["adapter"] is not None else (
            "(all weights)" if r["trainable"] == r["total"] else "—")
        lines.append(f"| {r['name']} | {adapter} | {r['trainable']:,} ({share:.2f} %) | {r['peak_bytes'] / 2**20:.0f} MiB | "
                     f"{r['tokens_per_s']:,.0f} | {r['eval_start']:.3f} → {r['eval_end']:.3f} | "
                     f"{'yes' if r['learned'] else 'no'} | {'yes' if r['mergeable'] else 'no'} | {r['lr']:g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250, help="optimizer steps per tuning (the demo's budget)")
    ap.add_argument("--only", help="comma-separated run names (default: all)")
    ap.add_argument("--lr", action="append", default=[], help="NAME=VALUE: another learning rate for one run")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    lrs = {name: lr for name, (_, lr) in RUNS.items()}
    for item in args.lr:
        name, _, value = item.partition("=")
        if name not in RUNS:
            ap.error(f"--lr: unknown run {name!r}")
        lrs[name] = float(value)
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.work), args.steps, lrs[args.worker], args.device)))
        return
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        ap.error(f"--only: unknown run {unknown[0]!r} (runs: {', '.join(RUNS)})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pyft-bench-peft-") as tmp:
        work = Path(tmp)
        setup(work)
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--work", str(work), "--steps", str(args.steps),
                   "--device", args.device, *[f"--lr={k}={v}" for k, v in lrs.items() if k == name]]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({"name": name, "error": last[:160]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"[bench_peft] {name}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(table(rows, args.device))
    print(json.dumps({"steps": args.steps, "device": args.device, "rows": rows}))


if __name__ == "__main__":
    main()
