"""Training configuration: plain dataclasses, read from YAML with ``a.b=value`` overrides.

Unknown keys and wrongly typed values are errors that name the key (``train.lr: expected a
number, got 'fast'``). Sections: ``model``, ``data``, ``method``, ``tuning``, ``lora`` (a
:class:`pyft.peft.LoraConfig`, PEFT's defaults), ``quant``, ``align``, ``freeze``, ``train``,
``output``.

``method`` is what is optimised: supervised fine-tuning (``lora``, ``qlora``, ``full``, or ``sft``
with ``tuning``) or an alignment objective (``dpo``, ``kto``, ``orpo``, ``simpo``, ``cpo``, ``rm``).
``tuning`` says which weights an alignment run (or ``sft``) trains: ``lora`` (default), ``qlora`` or
``full``. ``adapter`` continues training an existing PEFT LoRA adapter (e.g. DPO on top of an SFT
adapter; its starting weights are then DPO's/KTO's reference) instead of starting a new one.
``overwrite: true`` (``pyft train --overwrite``) replaces a run already in ``output``.
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
from pyft.io.files import read_text
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


#: Methods that fine-tune on chat/text data; their name is also the tuning (``sft`` reads ``tuning``).
SFT_METHODS = ("lora", "qlora", "full", "sft")
#: Alignment methods and the data kind each trains on.
ALIGN_METHODS = {"dpo": "preference", "orpo": "preference", "simpo": "preference", "cpo": "preference",
                 "rm": "preference", "kto": "kto"}
TUNINGS = ("lora", "qlora", "full")


@dataclass
class AlignSection:
    """Options of the alignment methods (names and defaults as TRL 1.16's configs).

    - ``beta``: β of DPO/KTO/CPO/SimPO, λ of ORPO (default 0.1).
    - ``loss_type``: DPO: ``sigmoid`` (default), ``ipo``, ``hinge``, ``robust``, ... or a list whose
      losses are added with ``loss_weights`` (see :data:`pyft.losses.DPO_LOSS_TYPES`); KTO: ``kto`` or
      ``apo_zero_unpaired``; CPO: ``sigmoid``, ``hinge``, ``ipo`` (``simpo`` is the ``simpo`` method).
    - ``label_smoothing``: ε for robust DPO (rDPO), conservative DPO (``sigmoid`` with ε > 0) and CPO.
    - ``f_divergence``/``f_alpha``: DPO's divergence (``reverse_kl`` default).
    - ``reference``: the reference model: ``auto`` (the base with adapters disabled under LoRA/QLoRA,
      a frozen copy under full fine-tuning) or ``copy``; ``precompute_ref`` computes every reference
      log-prob in one pass before training (then no reference model is kept at all).
    - ``desirable_weight``/``undesirable_weight``: KTO's class weights.
    - ``simpo_gamma``: SimPO's margin γ; ``cpo_alpha``: weight of the chosen NLL (default 0 for
      ``simpo``, 1 for ``cpo``); ``alphapo``: AlphaPO's α (0 = off).
    - ``center_rewards_coefficient``: reward models: weight of ``(r_c + r_r)²``.
    - ``disable_dropout``: turn the model's dropout off (TRL's default).
    - ``layout``: how sequences are batched: ``auto`` (``flat`` under FlashAttention, ``padded``
      for ``rm``, else ``packed``), ``packed``, ``flat`` or ``padded``.
    """

    beta: float = 0.1
    loss_type: str | list[str] | None = None
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    f_divergence: str = "reverse_kl"
    f_alpha: float = 1.0
    reference: str = "auto"
    precompute_ref: bool = False
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    simpo_gamma: float = 0.5
    cpo_alpha: float | None = None
    alphapo: float = 0.0
    center_rewards_coefficient: float | None = None
    disable_dropout: bool = True
    layout: str = "auto"


@dataclass
class TrainConfig:
    """A whole training run.

    ``overwrite``: ``output`` may hold an earlier run (its adapter or model, metrics, checkpoints):
    that run's files are deleted before training starts. Without it such an output is refused,
    unless ``train.resume`` continues that run.
    """

    model: str = ""
    data: str = ""
    output: str = "pyft-output"
    overwrite: bool = False
    method: str = "lora"
    tuning: str | None = None
    adapter: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantSection = field(default_factory=QuantSection)
    align: AlignSection = field(default_factory=AlignSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    train: TrainSection = field(default_factory=TrainSection)

    def validate(self) -> TrainConfig:
        """Check values that types alone do not; raise :class:`ConfigError` naming the key."""
        if not self.model:
            raise ConfigError("model: required (a transformers model directory)")
        if not self.data:
            raise ConfigError("data: required (a directory written by `pyft data prepare`)")
        if self.method not in SFT_METHODS and self.method not in ALIGN_METHODS:
            raise ConfigError(f"method: unknown method {self.method!r} (expected one of "
                              f"{', '.join(SFT_METHODS + tuple(ALIGN_METHODS))})")
        if self.tuning is not None and self.tuning not in TUNINGS:
            raise ConfigError(f"tuning: expected lora, qlora or full, got {self.tuning!r}")
        if self.method in ("lora", "qlora", "full") and self.tuning not in (None, self.method):
            raise ConfigError(f"tuning: method {self.method} already says the tuning; use method: sft with "
                              f"tuning: {self.tuning}")
        if self.adapter is not None and self.tuning_kind not in ("lora", "qlora"):
            raise ConfigError(f"adapter: continuing an adapter needs tuning lora or qlora, got {self.tuning_kind}")
        if self.adapter is not None and self.method == "rm":
            raise ConfigError("adapter: a reward model starts a new adapter with its score head; merge the adapter "
                              "into the model first (pyft merge)")
        self._validate_align()
        t = self.train
        if self.overwrite and t.resume:
            raise ConfigError(f"overwrite: true starts the run in `output` again and deletes its checkpoints; it "
                              f"cannot go with train.resume={t.resume} (drop one of them)")
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

    @property
    def objective(self) -> str:
        """``sft`` or the alignment method's name."""
        return "sft" if self.method in SFT_METHODS else self.method

    @property
    def tuning_kind(self) -> str:
        """Which weights are trained: ``lora``, ``qlora`` or ``full``."""
        if self.method in ("lora", "qlora", "full"):
            return self.method
        return self.tuning or "lora"

    def _validate_align(self) -> None:
        from pyft.losses.preference import CPO_LOSS_TYPES, DPO_LOSS_TYPES, F_DIVERGENCES, KTO_LOSS_TYPES

        a = self.align
        allowed = {"dpo": DPO_LOSS_TYPES, "kto": KTO_LOSS_TYPES, "cpo": tuple(t for t in CPO_LOSS_TYPES if t != "simpo")}
        types = [a.loss_type] if isinstance(a.loss_type, str) else list(a.loss_type or [])
        if types and self.method not in allowed:
            raise ConfigError(f"align.loss_type: method {self.method} has no loss types (dpo, kto and cpo do)")
        for t in types:
            if t not in allowed.get(self.method, ()):
                raise ConfigError(f"align.loss_type: {t!r} is not a {self.method} loss type (expected one of "
                                  f"{', '.join(allowed[self.method])})")
        if self.method != "dpo" and len(types) > 1:
            raise ConfigError("align.loss_type: only dpo combines several loss types")
        if a.loss_weights is not None and len(a.loss_weights) != max(len(types), 1):
            raise ConfigError(f"align.loss_weights: {len(a.loss_weights)} weights for {max(len(types), 1)} loss types")
        checks = [
            (a.beta > 0, "align.beta", "must be > 0"),
            (0 <= a.label_smoothing < 0.5 or "exo_pair" in types, "align.label_smoothing", "must be in [0, 0.5)"),
            (a.f_divergence in F_DIVERGENCES, "align.f_divergence", f"expected one of {', '.join(F_DIVERGENCES)}"),
            (a.reference in ("auto", "copy"), "align.reference", "expected auto or copy"),
            (a.desirable_weight > 0, "align.desirable_weight", "must be > 0"),
            (a.undesirable_weight > 0, "align.undesirable_weight", "must be > 0"),
            (a.cpo_alpha is None or a.cpo_alpha >= 0, "align.cpo_alpha", "must be >= 0"),
            (a.layout in ("auto", "packed", "flat", "padded"), "align.layout", "expected auto, packed, flat or padded"),
            (self.method != "rm" or a.layout in ("auto", "padded"), "align.layout",
             "the reward model reads the last real token of padded rows; use auto or padded"),
            (self.method != "rm" or self.tuning_kind != "qlora", "tuning",
             "reward models train with lora or full (not qlora)"),
            (self.method != "kto" or self.train.batch_size > 1, "train.batch_size",
             "KTO estimates its KL term from mismatched pairs within a batch, so it needs batch_size > 1"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}, got {_get(self, key)!r}")

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
            data = yaml.safe_load(read_text(p)) or {}  # DataError naming the file when not UTF-8
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    apply_overrides(data, overrides or [])
    return _build(TrainConfig, data, "").validate()
