"""Shared test data and small helpers (importable: `pythonpath = ["tests"]`)."""

from __future__ import annotations

import json
from pathlib import Path

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Add 2 and 3."},
     {"role": "assistant", "content": "2 plus 3 is 5."},
     {"role": "user", "content": "And 4 and 4?"},
     {"role": "assistant", "content": "4 plus 4 is 8."}],
    [{"role": "user", "content": "Grüß dich! Wie geht's? 你好，世界 🌍"},
     {"role": "assistant", "content": "  Mir geht's gut — danke! Ça va très bien. 😊\n\nПривет!  "}],
    [{"role": "system", "content": "Réponds en français."},
     {"role": "user", "content": "Quelle est la capitale du Brésil ?"},
     {"role": "assistant", "content": "La capitale du Brésil est Brasília."},
     {"role": "user", "content": "Et de la Suisse ?\tMerci."},
     {"role": "assistant", "content": "Berne.   (Zürich n'est pas la capitale.)"},
     {"role": "user", "content": "Spell it.\n\n\n"},
     {"role": "assistant", "content": "B-e-r-n-e"}],
    [{"role": "user", "content": "code?"},
     {"role": "assistant", "content": "```python\ndef f(x):\n    return x  *  2\n```"}],
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records as UTF-8 JSONL."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def assert_nothing_written(out: Path) -> None:
    """A failed `pyft.data.prepare` left neither ``out`` nor its staging directory behind."""
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []


def perturb_adapters(model, seed: int = 1) -> None:
    """Give every LoRA-family adapter tensor non-trivial values (B starts at zero, so an untrained
    adapter would not change the output)."""
    import torch

    from pyft.peft import lora_modules

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(model):
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.2)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.2)
            if layer.lora_magnitude_vector is not None:
                layer.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn(layer.lora_magnitude_vector.shape, generator=g))


def demo_task(tmp_path: Path, tokenizer_dir: Path, n: int = 100) -> tuple[Path, Path]:
    """The first ``n`` single-turn bundled demo conversations prepared for a small Llama (hidden 128)
    built with ``tokenizer_dir``: returns ``(model_dir, data_dir)`` (20 % validation split)."""
    import pyft.data
    from pyft.data.demo import demo_path
    from pyft.testing import make_tiny_model

    records = [json.loads(line) for line in demo_path().read_text(encoding="utf-8").splitlines()]
    single = [r for r in records if len(r["messages"]) == 2][:n]
    src = write_jsonl(tmp_path / "set.jsonl", single)
    model = make_tiny_model(tmp_path / "m", tokenizer_dir, arch="llama", hidden_size=128, intermediate_size=352)
    pyft.data.prepare(src, model, tmp_path / "data", val_ratio=0.2, seed=0)
    return model, tmp_path / "data"


def chat_task(base: Path, tokenizer_dir: Path) -> dict[str, Path]:
    """A tiny Qwen2 (untied output layer) in ``base/model`` and :data:`CONVERSATIONS` x 4 prepared for it
    in ``base/data`` (20 % validation); returns ``{"model", "data", "base"}``."""
    import pyft.data
    from pyft.testing import make_tiny_model

    model = make_tiny_model(base / "model", tokenizer_dir, arch="qwen2")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(4)])
    pyft.data.prepare(src, model, base / "data", val_ratio=0.2, seed=0)
    return {"model": model, "data": base / "data", "base": base}


def torchrun_train(args: list[str], nproc: int = 2, timeout: int = 300):
    """Run ``pyft train ARGS`` under ``torchrun --standalone`` with ``nproc`` CPU processes (gloo, one
    thread each); returns the ``subprocess.CompletedProcess``."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
         "pyft.cli.main", "train", *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout,
    )


def reorder_tolerance(*, steps: int, tokens: int, matmuls: int, width: int, eps: float = 2.0**-24,
                      tail: float = 4.0) -> float:
    """Relative difference (to a tensor's max |value|) allowed between two float runs of the same
    training that differ only in the order of their floating-point reductions (other batch splits,
    ranks, thread counts or BLAS kernels: AVX2 and AVX-512 machines block matmuls differently).

    Each rounding is at most ``eps`` (float32 unit roundoff 2^-24) relative; rounding errors add up
    like a random walk, so a sum of ``n`` terms is off by about ``sqrt(n) * eps`` relative (``n * eps``
    is the worst case, never approached in practice). A step's gradients sum over ``tokens`` tokens and
    flow through ``matmuls`` chained matrix products reducing over at most ``width`` terms each; Adam's
    update is invariant to the gradient's scale, so each step passes its relative error on about
    one to one, and ``steps`` steps add up. ``tail`` covers the largest of many elements (about four
    standard deviations). Real defects (a missing all-reduce, per-rank instead of global
    normalisation) show up at 1e-2 or more.
    """
    return tail * steps * (tokens ** 0.5 + matmuls * width ** 0.5) * eps
