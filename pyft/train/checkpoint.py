"""Training checkpoints: everything needed to resume exactly, written atomically, read without pickle.

A checkpoint directory ``OUT/checkpoints/step-000123/`` holds:

- ``trainable.safetensors``: the trainable parameters by name;
- ``optimizer.json`` + ``optimizer.safetensors``: the optimizer's ``state_dict()``;
- ``scheduler.json``: the learning-rate scheduler's ``state_dict()``;
- ``rng.json`` + ``rng.safetensors``: every rank's generator states (``ranks``: Python ``random``,
  NumPy, torch CPU and CUDA);
- ``state.json``: step, data position, early-stopping state.

Nothing is pickled: a state (nested dicts, lists, tuples, numbers, strings, tensors, NumPy arrays)
is written as JSON with each tensor replaced by a reference into the safetensors file (see
:func:`save_state`), so reading a checkpoint can never run code. Checkpoints of older pyft versions
(``optimizer.pt``, ``scheduler.pt``, ``rng.pt``: pickles) are refused unopened. The directory is
staged and renamed into place, so ``step-*`` is always complete; only the newest ``keep_last`` are
kept.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyft import _atomic as atomic
from pyft._atomic import atomic_directory
from pyft.errors import ConfigError
from pyft.io.files import check_regular, data_error, read_json_object
from pyft.train.sharded_checkpoint import (
    check_matches,
    is_sharded,
    load_sharded_checkpoint,
    load_sharded_weights,
    load_whole_into_sharded,
)

STEP_PREFIX = "step-"

#: JSON objects of one of these keys stand for a value JSON has no type for (see :func:`_encode`).
_TENSOR, _NDARRAY, _TUPLE, _ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _NDARRAY, _TUPLE, _ITEMS)
#: NumPy dtype kinds an ``__ndarray__`` may have: bool, signed and unsigned integers, floats, complex.
_NDARRAY_KINDS = "biufc"


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


# -- state <-> JSON + tensors -------------------------------------------------------------------
def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON data; tensors and arrays go into ``tensors`` under a key derived from ``path``.

    Dicts with string keys stay JSON objects; other dicts (the optimizer's ``{0: {...}}``) become
    ``{"__items__": [[key, value], ...]}``, tuples ``{"__tuple__": [...]}``, a tensor
    ``{"__tensor__": key}`` and a NumPy array ``{"__ndarray__": key, "dtype": "<u4", "shape": [...]}``
    (its raw bytes as a uint8 tensor). Floats are written by ``repr``, so they read back bit for bit
    (``NaN`` and ``Infinity`` included).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return {_TENSOR: _put(tensors, path, value.detach().to("cpu").contiguous())}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _NDARRAY_KINDS:
            raise TypeError(f"`{path}`: cannot store a NumPy array of dtype {value.dtype}")
        raw = torch.from_numpy(np.ascontiguousarray(value).reshape(-1).view(np.uint8).copy())
        return {_NDARRAY: _put(tensors, path, raw), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
        return {_ITEMS: [[_encode(k, f"{path}.key", tensors), _encode(v, f"{path}.{k}", tensors)]
                         for k, v in value.items()]}
    raise TypeError(f"`{path}`: cannot store a {type(value).__name__} in a checkpoint")


def _put(tensors: dict[str, torch.Tensor], path: str, tensor: torch.Tensor) -> str:
    key, n = path, 1
    while key in tensors:  # e.g. keys 0 and "0" of one dict
        key, n = f"{path}#{n}", n + 1
    tensors[key] = tensor
    return key


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """Invert :func:`_encode`; ``where`` names the file in errors."""
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and _TUPLE in value:
        return tuple(_decode(v, tensors, where) for v in _expect(value[_TUPLE], list, where))
    if len(value) == 1 and _ITEMS in value:
        items = _expect(value[_ITEMS], list, where)
        if not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
            raise data_error(where, f"`{_ITEMS}` must hold [key, value] pairs")
        return {_hashable(_decode(k, tensors, where), where): _decode(v, tensors, where) for k, v in items}
    if len(value) == 1 and _TENSOR in value:
        return _tensor(tensors, value[_TENSOR], where)
    if _NDARRAY in value:
        return _ndarray(value, tensors, where)
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise data_error(where, f"expected a JSON {kind.__name__}, got {value!r:.80}")
    return value


def _hashable(key: Any, where: str) -> Any:
    try:
        hash(key)
    except TypeError:
        raise data_error(where, f"a dict key must be a number, string or tuple, got {key!r:.80}") from None
    if isinstance(key, torch.Tensor):  # hashable by identity, never a saved key
        raise data_error(where, "a dict key must be a number, string or tuple, got a tensor")
    return key


def _tensor(tensors: dict[str, torch.Tensor], key: Any, where: str) -> torch.Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise data_error(where, f"refers to tensor {key!r:.80}, which its .safetensors file does not hold")
    return tensors[key]


def _ndarray(value: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> np.ndarray:
    if set(value) != {_NDARRAY, "dtype", "shape"}:
        raise data_error(where, f"`{_NDARRAY}` needs exactly `dtype` and `shape`")
    try:
        dtype = np.dtype(_expect(value["dtype"], str, where))
    except TypeError:
        raise data_error(where, f"unknown NumPy dtype {value['dtype']!r:.80}") from None
    shape = _expect(value["shape"], list, where)
    if dtype.kind not in _NDARRAY_KINDS or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise data_error(where, f"cannot restore a NumPy array of dtype {dtype} and shape {shape!r:.80}")
    raw = _tensor(tensors, value[_NDARRAY], where)
    if raw.dtype != torch.uint8 or raw.numel() != dtype.itemsize * int(np.prod(shape)):
        raise data_error(where, f"tensor `{value[_NDARRAY]}` does not hold a {dtype} array of shape {shape}")
    return raw.numpy().view(dtype).reshape(shape).copy()


def save_state(directory: Path, name: str, state: dict[str, Any]) -> None:
    """Write ``state`` (a dict with string keys) as ``directory/name.json`` and, when it holds tensors
    or arrays, ``directory/name.safetensors``. Raises ``TypeError`` naming the entry of a type it
    cannot store."""
    from safetensors.torch import save_file

    if not isinstance(state, dict) or not all(isinstance(k, str) and k not in _MARKERS for k in state):
        raise TypeError(f"`{name}`: a state is a dict with string keys")
    tensors: dict[str, torch.Tensor] = {}
    data = _encode(state, name, tensors)
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def load_state(directory: Path, name: str) -> Any:
    """Read what :func:`save_state` wrote (tensors on the CPU).

    Raises:
        DataError: a file is missing, not a regular file, not valid JSON or safetensors, or they disagree.
    """
    path = directory / f"{name}.json"
    if not path.is_file():
        raise data_error(path, "missing: the checkpoint is incomplete")
    data = read_json_object(path)
    blob = directory / f"{name}.safetensors"
    tensors = _read_safetensors(blob) if blob.exists() else {}
    try:
        return _decode(data, tensors, str(path))
    except RecursionError:
        raise data_error(path, "nested too deeply") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors file ``path`` (CPU), refusing anything but a valid regular file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_regular(path)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise data_error(path, f"not a valid safetensors file: {e}") from None


# -- checkpoints --------------------------------------------------------------------------------
def trainable_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by name (CPU copies)."""
    mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if id(p) in mine}


def checkpoint_path(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives under ``root`` (``step-000042``)."""
    return root / f"{STEP_PREFIX}{step:06d}"


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], keep_last: int, rng_states: list[dict[str, Any]] | None = None,
                    keep: Path | None = None) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and prune older ones beyond ``keep_last``.

    ``rng_states`` holds every rank's generator states (default: this process's only); ``keep`` is a
    checkpoint never pruned (the best evaluated one under ``train.load_best``).
    """
    from safetensors.torch import save_file

    target = checkpoint_path(root, step)
    remove_stale_staging(root)
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(trainable_state(model, optimizer), str(tmp / "trainable.safetensors"))
        save_state(tmp, "optimizer", optimizer.state_dict())
        write_run_state(tmp, scheduler, state, rng_states or [rng_state()])
    prune_checkpoints(root, keep_last, keep)
    return target


def write_run_state(directory: Path, scheduler: Any, state: dict[str, Any], rng_states: list[dict[str, Any]]) -> None:
    """Write what a checkpoint holds besides tensors: ``scheduler.json``, ``rng.json`` (every rank's
    generators) and ``state.json`` (written last: its presence marks a complete checkpoint)."""
    save_state(directory, "scheduler", scheduler.state_dict())
    save_state(directory, "rng", {"ranks": rng_states})
    (directory / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")


def prune_checkpoints(root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints under ``root`` (never ``keep``)."""
    for old in list_checkpoints(root)[:-keep_last]:
        if keep is None or old != keep:
            atomic.discard_directory(old)


#: What separates an output's name from its staging owner's PID (``pyft._atomic``'s naming).
_STAGE = ".pyft-stage-"


def remove_stale_staging(directory: Path, names: Iterable[str] | None = None) -> None:
    """Remove the staging that dead processes left in ``directory`` (``kill -9`` while a checkpoint was
    written or a directory deleted) for the directories ``names`` (default: checkpoints, ``step-*``);
    staging of live processes stays.
    """
    try:
        staged = {n[1:n.index(_STAGE)] for n in os.listdir(directory) if n.startswith(".") and _STAGE in n}
    except FileNotFoundError:
        return
    if names is None:
        names = [n for n in staged if n.startswith(STEP_PREFIX) and n[len(STEP_PREFIX):].isdigit()]
    atomic.remove_stale_staging(directory, sorted(staged.intersection(names)))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def check_format(path: Path) -> None:
    """Refuse a checkpoint written by an older pyft (pickled ``*.pt`` files) without opening it.

    Raises:
        ConfigError: ``path`` holds ``*.pt`` files.
    """
    pickles = sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise ConfigError(
            f"train.resume: {path} was written by an older pyft: {', '.join(pickles)} are pickle files, which "
            "pyft no longer reads because loading a pickle can run code. Resume from a checkpoint this pyft "
            "wrote, or start the run again with --overwrite"
        )


def _checked_weights(path: Path, params: dict[str, nn.Parameter], trained: set[int]) -> dict[str, torch.Tensor]:
    """The trained tensors of checkpoint ``path``, checked against the model's parameters ``params``
    (those whose ``id`` is in ``trained`` must all be there, with their shapes)."""
    weights = path / "trainable.safetensors"
    if not weights.exists():
        raise data_error(weights, "missing: the checkpoint is incomplete")
    saved = _read_safetensors(weights)
    missing = [n for n, p in params.items() if id(p) in trained and n not in saved]
    if missing or set(saved) - set(params):
        raise ConfigError(f"{path}: checkpoint does not match this model/method "
                          f"(e.g. missing `{(missing or ['?'])[0]}`)")
    bad = [n for n, t in saved.items() if t.shape != params[n].shape]
    if bad:
        raise ConfigError(f"{weights}: `{bad[0]}` has shape {list(saved[bad[0]].shape)}, this model's "
                          f"{list(params[bad[0]].shape)}")
    return saved


def load_trainable(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   sharded: bool = False) -> None:
    """Copy the trained weights of checkpoint ``path`` into ``model`` (nothing else of the run's state).

    ``optimizer`` names the trained parameters (needed for a sharded checkpoint, or a sharded
    ``model``: then every rank calls this). Raises ConfigError, DataError as :func:`load_checkpoint`.
    """
    check_format(path)
    if is_sharded(path) or sharded:
        if optimizer is None:
            raise TypeError("load_trainable: a sharded checkpoint or model needs the optimizer")
        if is_sharded(path):
            load_sharded_weights(path, model, optimizer)
        else:
            params = dict(model.named_parameters())
            load_whole_into_sharded(_checked_weights(path, params, set()), None, model, optimizer)
        return
    params = dict(model.named_parameters())
    saved = _checked_weights(path, params, set())
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int = 0, world: int = 1, sharded: bool = False) -> dict[str, Any]:
    """Restore parameters, optimizer, scheduler and this rank's RNG from ``path``; return its ``state.json``.

    Any world size reads any checkpoint: a sharded one (:mod:`pyft.train.sharded_checkpoint`) into
    whole or sharded tensors, a whole one into a whole or (``sharded``: FSDP) sharded model. The
    random generators carry over when the world size is the one that saved them; otherwise each
    rank keeps the state the run's seed gave it (only dropout draws differ) and rank 0 says so.

    Raises:
        ConfigError: an older pyft's checkpoint, or one from another model, method or optimizer.
        DataError: a file of the checkpoint is missing or corrupt (the message names it).
    """
    check_format(path)
    params = dict(model.named_parameters())
    whole = not is_sharded(path)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    saved = _checked_weights(path, params, trained) if whole else {}
    if not whole:
        check_matches(path, model, optimizer)
    optim_state = load_state(path, "optimizer") if whole else None
    sched_state = load_state(path, "scheduler")
    rng = load_state(path, "rng")
    rngs = rng.get("ranks") if isinstance(rng, dict) else None
    if not isinstance(rngs, list) or not rngs:
        raise ConfigError(f"{path / 'rng.json'}: holds no process's generator states")
    # The scheduler copies its state into its attributes: only the ones it has (a torch version may
    # add some; those missing keep their value), and lr_lambdas as saved for plain functions.
    expected = scheduler.state_dict()
    if (not isinstance(sched_state, dict) or "last_epoch" not in sched_state or not set(sched_state) <= set(expected)
            or sched_state.get("lr_lambdas") != expected["lr_lambdas"]):
        raise ConfigError(f"{path / 'scheduler.json'}: not a state of this run's learning-rate scheduler")
    if not whole:
        load_sharded_checkpoint(path, model, optimizer)
    elif sharded:
        load_whole_into_sharded(saved, optim_state, model, optimizer)
    else:
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        try:
            optimizer.load_state_dict(optim_state)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
            raise ConfigError(f"{path / 'optimizer.json'}: does not match this run's optimizer "
                              f"({type(optimizer).__name__}): {e}") from None
    scheduler.load_state_dict(sched_state)
    if len(rngs) == world:
        try:
            set_rng_state(rngs[rank])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise ConfigError(f"{path / 'rng.json'}: invalid generator state of rank {rank}: {e}") from None
    elif rank == 0:
        print(f"[warning] {path} was saved by {len(rngs)} process(es) and resumes on {world}: weights, optimizer "
              "and data order carry over exactly, random draws (dropout) start from the run's seed", file=sys.stderr)
    return read_json_object(path / "state.json")
