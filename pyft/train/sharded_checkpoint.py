"""Sharded training checkpoints (FSDP): every rank writes its own shards, and any number of ranks reads
them back (resume on 1, 2 or 4 processes from a checkpoint written by 2).

A sharded checkpoint ``OUT/checkpoints/step-000123/`` holds what a whole one does
(:mod:`pyft.train.checkpoint`: ``scheduler.json``, ``rng.json``, ``state.json``), except that the
tensors live in ``sharded/``, written by ``torch.distributed.checkpoint`` (DCP) through its
safetensors storage (``HuggingFaceStorageWriter``): one ``shard-0000R-model-00001-of-00001.safetensors``
per rank, each tensor's offset in the whole recorded in the file's safetensors header as JSON. DCP's
default storage records its metadata as a pickle; this one does not, so reading a checkpoint still
cannot run code. Tensors are keyed ``weights/<parameter name>`` (the trained parameters) and
``optim/<parameter name>/<state>`` (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``); the optimizer's
param groups (learning rates, the parameter names of each group) are ``optimizer.json``. Reading
plans, for each tensor this rank holds, which saved pieces overlap it, so the world size may change.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory
from pyft.errors import ConfigError
from pyft.train.distributed import DistInfo, barrier, broadcast_object

#: The subdirectory of a checkpoint holding DCP's safetensors shards.
SHARDED_DIR = "sharded"
_WEIGHTS, _OPTIM = "weights/", "optim/"


def is_sharded(path: Path) -> bool:
    """Whether checkpoint ``path`` was written sharded (by an FSDP run)."""
    return (path / SHARDED_DIR).is_dir()


def _trained(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, nn.Parameter]:
    mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return {n: p for n, p in model.named_parameters() if id(p) in mine}


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name (``{"state": {name: {...}}, "param_groups": [...]}``),
    states allocated even before the first step (so a load has tensors to fill)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer)


def _tensors(model: nn.Module, optimizer: torch.optim.Optimizer,
             osd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` a checkpoint stores: trained weights and the optimizer's tensors
    (shards under FSDP, whole tensors otherwise)."""
    flat: dict[str, torch.Tensor] = {_WEIGHTS + n: p for n, p in _trained(model, optimizer).items()}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state `{name}.{key}` is not a tensor; a sharded checkpoint holds tensors")
            flat[f"{_OPTIM}{name}/{key}"] = value
    return flat


def save_sharded_checkpoint(target: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                            write_rest: Any, dist_info: DistInfo) -> None:
    """Write checkpoint directory ``target`` atomically, every rank its shards (call on all ranks).

    Args:
        target: ``OUT/checkpoints/step-N``; replaced if it exists.
        model: the model (FSDP-sharded or whole).
        optimizer: its optimizer.
        write_rest: ``write_rest(staging_dir)``, called on rank 0 to add the JSON files.
        dist_info: the process group.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    osd = _optimizer_state(model, optimizer)
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(atomic_directory(target, overwrite=True)) if dist_info.is_main else None
        staging = Path(broadcast_object(str(staging) if staging else None, dist_info))
        with torch.no_grad():
            dcp.save(_tensors(model, optimizer, osd),
                     storage_writer=HuggingFaceStorageWriter(str(staging / SHARDED_DIR), save_distributed=True))
        barrier(dist_info)  # every shard is on disk before the directory is renamed into place
        if dist_info.is_main:
            from pyft.train.checkpoint import save_state

            save_state(staging, "optimizer", {"param_groups": osd["param_groups"]})
            write_rest(staging)
    barrier(dist_info)


def _load(path: Path, flat: dict[str, torch.Tensor]) -> None:
    """Fill ``flat``'s tensors (shards or whole) in place from ``path/sharded``."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    shards = path / SHARDED_DIR
    saved = _saved_keys(shards)
    missing = sorted(set(flat) - saved)
    if missing:
        raise ConfigError(f"{path}: checkpoint does not match this model/method/optimizer "
                          f"(e.g. missing `{missing[0]}`)")
    with torch.no_grad(), warnings.catch_warnings():
        # One process without a process group reads every shard itself (DCP says so with a warning).
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(shards)),
                 no_dist=not (dist.is_available() and dist.is_initialized()))


def _saved_keys(shards: Path) -> set[str]:
    """The tensor names of the checkpoint's shards (validated headers only, no tensor data read)."""
    from pyft.io.files import data_error
    from pyft.io.safetensors import read_header

    files = sorted(shards.glob("*.safetensors"))
    if not files:
        raise data_error(shards, "holds no .safetensors shard: the checkpoint is incomplete")
    return {name for f in files for name in read_header(f).names()}


def check_matches(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse sharded checkpoint ``path`` unless its trained weights are exactly this run's trained
    parameters (by name), before anything is loaded.

    Raises:
        ConfigError: another model, method or tuning wrote it.
        DataError: its shards are missing or corrupt.
    """
    saved = {k[len(_WEIGHTS):] for k in _saved_keys(path / SHARDED_DIR) if k.startswith(_WEIGHTS)}
    mine = set(_trained(model, optimizer))
    if saved != mine:
        example = sorted(mine - saved) or sorted(saved - mine)
        raise ConfigError(f"{path}: checkpoint does not match this model/method/optimizer (e.g. "
                          f"{'missing' if mine - saved else 'unexpected'} `{example[0]}`)")


def load_sharded_weights(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Copy the trained weights of sharded checkpoint ``path`` into ``model`` (all ranks)."""
    _load(path, {_WEIGHTS + n: p for n, p in _trained(model, optimizer).items()})


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore trained weights and optimizer state from sharded checkpoint ``path`` (all ranks; any
    world size, FSDP or not). The scheduler, RNG and loop state are the caller's (JSON files).

    Raises:
        ConfigError: the checkpoint is of another model, method or optimizer.
        DataError: a shard or ``optimizer.json`` is missing or corrupt.
    """
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    from pyft.train.checkpoint import load_state

    osd = _optimizer_state(model, optimizer)
    groups = load_state(path, "optimizer")
    saved_groups = groups.get("param_groups") if isinstance(groups, dict) else None
    if not isinstance(saved_groups, list) or len(saved_groups) != len(osd["param_groups"]):
        raise ConfigError(f"{path / 'optimizer.json'}: does not match this run's optimizer "
                          f"({len(osd['param_groups'])} parameter groups)")
    _load(path, _tensors(model, optimizer, osd))
    for mine, saved in zip(osd["param_groups"], saved_groups):
        if not isinstance(saved, dict) or sorted(saved.get("params", [])) != sorted(mine["params"]):
            raise ConfigError(f"{path / 'optimizer.json'}: its parameter groups name other parameters than "
                              "this run's (another model, method or freezing)")
    set_optimizer_state_dict(model, optimizer, {"state": osd["state"], "param_groups": saved_groups})


def load_whole_into_sharded(weights: dict[str, torch.Tensor], optim_state: dict[str, Any] | None, model: nn.Module,
                            optimizer: torch.optim.Optimizer) -> None:
    """Load a whole checkpoint's tensors (written by one process or DDP) into an FSDP-sharded model:
    each rank keeps its shard of every tensor.

    Args:
        weights: trained weights by parameter name (whole tensors).
        optim_state: ``optimizer.state_dict()`` as saved (states keyed by index in group order), or
            None for the weights alone.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    if optim_state is None:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    try:
        state = {order[i]: s for i, s in optim_state["state"].items()}
        groups = [{**g, "params": [order[i] for i in g["params"]]} for g in optim_state["param_groups"]]
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"the checkpoint's optimizer state does not match this run's optimizer: {e!r}") from None
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=options)

