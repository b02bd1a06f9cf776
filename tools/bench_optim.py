#!/usr/bin/env python
"""Optimizer memory and step time: torch AdamW against pyft's 8-bit and paged AdamW (and bitsandbytes').

The parameters are those of a random Llama built from a transformers config (default 98.9M:
hidden 768, 12 layers, MLP 2048, vocab 32000, tied embeddings), float32, with random gradients:
only ``optimizer.step()`` runs. Each optimizer runs in its own process so its peak memory is its
own. Reported per optimizer: bytes of its state tensors (on the device, and in pinned host memory
for the paged ones), the peak memory the optimizer adds on top of parameters and gradients (CUDA:
``max_memory_allocated``; CPU: growth of the process's peak RSS, measured in a second process
with glibc's mmap threshold fixed at 1 MiB so that freed temporaries leave the RSS, which makes
its steps slower) and the best step time of ``--steps`` after ``--warmup`` steps. On CPU the paged variants keep their states in ordinary memory (paging needs
CUDA); on CUDA they hold at most two slices of state on the GPU. ``--bnb`` adds bitsandbytes'
``AdamW8bit`` (its CPU backend, or its fused CUDA kernel) and on CUDA its ``PagedAdamW8bit``, whose
states are CUDA managed memory: counted as "managed" and invisible to ``max_memory_allocated``.
Prints a table and ends with one JSON line.

``--device cuda`` (the default when a GPU is there) runs every optimizer on the GPU; the Llama-3.2-1B
shape is ``--hidden 2048 --layers 16 --intermediate 8192 --vocab 128256`` (1.24B parameters).
``--device cpu --hidden 64 --layers 1 --intermediate 128 --vocab 512 --steps 1 --warmup 0`` is a smoke run.

Usage: ``python tools/bench_optim.py [--device auto|cpu|cuda] [--hidden 768] [--layers 12]
[--intermediate 2048] [--vocab 32000] [--steps 2] [--warmup 1] [--threads N] [--bnb] [--only a,b] [--no-rss]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit")


def shapes(args) -> list[tuple[int, ...]]:
    """Parameter shapes of the Llama that ``args`` describes (built on the meta device)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 256), tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return [tuple(p.shape) for p in model.parameters()]


def run_one(args) -> dict:
    """Build parameters and gradients, then time ``args.run``'s steps; returns the measurements."""
    import torch

    from pyft.train.optim import build_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = args.device
    gen = torch.Generator(device=device).manual_seed(0)
    # filled in place: no temporaries that would raise the peak before the optimizer runs
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(s, device=device).normal_(0, 0.02, generator=gen))
                                    for s in json.loads(args.shapes)])
    for p in model:
        p.grad = torch.empty(p.shape, device=device).normal_(0, 1e-3, generator=gen)
    n_params = sum(p.numel() for p in model)
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.run.startswith("bnb_"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if args.run == "bnb_paged_adamw_8bit" else bnb.optim.AdamW8bit
        opt = cls(model.parameters(), lr=1e-4, weight_decay=0.0)
    else:
        opt = build_optimizer(model, 1e-4, 0.0, (0.9, 0.999), 1e-8, args.run)
    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    on_device = on_host = managed = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                nbytes = v.numel() * v.element_size()
                if getattr(v, "is_paged", False):  # bitsandbytes' paged states: CUDA managed memory
                    managed += nbytes
                elif v.device.type == "cpu" and cuda:
                    on_host += nbytes
                else:
                    on_device += nbytes
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"params": n_params, "state_device_bytes": on_device, "state_host_bytes": on_host,
            "state_managed_bytes": managed, "peak_extra_bytes": peak, "step_ms": 1e3 * min(times)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (the best one is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (they allocate the states)")
    ap.add_argument("--bnb", action="store_true", help="also bitsandbytes' AdamW8bit (and PagedAdamW8bit on CUDA)")
    ap.add_argument("--only", help="comma-separated optimizers to run (default: all; adamw always runs)")
    ap.add_argument("--no-rss", action="store_true",
                    help="CPU: skip the second process per optimizer that measures the peak RSS (peak = timing run's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print("RESULT " + json.dumps(run_one(args)))
        return 0

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    names = list(OPTIMIZERS) + (["bnb_adamw_8bit"] + (["bnb_paged_adamw_8bit"] if cuda else []) if args.bnb else [])
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(names)
        if unknown:
            print(f"--only: unknown optimizer(s) {sorted(unknown)} (choose from {names})", file=sys.stderr)
            return 2
        names = [n for n in names if n == "adamw" or n in wanted]
    param_shapes = json.dumps(shapes(args))
    results = {}
    for name in names:
        # CPU: time with the default allocator, then the peak RSS with every large block mmap'ed
        for memory_run in (False, True) if not (cuda or args.no_rss) else (False,):
            cmd = [sys.executable, __file__, "--run", name, "--shapes", param_shapes] + [
                f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "threads", "device")]
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            if memory_run:  # the first step's peak: new states plus the update's temporaries
                cmd += ["--steps=1", "--warmup=0"]
                env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"the {name} run failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
                return 1
            result = json.loads(line[-1][7:])
            if memory_run:
                results[name]["peak_extra_bytes"] = result["peak_extra_bytes"]
            else:
                results[name] = result
    threads = args.threads or torch.get_num_threads()
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {threads} threads)"
    params = results["adamw"]["params"]
    mib = 2**20
    print(f"AdamW step over {params / 1e6:.1f}M float32 parameters (Llama h={args.hidden}, {args.layers} layers, "
          f"MLP {args.intermediate}, vocab {args.vocab}), best of {args.steps} steps, {device}")
    print(f"{'optimizer':<22}{'states on ' + ('GPU' if cuda else 'CPU'):>16}{'pinned host':>14}{'managed':>10}"
          f"{'B/param':>9}{'peak extra':>13}{'step ms':>10}   (MiB)")
    for name, r in results.items():
        per = (r["state_device_bytes"] + r["state_host_bytes"] + r["state_managed_bytes"]) / r["params"]
        print(f"{name:<22}{r['state_device_bytes'] / mib:>16,.1f}{r['state_host_bytes'] / mib:>14,.1f}"
              f"{r['state_managed_bytes'] / mib:>10,.1f}{per:>9.2f}{r['peak_extra_bytes'] / mib:>13,.1f}"
              f"{r['step_ms']:>10,.1f}")
    base = results["adamw"]
    for name, r in results.items():
        if name != "adamw" and (cuda or not name.startswith("paged")):
            print(f"{name}: {(base['state_device_bytes'] - r['state_device_bytes']) / mib:,.1f} MiB less optimizer "
                  f"state on the {'GPU' if cuda else 'CPU'} than adamw, peak {r['peak_extra_bytes'] / mib:,.1f} MiB "
                  f"instead of {base['peak_extra_bytes'] / mib:,.1f}")
    if not cuda:
        print("paging needs CUDA: on CPU the paged optimizers keep their states in ordinary memory")
    elif "bnb_paged_adamw_8bit" in results:
        print("bitsandbytes' paged states are CUDA managed memory (the driver pages them): not in 'peak extra'")
    print(json.dumps({"bench": "optim", "device": device, "params": params,
                      **{f"{n}_{k}": v for n, r in results.items() for k, v in r.items() if k != "params"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
