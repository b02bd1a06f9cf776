#!/usr/bin/env python
"""Memory per process of full fine-tuning under DDP and FSDP2 on 1, 2 and 4 CPU processes, against
``pyft estimate --nproc N --parallel ...``.

The model is a random-init Llama of ~110M parameters (hidden 768, 12 layers, MLP 2048, 12 heads,
vocabulary 32,000 with tied embeddings; ``--shape tiny`` for a smoke run) saved with a locally
trained ChatML tokenizer; the data are the bundled demo conversations packed into rows of
``--seq-len`` tokens (128). Each configuration trains ``--steps`` (3) AdamW steps in fp32 at
``--batch`` (2) rows per process under ``torchrun --standalone`` (gloo, ``OMP_NUM_THREADS=1``):
1 process (no wrapping), then 2 and 4 processes with ``train.parallel: ddp`` and ``fsdp``.

Each rank measures itself and writes one JSON file (nothing in pyft changes for this):

- ``state``: the bytes of parameters, gradients and optimizer states it actually holds, summed over
  its local tensors (``DTensor.to_local()`` under FSDP), taken right after the first optimizer step
  (an ``Optimizer.register_step_post_hook``, before the gradients are zeroed);
- ``base``: its resident set size (``VmRSS``) when pyft starts loading the model: Python, torch,
  pyft and transformers' modelling code imported, the process group and the data opened (the
  process baseline, ~0.75 GB, whatever the model's size);
- ``loaded``/``built``: its RSS after loading the model and after ``build_trainer`` (DDP's gradient
  buckets, FSDP's shards). On a CPU the whole model is loaded by mapping the safetensors file:
  pages nobody touches are never resident, so the whole copy pyft loads before FSDP shards it
  costs little RSS here (``estimate``'s ``loading``: CPU memory; FSDP moves it to a GPU layer by layer);
- ``setup``: its peak RSS (``VmHWM``) up to the end of ``build_trainer``;
- ``train``: its peak RSS during the training steps alone (``VmHWM`` reset through
  ``/proc/self/clear_refs`` once the trainer is built).

RSS counts what the allocator holds, not live tensors: with glibc's default (dynamic) mmap
threshold, freed activations and gathered layers stay in the heap and FSDP's RSS hardly falls with
N. The ranks therefore run with ``MALLOC_MMAP_THRESHOLD_=65536`` (every allocation above 64 KiB its
own mapping, unmapped when freed), so the peak RSS follows the live tensors; ``--malloc default``
measures glibc's defaults instead.

``pyft estimate`` (``--precision fp32``: a CPU run keeps float32 activations and gathers) predicts
the state (weights + gradients + optimizer states of rank 0, the largest), the training memory
above the baseline (``total``: state + gathered working set + activations) and the peak (the larger
of that and the whole model loaded before sharding); the tables give measured / predicted - 1.

Prints Markdown tables and ends with one JSON line (``--json PATH`` also writes it to a file).

Usage: ``python tools/bench_fsdp.py [--shape 110m|tiny] [--steps N] [--batch B] [--seq-len T]
[--procs 1,2,4] [--malloc mmap|default] [--json PATH] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "110m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 12, "vocab_size": 32000, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 8192, "tie_word_embeddings": True},
}
MIB = 2**20


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Restart the peak RSS (``VmHWM``, and ``ru_maxrss`` with it) from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _held_bytes(trainer) -> dict[str, int]:
    """Bytes of the parameters, gradients and optimizer states this process holds (local shards)."""
    import torch

    def nbytes(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list({id(p): p for p in trainer.model.parameters()}.values())
    states = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"weights": sum(nbytes(p) for p in params),
            "gradients": sum(nbytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(nbytes(v) for v in states)}


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration: train ``args.steps`` steps, write ``rank<R>.json`` in ``args.out``."""
    from pyft.train import build_trainer, load_config, run

    marks: dict[str, int] = {}
    load = run.load_for_training

    def measured_load(*a, **kw):  # the process baseline, then what loading the whole model costs
        # transformers' modelling code costs ~230 MB of RSS whatever the model's size: imported first,
        # it belongs to the baseline.
        import transformers.modeling_utils
        import transformers.models.llama.modeling_llama  # noqa: F401

        marks["base"] = _status("VmRSS")
        model = load(*a, **kw)
        marks["loaded"] = _status("VmRSS")
        return model

    run.load_for_training = measured_load
    cfg = load_config(model=args.model, data=args.data, output=str(Path(args.out) / "run"), method="full",
                      train={"parallel": args.mode, "precision": "fp32", "device": "cpu", "max_steps": args.steps,
                             "batch_size": args.batch, "lr": 1e-5, "schedule": "constant", "log_every": 10**9,
                             "seed": 0})
    t0 = time.perf_counter()
    trainer = build_trainer(cfg)
    marks["built"] = _status("VmRSS")
    marks["setup"] = _status("VmHWM")
    _reset_peak()
    state: dict[str, int] = {}

    def after_step(*_):
        if not state:
            state.update(_held_bytes(trainer))

    trainer.optimizer.register_step_post_hook(after_step)
    t1 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    marks["train"] = _status("VmHWM")
    result = {"rank": trainer.dist.rank, "world": trainer.dist.world, "mode": trainer.parallel.mode, **marks,
              "state": state, "setup_s": t1 - t0, "step_s": (time.perf_counter() - t1) / args.steps}
    (Path(args.out) / f"rank{trainer.dist.rank}.json").write_text(json.dumps(result), encoding="utf-8")


def setup(work: Path, shape: str, seq_len: int) -> tuple[Path, Path]:
    """The model and the packed demo data in ``work``."""
    from pyft.data import prepare
    from pyft.data.demo import demo_path
    from pyft.testing import make_tiny_model, make_tokenizer

    tok = make_tokenizer(work / "tokenizer", style="chatml", vocab_size=8192)
    model = make_tiny_model(work / "model", tok, arch="llama", **SHAPES[shape])
    prepare(demo_path(), model, work / "data", max_len=seq_len, pack="bfd", seed=0, progress=False)
    return model, work / "data"


def launch(args: argparse.Namespace, model: Path, data: Path, nproc: int, mode: str, out: Path) -> list[dict]:
    """Run one configuration under torchrun; the ranks' measurements, by rank."""
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
           "--worker", "--mode", mode, "--model", str(model), "--data", str(data), "--out", str(out),
           "--steps", str(args.steps), "--batch", str(args.batch)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.malloc == "mmap":  # every tensor above 64 KiB its own mapping, unmapped when freed
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{nproc} x {mode} failed:\n{proc.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(nproc)]


def _pct(measured: float, predicted: float) -> str:
    return f"{100 * (measured / predicted - 1):+.1f} %"


def report(args: argparse.Namespace, model: Path, runs: dict[tuple[int, str], list[dict]]) -> dict:
    """Print the tables; return the JSON summary."""
    from pyft.train.estimate import estimate

    def predicted(nproc: int, mode: str):
        return estimate(model, "full", args.seq_len, args.batch, precision="fp32", nproc=nproc,
                        parallel=None if nproc == 1 else mode)

    one = runs[(1, "single")][0]
    one_state = sum(one["state"].values())
    cores = os.cpu_count()
    print(f"Full fine-tuning, AdamW, fp32, {args.shape} Llama ({predicted(1, 'single').params / 1e6:,.1f}M "
          f"parameters), batch {args.batch} x {args.seq_len} tokens per process, {args.steps} steps, CPU "
          f"({cores} cores), gloo, OMP_NUM_THREADS=1, malloc {args.malloc}\n")
    print("State held per rank: parameters + gradients + AdamW states (local shards), MiB")
    print("| processes | engine | rank | weights | grads | optimizer | state | of 1 process | estimate | "
          "measured vs estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (nproc, mode), ranks in runs.items():
        e = predicted(nproc, mode)
        est_state = e.weights + e.gradients + e.optimizer
        for r in ranks:
            s = r["state"]
            held = sum(s.values())
            print(f"| {nproc} | {mode} | {r['rank']} | {s['weights'] / MIB:,.1f} | {s['gradients'] / MIB:,.1f} | "
                  f"{s['optimizer'] / MIB:,.1f} | {held / MIB:,.1f} | {held / one_state:.3f} | "
                  f"{est_state / MIB:,.1f} | {_pct(held, est_state)} |")
            rows.append({"nproc": nproc, "mode": mode, "rank": r["rank"], "state": held, "state_fraction":
                         held / one_state, "est_state": est_state, "base": r["base"], "loaded": r["loaded"],
                         "built": r["built"], "setup_peak": r["setup"], "train_peak": r["train"],
                         "est_total": e.total, "est_gathered": e.gathered, "est_activations": e.activations,
                         "est_loading": e.loading, "step_s": r["step_s"]})
    print("\nResident memory per rank, MiB (RSS above the process baseline, i.e. minus `base`)")
    print("| processes | engine | rank | base | loaded whole model | after build | training peak | "
          "est. training (state + gathered + activ.) | training vs est. | whole-run peak | "
          "peak vs est. training |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = row["base"]
        train, peak = row["train_peak"] - base, max(row["setup_peak"], row["train_peak"]) - base
        print(f"| {row['nproc']} | {row['mode']} | {row['rank']} | {base / MIB:,.0f} | "
              f"{(row['loaded'] - base) / MIB:,.0f} | {(row['built'] - base) / MIB:,.0f} | {train / MIB:,.0f} | "
              f"{row['est_total'] / MIB:,.0f} ({row['est_gathered'] / MIB:,.0f} + {row['est_activations'] / MIB:,.0f})"
              f" | {_pct(train, row['est_total'])} | {peak / MIB:,.0f} | {_pct(peak, row['est_total'])} |")
    fsdp = {n: max(r["state_fraction"] for r in rows if r["nproc"] == n and r["mode"] == "fsdp")
            for n in sorted({r["nproc"] for r in rows if r["mode"] == "fsdp"})}
    print("\nFSDP state per rank / 1 process (largest rank): "
          + ", ".join(f"{n} processes {f:.3f} (1/{n} = {1 / n:.3f})" for n, f in fsdp.items()))
    return {"bench": "fsdp", "shape": args.shape, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
            "cpu_cores": cores, "malloc": args.malloc, "fsdp_state_fraction": fsdp, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="110m")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2, help="rows per process")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per packed row")
    ap.add_argument("--procs", default="1,2,4", help="process counts (1 runs unwrapped)")
    ap.add_argument("--json", metavar="PATH", help="also write the JSON summary here")
    ap.add_argument("--malloc", choices=["mmap", "default"], default="mmap",
                    help="mmap (default): glibc maps every allocation above 64 KiB on its own, so freed tensors "
                         "leave the RSS; default: glibc's dynamic threshold, which keeps freed activations and "
                         "gathered layers in the heap")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (model, data, rank files)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    procs = [int(n) for n in args.procs.split(",")]
    if 1 not in procs:
        print("--procs must include 1 (the reference for the fractions)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-fsdp-"))
    try:
        model, data = setup(work, args.shape, args.seq_len)
        runs: dict[tuple[int, str], list[dict]] = {}
        for nproc in procs:
            for mode in ("single",) if nproc == 1 else ("ddp", "fsdp"):
                t0 = time.perf_counter()
                # One process is never wrapped: train.parallel is then ignored.
                runs[(nproc, mode)] = launch(args, model, data, nproc, "ddp" if nproc == 1 else mode,
                                             work / f"{nproc}-{mode}")
                print(f"[bench] {nproc} x {mode}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        summary = report(args, model, runs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(summary)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
