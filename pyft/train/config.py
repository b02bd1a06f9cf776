"""Training configuration: plain dataclasses, read from YAML with ``a.b=value`` overrides.

Unknown keys and wrongly typed values are errors that name the key (``train.lr: expected a
number, got 'fast'``). Sections: ``model``, ``data``, ``method``, ``lora`` (a
:class:`pyft.peft.LoraConfig`, PEFT's defaults), ``freeze``, ``train``, ``output``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyft.errors import ConfigError
from pyft.peft.lora import LoraConfig
from pyft.train.optim import ALIASES, OPTIMIZERS


@dataclass
class FreezeSection:
    """Which base parameters full fine-tuning trains.

    ``embeddings``, ``first_layers`` and ``train_top_layers`` freeze for the whole run. With
    ``unfreeze_every: N`` (progressive unfreezing, as ULMFiT's gradual unfreezing) training starts
    with the output layer, final norm and the top ``train_top_layers`` (default 1) decoder layers,
    and every N steps the next lower layer joins; the input embeddings join after the last layer.
    """

    embeddings: bool = False
    first_layers: int = 0
    train_top_layers: int | None = None
    unfreeze_every: int | None = None
    l2sp: float = 0.0


@dataclass
class TrainSection:
    """Optimisation and loop options. Steps count optimizer updates."""

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    optim: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup: float = 0.0
    max_grad_norm: float | None = 1.0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 42
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_last: int = 2
    early_stopping_patience: int | None = None
    resume: str | None = None
    chunk_tokens: int = 4096
    device: str | None = None


@dataclass
class QuantSection:
    """How ``method: qlora`` quantizes the base (NF4, as bitsandbytes' defaults for QLoRA).

    ``compute_dtype`` ``auto`` follows the training precision (bf16 under bf16, else fp32).
    """

    blocksize: int = 64
    double_quant: bool = True
    compute_dtype: str = "auto"


@dataclass
class TrainConfig:
    """A whole training run."""

    model: str = ""
    data: str = ""
    output: str = "pyft-output"
    method: str = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantSection = field(default_factory=QuantSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    train: TrainSection = field(default_factory=TrainSection)

    def validate(self) -> TrainConfig:
        """Check values that types alone do not; raise :class:`ConfigError` naming the key."""
        if not self.model:
            raise ConfigError("model: required (a transformers model directory)")
        if not self.data:
            raise ConfigError("data: required (a directory written by `pyft data prepare`)")
        if self.method not in ("lora", "qlora", "full"):
            raise ConfigError(f"method: unknown method {self.method!r} (expected lora, qlora or full)")
        t = self.train
        checks = [
            (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (t.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
            (t.lr > 0, "train.lr", "must be > 0"),
            (t.epochs > 0, "train.epochs", "must be > 0"),
            (t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1"),
            (t.optim in OPTIMIZERS or t.optim in ALIASES, "train.optim", f"expected one of {', '.join(OPTIMIZERS)}"),
            (t.schedule in ("constant", "linear", "cosine"), "train.schedule", "expected constant, linear or cosine"),
            (t.warmup >= 0, "train.warmup", "must be >= 0 (steps, or a ratio below 1)"),
            (t.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision", "expected auto, fp32, bf16 or fp16"),
            (t.keep_last >= 1, "train.keep_last", "must be >= 1"),
            (len(t.betas) == 2, "train.betas", "expected two numbers"),
            (self.freeze.unfreeze_every is None or self.freeze.unfreeze_every >= 1, "freeze.unfreeze_every",
             "must be >= 1"),
            (self.quant.blocksize in (32, 64, 128, 256, 512, 1024, 2048, 4096), "quant.blocksize",
             "expected 32, 64, 128, 256, 512, 1024, 2048 or 4096"),
            (self.quant.compute_dtype in ("auto", "bf16", "fp16", "fp32"), "quant.compute_dtype",
             "expected auto, bf16, fp16 or fp32"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}, got {_get(self, key)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``--print-config`` shows)."""
        return dataclasses.asdict(self)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _check_type(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    args = typing.get_args(tp) or (tp,)
    return " or ".join(names.get(a, "a list" if typing.get_origin(a) is list else "a mapping") for a in args)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown key (known keys: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, tp, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own checks (e.g. LoraConfig.__post_init__)
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def _parse_scalar(text: str) -> Any:
    import yaml

    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars/lists) to a config mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: `{part}` is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                **values: Any) -> TrainConfig:
    """Read a YAML config, apply overrides, type-check and validate it.

    Args:
        path: a YAML file (optional: everything can come from ``overrides``/``values``).
        overrides: ``key=value`` strings such as ``train.lr=1e-4``.
        **values: top-level sections or keys given directly (``model=...``, ``train={...}``).
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    apply_overrides(data, overrides or [])
    return _build(TrainConfig, data, "").validate()
