"""Training configuration: plain dataclasses, read from YAML with ``a.b=value`` overrides.

Unknown keys and wrongly typed values are errors that name the key (``train.lr: expected a
number, got 'fast'``). Sections: ``model``, ``data``, ``method``, ``tuning``, ``lora`` (a
:class:`pyft.peft.LoraConfig`, PEFT's defaults), ``quant``, ``align``, ``freeze``, ``train``,
``output``.

``method`` is what is optimised: supervised fine-tuning (``lora``, ``qlora``, ``full``, or ``sft``
with ``tuning``), an alignment objective (``dpo``, ``kto``, ``orpo``, ``simpo``, ``cpo``, ``rm``) or
sequence classification (``classify``, options in ``classify``: :class:`pyft.classify.config.ClassifySection`).
``tuning`` says which weights an alignment run (or ``sft``) trains: ``lora`` (default), ``qlora``,
``full`` or another adapter of :data:`pyft.methods.TUNING_TABLE` (``ia3``, ``oft``, ``prompt_tuning``,
...), each with its own section; a list (``[lora, prompt_tuning]``) trains a hybrid of adapters on
disjoint modules, and ``stages`` says which of them train for how many steps. ``adapter`` continues
training an existing adapter (e.g. DPO on top of an SFT adapter; its starting weights are then DPO's/KTO's
reference) instead of starting a new one.
``overwrite: true`` (``pyft train --overwrite``) replaces a run already in ``output``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyft.align.config import AlignSection
from pyft.classify.config import ClassifySection
from pyft.errors import ConfigError
from pyft.io.files import read_text
from pyft.methods import (
    METHODS,
    OPTIMIZER_ALIASES,
    OPTIMIZERS,
    TUNINGS,
    Method,
    Tuning,
    get_method,
    get_tuning,
)
from pyft.peft.bottleneck import BottleneckConfig
from pyft.peft.ia3 import Ia3Config
from pyft.peft.lora import LoraConfig
from pyft.peft.oft import OftConfig
from pyft.peft.prefix import PrefixConfig
from pyft.peft.prompt import PromptTuningConfig, PTuningConfig


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
    """Optimisation and loop options. Steps count optimizer updates.

    - ``label_smoothing``: ε of the SFT cross-entropy, in ``[0, 1)``: each target token's loss is
      ``(1 - ε)·(-log p(label)) + ε·mean over the vocabulary of -log p`` (torch's
      ``cross_entropy(label_smoothing=ε)``, transformers' ``label_smoothing_factor``). 0 = off.
    - ``model_dropout``: dropout probability, in ``[0, 1)``, for every dropout the architecture has
      (attention dropout, hidden/residual and embedding dropout; not the adapter's ``lora.dropout``),
      set on the loaded modules (:func:`pyft.train.dropout.set_model_dropout`). ``null`` keeps the
      model's own values. The saved ``config.json`` keeps the model's values too.
    - ``min_lr_ratio``: floor of the ``cosine`` and ``linear`` decays as a fraction of ``lr``, in
      ``[0, 1]``: the decay goes to ``min_lr_ratio·lr`` instead of 0 (transformers'
      ``cosine_with_min_lr`` with ``min_lr_rate``). Warmup still starts from 0.
    - ``sample_every``: every N steps, generate greedily for ``sample_prompts`` (texts, each one user
      turn through the data's chat template; default: the prompts of the first 3 validation rows, or
      training rows) up to ``sample_max_new_tokens``, and log them to ``samples.jsonl`` and
      TensorBoard (text). ``null`` = off.
    - ``kl_to_base``: β ≥ 0 of a KL penalty against forgetting (0 = off): SFT's loss becomes
      ``CE + β·KL``, where KL is the mean over the step's target tokens (the same tokens and
      normaliser as the CE) of ``KL(p_model ‖ p_base) = Σ_v p_model(v)·(log p_model(v) − log p_base(v))``
      over the whole vocabulary; label smoothing does not change it. The base is the model training
      started from, as ``align.reference`` picks DPO's: under LoRA/QLoRA the same weights with the
      adapters off (or the continued ``adapter`` as it started), no second copy; under full
      fine-tuning (or ``align.reference: copy``) a frozen copy of the weights. It costs one more
      forward per micro-batch, without gradient and with dropout off. Logged as ``kl`` (``eval_kl``
      in evaluation); ``loss`` stays the cross-entropy. Methods with ``Method.kl_to_base`` only
      (``sft``); not with ``align.precompute_ref``.
    - ``parallel``: how a run under ``torchrun`` (``pyft train --nproc N``) splits the work. ``ddp``
      (default): every process holds the whole model, gradients are summed by PyTorch's
      DistributedDataParallel. ``fsdp``: PyTorch's FSDP2 shards parameters, gradients and optimizer
      states over the processes (each holds ``1/N``), decoder layer by decoder layer; pick it when
      the model and its optimizer do not fit one device. Checkpoints are then sharded (each process
      writes its part) and resume on any number of processes. One process ignores it.
    - ``fsdp_cpu_offload``: under ``parallel: fsdp``, keep the shards, their gradients and optimizer
      states in CPU memory (FSDP2's ``CPUOffloadPolicy``): less GPU memory, slower steps.
    - ``load_best``: keep the best evaluated weights (a checkpoint at every new best eval loss, never
      pruned; loaded back when the run ends or stops early). ``null`` (default) = on when
      ``eval_every`` is set; needs a validation split.
    """

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
    load_best: bool | None = None
    resume: str | None = None
    chunk_tokens: int = 4096
    device: str | None = None
    # Experiment trackers: auto (TensorBoard when installed), none, or names among tensorboard, wandb,
    # mlflow (a missing library is then an error); see pyft.train.trackers.
    report_to: str | list[str] = "auto"
    label_smoothing: float = 0.0
    model_dropout: float | None = None
    min_lr_ratio: float = 0.0
    sample_every: int | None = None
    sample_prompts: list[str] = field(default_factory=list)
    sample_max_new_tokens: int = 64
    kl_to_base: float = 0.0
    parallel: str = "ddp"
    fsdp_cpu_offload: bool = False


@dataclass
class EvalSection:
    """What ``pyft train`` measures besides the validation loss.

    - ``general``: general-domain perplexity before and after training, to see forgetting: ``true``
      (the multilingual corpus shipped with pyft, :mod:`pyft.eval.perplexity`), a file (``.jsonl`` with
      ``text``, or plain text), or ``false``. Written to ``general.json`` in the output.
    - ``general_max_increase``: warn when that perplexity rises by more than this share (0.1 = 10 %).
    """

    general: bool | str = False
    general_max_increase: float = 0.1


@dataclass
class QuantSection:
    """How ``method: qlora`` quantizes the base (NF4, as bitsandbytes' defaults for QLoRA).

    ``compute_dtype`` ``auto`` follows the training precision (bf16 under bf16, else fp32).
    """

    blocksize: int = 64
    double_quant: bool = True
    compute_dtype: str = "auto"


@dataclass
class StageSection:
    """One stage of staged training (``stages:``): which parts of a hybrid tuning train, for how many
    optimizer steps. The other parts stay as they are (no gradient, no optimizer update, no weight decay).

    Attributes:
        train: tuning names of the run's ``tuning`` list that train in this stage.
        steps: optimizer steps of the stage; the last stage has none (it runs until training ends).
    """

    train: list[str] = field(default_factory=list)
    steps: int | None = None


@dataclass
class TrainConfig:
    """A whole training run.

    ``model``: a transformers model directory or a Hugging Face Hub id (``owner/name``, optionally
    ``owner/name@revision``); ``model_revision`` pins the Hub revision too (LLaMA-Factory's key).
    ``overwrite``: ``output`` may hold an earlier run (its adapter or model, metrics, checkpoints):
    that run's files are deleted before training starts. Without it such an output is refused,
    unless ``train.resume`` continues that run.
    """

    model: str = ""
    model_revision: str | None = None
    data: str = ""
    output: str = "pyft-output"
    overwrite: bool = False
    method: str = "lora"
    tuning: str | list[str] | None = None
    adapter: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    ia3: Ia3Config = field(default_factory=Ia3Config)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    p_tuning: PTuningConfig = field(default_factory=PTuningConfig)
    prefix_tuning: PrefixConfig = field(default_factory=PrefixConfig)
    oft: OftConfig = field(default_factory=OftConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    stages: list[StageSection] | None = None
    quant: QuantSection = field(default_factory=QuantSection)
    align: AlignSection = field(default_factory=AlignSection)
    classify: ClassifySection = field(default_factory=ClassifySection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self) -> TrainConfig:
        """Check values that types alone do not; raise :class:`ConfigError` naming the key."""
        if not self.model:
            raise ConfigError("model: required (a transformers model directory)")
        if not self.data:
            raise ConfigError("data: required (a directory written by `pyft data prepare`)")
        method = get_method(self.method)
        self._validate_tuning(method)
        self._validate_align()
        t = self.train
        from pyft.train.trackers import report_to_names

        report_to_names(t.report_to)  # names checked here; libraries when the run starts
        if self.overwrite and t.resume:
            raise ConfigError(f"overwrite: true starts the run in `output` again and deletes its checkpoints; it "
                              f"cannot go with train.resume={t.resume} (drop one of them)")
        checks = [
            (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (t.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
            (t.lr > 0, "train.lr", "must be > 0"),
            (t.epochs > 0, "train.epochs", "must be > 0"),
            (t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1"),
            (t.optim in OPTIMIZERS or t.optim in OPTIMIZER_ALIASES, "train.optim", f"expected one of {', '.join(OPTIMIZERS)}"),
            (t.schedule in ("constant", "linear", "cosine"), "train.schedule", "expected constant, linear or cosine"),
            (t.warmup >= 0, "train.warmup", "must be >= 0 (steps, or a ratio below 1)"),
            (t.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision", "expected auto, fp32, bf16 or fp16"),
            (t.keep_last >= 1, "train.keep_last", "must be >= 1"),
            (0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)"),
            (t.model_dropout is None or 0 <= t.model_dropout < 1, "train.model_dropout", "must be in [0, 1) or null"),
            (0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]"),
            (t.sample_every is None or t.sample_every >= 1, "train.sample_every", "must be >= 1 or null"),
            (t.sample_max_new_tokens >= 1, "train.sample_max_new_tokens", "must be >= 1"),
            (self.eval.general_max_increase >= 0, "eval.general_max_increase", "must be >= 0"),
            (0 <= t.kl_to_base < math.inf, "train.kl_to_base", "must be >= 0 (a finite coefficient; 0 = off)"),
            (len(t.betas) == 2, "train.betas", "expected two numbers"),
            (t.parallel in ("ddp", "fsdp"), "train.parallel", "expected ddp or fsdp"),
            (not t.fsdp_cpu_offload or t.parallel == "fsdp", "train.fsdp_cpu_offload", "needs train.parallel: fsdp"),
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
        if t.kl_to_base and not method.kl_to_base:
            with_kl = ", ".join(m.name for m in METHODS.values() if m.kl_to_base)
            raise ConfigError(f"train.kl_to_base: only {with_kl} adds a KL to the base model, not method "
                              f"{method.name} (set it to 0), got {t.kl_to_base!r}")
        if t.parallel == "fsdp":
            self._validate_fsdp()
        if t.kl_to_base and self.align.precompute_ref:
            raise ConfigError("align.precompute_ref: train.kl_to_base compares whole next-token distributions with "
                              "the base model at every step, which cannot be precomputed; drop one of them")
        return self

    def _validate_fsdp(self) -> None:
        """What ``train.parallel: fsdp`` cannot do: run something on rank 0 alone while the other ranks
        hold the rest of each parameter."""
        t = self.train
        alone = [(t.sample_every is not None, "train.sample_every", "generates samples on one process"),
                 (bool(self.eval.general), "eval.general", "measures general perplexity on one process"),
                 (OPTIMIZER_ALIASES.get(t.optim, t.optim) != "adamw", "train.optim",
                  ("keeps 8-bit or paged states FSDP does not shard; use adamw, with train.fsdp_cpu_offload to "
                   "keep its states in CPU memory")),
                 (self.freeze.unfreeze_every is not None, "freeze.unfreeze_every",
                  "changes the trainable set while parameters are sharded"),
                 (bool(self.stages), "stages", "changes the trainable set while parameters are sharded")]
        for bad, key, why in alone:
            if bad:
                raise ConfigError(f"{key}: not available with train.parallel: fsdp (it {why}); use "
                                  f"train.parallel: ddp, or drop {key}")
        # The reference model (as pyft.train.run.build_reference picks it) must be the sharded policy
        # with its adapters off, or precomputed before sharding: a whole frozen copy (or a starting
        # adapter's snapshot) would sit unsharded on every process.
        method, align = self.objective, self.align
        if not (method.needs_reference or t.kl_to_base):
            return
        live_base = align.reference == "auto" and self.trains_adapter and not self.adapter
        precomputed = align.precompute_ref and not method.kl_sequences
        if not (live_base or precomputed):
            what = ("the starting adapter's snapshot" if self.adapter and align.reference == "auto"
                    else "a whole frozen copy of the model")
            fix = ("align.precompute_ref: true" if not (method.kl_sequences or t.kl_to_base)
                   else "LoRA/QLoRA (the reference is then the base with adapters off)")
            raise ConfigError(f"train.parallel: fsdp cannot keep the reference model live here: it would be {what} on "
                              f"every process, unsharded; use {fix}, or train.parallel: ddp")

    @property
    def objective(self) -> Method:
        """The objective ``method`` selects (:data:`pyft.train.methods.METHODS`; a tuning name selects sft)."""
        return get_method(self.method)

    @property
    def tuning_parts(self) -> tuple[str, ...]:
        """The tuning names the run trains: one, or the parts of a hybrid (``tuning: [lora, prompt_tuning]``)."""
        if self.method in TUNINGS:
            return (self.method,)
        if isinstance(self.tuning, list):
            return tuple(self.tuning)
        return (self.tuning or "lora",)

    @property
    def tuning_kind(self) -> str:
        """Which weights are trained: a :data:`~pyft.methods.TUNINGS` name, or ``hybrid`` for several."""
        parts = self.tuning_parts
        return parts[0] if len(parts) == 1 else "hybrid"

    @property
    def tunings(self) -> list[Tuning]:
        """The :class:`~pyft.methods.Tuning` of each part."""
        return [get_tuning(name) for name in self.tuning_parts]

    @property
    def trains_adapter(self) -> bool:
        """Whether the run trains adapters over a frozen base (every tuning but ``full``)."""
        return all(t.adapter for t in self.tunings)

    @property
    def nf4_base(self) -> bool:
        """Whether the base is NF4-quantized while training (QLoRA, alone or in a hybrid)."""
        return any(t.nf4_base for t in self.tunings)

    def _validate_tuning(self, method: Method) -> None:
        if isinstance(self.tuning, list) and not self.tuning:
            raise ConfigError("tuning: an empty list (name one tuning, or several for a hybrid)")
        if self.method in TUNINGS and self.tuning not in (None, self.method):
            raise ConfigError(f"tuning: method {self.method} already says the tuning; use method: sft with "
                              f"tuning: {self.tuning}")
        parts = self.tuning_parts
        for name in parts:
            get_tuning(name)  # ConfigError naming the unknown tuning
            if name not in method.tunings:
                raise ConfigError(f"tuning: {method.name} trains with {' or '.join(method.tunings)}, got {name!r}")
        if len(set(parts)) != len(parts):
            raise ConfigError(f"tuning: a tuning is listed twice in {list(parts)}")
        if len(parts) > 1:
            tunings = self.tunings
            if not all(t.adapter for t in tunings):
                raise ConfigError(f"tuning: a hybrid combines adapters; `full` trains every weight and cannot be "
                                  f"part of one, got {list(parts)}")
            lora = [t.name for t in tunings if t.section == "lora"]
            if len(lora) > 1:
                raise ConfigError(f"tuning: lora and qlora are the same adapters (qlora over an NF4 base); list one "
                                  f"of them, got {list(parts)}")
            virtual = [t.name for t in tunings if t.virtual_tokens]
            if len(virtual) > 1:
                raise ConfigError(f"tuning: {' and '.join(virtual)} both add virtual tokens to every sequence; a "
                                  f"hybrid takes one of them")
        if self.adapter is not None and not self.trains_adapter:
            raise ConfigError(f"adapter: continuing an adapter needs an adapter tuning (lora, qlora, ...), got "
                              f"{self.tuning_kind}")
        self._validate_stages(parts)

    def _validate_stages(self, parts: tuple[str, ...]) -> None:
        if self.stages is None:
            return
        if self.adapter is not None:
            raise ConfigError("stages: staged training starts new adapters; a continued adapter (adapter:) trains "
                              "all its parts (drop one of them)")
        if not self.stages:
            raise ConfigError("stages: an empty list (leave it out to train every part throughout)")
        for i, stage in enumerate(self.stages):
            key = f"stages[{i}]"
            if not stage.train:
                raise ConfigError(f"{key}.train: name the tunings this stage trains (of {list(parts)})")
            unknown = [n for n in stage.train if n not in parts]
            if unknown:
                raise ConfigError(f"{key}.train: {unknown[0]!r} is not one of this run's tunings {list(parts)}")
            last = i == len(self.stages) - 1
            if last and stage.steps is not None:
                raise ConfigError(f"{key}.steps: the last stage runs until training ends (train.max_steps or "
                                  f"train.epochs set the total); leave its steps out, got {stage.steps!r}")
            if not last and (stage.steps is None or stage.steps < 1):
                raise ConfigError(f"{key}.steps: every stage but the last needs a number of steps >= 1, got "
                                  f"{stage.steps!r}")
        never = [n for n in parts if not any(n in s.train for s in self.stages)]
        if never:
            raise ConfigError(f"stages: {never[0]!r} trains in no stage; add it to one or drop it from `tuning`")

    def stage_at(self, step: int) -> StageSection | None:
        """The stage optimizer step ``step`` (0-based) belongs to (None without ``stages``)."""
        if not self.stages:
            return None
        start = 0
        for stage in self.stages[:-1]:
            assert stage.steps is not None
            if step < start + stage.steps:
                return stage
            start += stage.steps
        return self.stages[-1]

    def _validate_align(self) -> None:
        from pyft.losses.preference import F_DIVERGENCES

        a, method = self.align, self.objective
        allowed = method.loss_types()
        types = [a.loss_type] if isinstance(a.loss_type, str) else list(a.loss_type or [])
        if types and not allowed:
            with_types = ", ".join(m.name for m in METHODS.values() if m.loss_types())
            raise ConfigError(f"align.loss_type: method {method.name} has no loss types ({with_types} do)")
        for t in types:
            if t not in allowed:
                raise ConfigError(f"align.loss_type: {t!r} is not a {method.name} loss type (expected one of "
                                  f"{', '.join(allowed)})")
        if not method.multi_loss and len(types) > 1:
            combine = ", ".join(m.name for m in METHODS.values() if m.multi_loss)
            raise ConfigError(f"align.loss_type: only {combine} combines several loss types")
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
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}, got {_get(self, key)!r}")
        if method.check is not None:
            method.check(self)

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
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # `X | None`: X's own error, which may name a nested key
            return _check_type(value, real[0], key)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, f"{key}.")
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
