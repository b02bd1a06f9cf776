"""Training checkpoints: everything needed to resume exactly, written atomically.

A checkpoint directory ``OUT/checkpoints/step-000123/`` holds ``trainable.safetensors`` (the
trainable parameters by name), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (Python, NumPy,
torch CPU and CUDA generator states) and ``state.json`` (step, data position, early-stopping
state). Only the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyft._atomic import atomic_directory

STEP_PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    """All random generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by name (CPU copies)."""
    mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if id(p) in mine}


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], keep_last: int, rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and prune older ones beyond ``keep_last``.

    ``rng_states`` holds every rank's generator states (default: this process's only).
    """
    from safetensors.torch import save_file

    target = root / f"{STEP_PREFIX}{step:06d}"
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(trainable_state(model, optimizer), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states or [rng_state()], tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int = 0) -> dict[str, Any]:
    """Restore parameters, optimizer, scheduler and this rank's RNG from ``path``; return its ``state.json``."""
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in params.items() if id(p) in mine and n not in saved]
    if missing or set(saved) - set(params):
        raise ValueError(f"{path}: checkpoint does not match this model/method (e.g. missing `{(missing or ['?'])[0]}`)")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rngs = torch.load(path / "rng.pt", weights_only=False)
    if len(rngs) <= rank:
        raise ValueError(f"{path}: saved by {len(rngs)} process(es), cannot resume rank {rank}")
    set_rng_state(rngs[rank])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))
