"""The training vocabulary: the methods, tunings and optimizers a config may name, in one table.

Config validation, the training loop, ``pyft estimate``, the CLI help and the README's method table
all read :data:`METHODS`. A config's ``method`` names an objective (``sft``, ``dpo``, ``kto``, ...) or,
as a shorthand for ``sft``, a tuning of :data:`TUNINGS` (``method: lora`` is ``method: sft`` with
``tuning: lora``); ``tuning`` says which weights train. Adding an objective (GRPO, a classification
head) is one :class:`Method` entry here plus the module that defines its objective.

Importing this module is cheap (no torch): objectives and loss-type lists are imported when used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyft.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from pyft.align.reference import Reference
    from pyft.objectives import Objective
    from pyft.train.config import TrainConfig



@dataclass(frozen=True)
class Tuning:
    """One way of choosing what a run trains (``tuning:``), and what the result is good for.

    Attributes:
        name: the ``tuning:`` value (also a ``method:`` shorthand for ``sft`` with this tuning).
        summary: one line for the README and the CLI help.
        section: the config section holding its settings (None: no settings of its own).
        adapter: it trains an adapter over a frozen base, saved to ``adapter/`` (else the weights, ``model/``).
        peft_type: PEFT's ``peft_type`` of the saved adapter (``PYFT_*``: a pyft format PEFT has no type for).
        mergeable: the adapter folds into the weights (``pyft merge``, GGUF and vLLM exports of the merged model).
        nf4_base: the base is NF4-quantized while it trains (QLoRA).
        virtual_tokens: it adds positions to every sequence (prompt or prefix), so at most one such
            tuning may be part of a hybrid.
        apply: ``"module:function"`` applying it, ``function(model, section_config)`` (imported when used).
        save: ``"module:function"`` saving its adapter, ``function(model, out_dir, *, base_model_name_or_path,
            task_type, revision)``.
        paper: the reference for the README.
    """

    name: str
    summary: str
    section: str | None
    adapter: bool = True
    peft_type: str | None = None
    mergeable: bool = False
    nf4_base: bool = False
    virtual_tokens: bool = False
    apply: str = ""
    save: str = ""
    paper: str = ""


#: Every tuning, in the order the README lists them.
TUNING_TABLE: dict[str, Tuning] = {t.name: t for t in (
    Tuning("lora", "LoRA low-rank adapters on linear layers (also rsLoRA, DoRA: `lora.rslora`, `lora.dora`)", "lora",
           peft_type="LORA", mergeable=True, apply="pyft.peft.lora:apply_lora", save="pyft.peft.adapter_io:save_adapter", paper="arXiv:2106.09685"),
    Tuning("qlora", "LoRA over an NF4-quantized frozen base", "lora", peft_type="LORA", mergeable=True, nf4_base=True,
           apply="pyft.peft.lora:apply_lora", save="pyft.peft.adapter_io:save_adapter",
           paper="arXiv:2305.14314"),
    Tuning("full", "every weight (less what `freeze:` holds back)", None, adapter=False, mergeable=True),
    Tuning("ia3", "(IA)³: learned scaling of keys, values and feedforward activations", "ia3", peft_type="IA3",
           mergeable=True, apply="pyft.peft.ia3:apply_ia3", save="pyft.peft.ia3:save_ia3_adapter",
           paper="arXiv:2205.05638"),
    Tuning("oft", "orthogonal fine-tuning: block-diagonal rotations of the weights (Cayley transform)", "oft",
           peft_type="OFT", mergeable=True, apply="pyft.peft.oft:apply_oft", save="pyft.peft.oft:save_oft_adapter",
           paper="arXiv:2306.07280"),
    Tuning("prompt_tuning", "soft prompt: learned virtual tokens before every input", "prompt_tuning",
           peft_type="PROMPT_TUNING", virtual_tokens=True, apply="pyft.peft.prompt:apply_prompt_tuning", save="pyft.peft.prompt:save_prompt_adapter", paper="arXiv:2104.08691"),
    Tuning("p_tuning", "P-tuning: virtual tokens produced by a prompt encoder (MLP or LSTM) while training",
           "p_tuning", peft_type="P_TUNING", virtual_tokens=True, apply="pyft.peft.prompt:apply_p_tuning", save="pyft.peft.prompt:save_prompt_adapter", paper="arXiv:2103.10385"),
    Tuning("prefix_tuning", "prefix tuning: learned key/value prefixes in every layer, through an MLP while training with `projection: true`",
           "prefix_tuning", peft_type="PREFIX_TUNING", virtual_tokens=True, apply="pyft.peft.prefix:apply_prefix_tuning", save="pyft.peft.prefix:save_prefix_adapter", paper="arXiv:2101.00190"),
    Tuning("p_tuning_v2", "P-tuning v2: deep prompts in every layer (prefix tuning without the MLP)",
           "prefix_tuning", peft_type="PREFIX_TUNING", virtual_tokens=True, apply="pyft.peft.prefix:apply_p_tuning_v2", save="pyft.peft.prefix:save_prefix_adapter", paper="arXiv:2110.07602"),
    Tuning("bottleneck", "bottleneck adapters after attention and FFN (Houlsby) or after the FFN (Pfeiffer)",
           "bottleneck", peft_type="PYFT_BOTTLENECK", apply="pyft.peft.bottleneck:apply_bottleneck", save="pyft.peft.bottleneck:save_bottleneck_adapter", paper="arXiv:1902.00751"),
)}
#: Which weights a run trains: the names of :data:`TUNING_TABLE`.
TUNINGS = tuple(TUNING_TABLE)
#: ``train.optim`` values (transformers' ``optim`` names): see :mod:`pyft.train.optim`.
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit")
#: transformers' other spellings of the same optimizers.
OPTIMIZER_ALIASES = {"adamw_torch": "adamw", "paged_adamw_32bit": "paged_adamw"}
#: The default objective: supervised fine-tuning (what a tuning name as ``method`` selects).
SFT = "sft"
#: Model heads: a causal LM, a sequence-classification model with one label (reward models), or one
#: with ``num_labels`` classes (classifiers).
CAUSAL_LM, SEQUENCE_SCORE, SEQUENCE_CLASSES = "causal_lm", "sequence_score", "sequence_classes"
#: The heads of a ``*ForSequenceClassification`` model (a new ``score`` layer, saved whole).
SEQUENCE_HEADS = (SEQUENCE_SCORE, SEQUENCE_CLASSES)


@dataclass(frozen=True)
class ObjectiveParts:
    """What an objective factory may use; everything is built before the objective.

    Attributes:
        config: the whole run config.
        model: the model being trained (adapters applied).
        pad_token_id: padding id of the prepared data's tokenizer.
        layout: how sequences are batched (``packed``, ``flat`` or ``padded``), ``align.layout`` resolved.
        reference: the reference model of methods with ``needs_reference``, or of a method with
            ``kl_to_base`` when ``train.kl_to_base`` > 0 (else None).
        rank_mean: the mean of a float over all ranks (identity without DDP).
    """

    config: TrainConfig
    model: nn.Module
    pad_token_id: int
    layout: str
    reference: Reference | None
    rank_mean: Callable[[float], float]


@dataclass(frozen=True)
class Method:
    """One training objective and everything the rest of pyft needs to know about it.

    Attributes:
        name: the ``method:`` value.
        summary: one line for the CLI help and the README.
        data_kinds: prepared-data kinds it trains on (``PreparedDataset.kind``).
        sequences_per_row: sequences with activations per data row (2 for pairs): ``pyft estimate``.
        needs_reference: scores sequences against a reference model (``align.reference``).
        kl_sequences: also scores sequences outside the data rows (KTO's mismatched KL pairs), so a
            precomputed reference table still keeps a live reference for them.
        head: ``causal_lm``, ``sequence_score`` (a one-label sequence classifier, saved whole) or
            ``sequence_classes`` (a classifier over ``classify.labels``, saved whole).
        tunings: the tunings it supports.
        loss_types: ``() -> `` accepted ``align.loss_type`` values (the first is the default; empty for
            none), read from :mod:`pyft.losses.preference` when called.
        multi_loss: several loss types may be combined (a list with ``align.loss_weights``).
        reward_curves: the run plots ``rewards.png`` (margins, accuracies).
        disable_dropout: the model's dropout is turned off unless ``align.disable_dropout: false``
            (TRL's default for preference training).
        kl_to_base: its objective takes ``train.kl_to_base`` (a token-level KL to the starting model
            added to the loss; the run then builds a reference model as ``align.reference`` says).
        paper: the reference for the README.
        build: ``ObjectiveParts -> Objective``.
        check: extra config checks, raising ``ConfigError`` naming the key (or None).
        advice: a warning about the data for this config (``(config, split_counts) -> str | None``).
    """

    name: str
    summary: str
    data_kinds: tuple[str, ...]
    sequences_per_row: int
    needs_reference: bool
    build: Callable[[ObjectiveParts], Objective]
    kl_sequences: bool = False
    head: str = CAUSAL_LM
    tunings: tuple[str, ...] = TUNINGS
    loss_types: Callable[[], tuple[str, ...]] = tuple
    multi_loss: bool = False
    reward_curves: bool = True
    disable_dropout: bool = True
    kl_to_base: bool = False
    paper: str = ""
    check: Callable[[TrainConfig], None] | None = None
    advice: Callable[[TrainConfig, dict[str, Any]], str | None] | None = None

    @property
    def data_kind_text(self) -> str:
        """The data kinds as prose (``chat or text``)."""
        return " or ".join(self.data_kinds)


def _check_reward_model(config: TrainConfig) -> None:
    if config.align.layout not in ("auto", "padded"):
        raise ConfigError(f"align.layout: the reward model reads the last real token of padded rows; use auto or "
                          f"padded, got {config.align.layout!r}")
    if config.adapter is not None:
        raise ConfigError("adapter: a reward model starts a new adapter with its score head; merge the adapter into "
                          "the model first (pyft merge)")


def _check_classify(config: TrainConfig) -> None:
    if config.adapter is not None:
        raise ConfigError("adapter: a classifier starts a new adapter with its score head; merge the adapter into "
                          "the model first (pyft merge)")
    if config.train.sample_every is not None:
        raise ConfigError(f"train.sample_every: a classifier does not generate text (set it to null), got "
                          f"{config.train.sample_every!r}")
    if config.eval.general:
        raise ConfigError(f"eval.general: a classifier has no language-model head to measure perplexity with (set "
                          f"it to false), got {config.eval.general!r}")


def _check_kto(config: TrainConfig) -> None:
    if config.train.batch_size <= 1:
        raise ConfigError(f"train.batch_size: KTO estimates its KL term from mismatched pairs within a batch, so it "
                          f"needs batch_size > 1, got {config.train.batch_size!r}")


def _kto_advice(config: TrainConfig, split: dict[str, Any]) -> str | None:
    from pyft.align.objectives import kto_weight_advice

    a = config.align
    return kto_weight_advice(split.get("desirable", 0), split.get("undesirable", 0), a.desirable_weight,
                             a.undesirable_weight)


# -- objective factories (imported when a run builds its objective) -----------------------------
def _sft(p: ObjectiveParts) -> Objective:
    from pyft.objectives.sft import SftObjective

    t = p.config.train
    return SftObjective(p.model, p.pad_token_id, t.chunk_tokens, t.label_smoothing, t.kl_to_base, p.reference)


def _dpo(p: ObjectiveParts) -> Objective:
    from pyft.align.objectives import DpoObjective

    return DpoObjective(p.config.align, p.reference, p.pad_token_id, p.layout, p.config.train.chunk_tokens)


def _kto(p: ObjectiveParts) -> Objective:
    from pyft.align.objectives import KtoObjective

    return KtoObjective(p.config.align, p.reference, p.pad_token_id, p.layout, p.config.train.chunk_tokens,
                        p.rank_mean)


def _orpo(p: ObjectiveParts) -> Objective:
    from pyft.align.objectives import OrpoObjective

    return OrpoObjective(p.config.align, p.pad_token_id, p.layout, p.config.train.chunk_tokens)


def _cpo(simpo: bool) -> Callable[[ObjectiveParts], Objective]:
    def build(p: ObjectiveParts) -> Objective:
        from pyft.align.objectives import CpoObjective

        return CpoObjective(p.config.align, simpo, p.pad_token_id, p.layout, p.config.train.chunk_tokens)

    return build


def _reward(p: ObjectiveParts) -> Objective:
    from pyft.align.objectives import RewardObjective

    return RewardObjective(p.config.align, p.pad_token_id)


def _classify(p: ObjectiveParts) -> Objective:
    from pyft.classify.labels import class_weights, resolve_labels
    from pyft.classify.objective import ClassifyObjective
    from pyft.data import PreparedDataset

    c = p.config.classify
    train = PreparedDataset(p.config.data, "train")
    labels = resolve_labels(train.info, c.labels)
    weights = class_weights(c.class_weights, labels, labels.data_to_id[train.row_labels()])
    return ClassifyObjective(labels, p.pad_token_id, c.label_smoothing, weights)


def _dpo_losses() -> tuple[str, ...]:
    from pyft.losses.preference import DPO_LOSS_TYPES

    return DPO_LOSS_TYPES


def _kto_losses() -> tuple[str, ...]:
    from pyft.losses.preference import KTO_LOSS_TYPES

    return KTO_LOSS_TYPES


def _cpo_losses() -> tuple[str, ...]:
    from pyft.losses.preference import CPO_LOSS_TYPES

    return tuple(t for t in CPO_LOSS_TYPES if t != "simpo")  # SimPO's loss is the simpo method


METHODS: dict[str, Method] = {m.name: m for m in (
    Method(SFT, "supervised fine-tuning: next-token loss on the trained turns", ("chat", "text"), 1, False, _sft,
           reward_curves=False, disable_dropout=False, kl_to_base=True),
    Method("dpo", "direct preference optimisation against a reference model, and its loss variants",
           ("preference",), 2, True, _dpo, loss_types=_dpo_losses, multi_loss=True, paper="arXiv:2305.18290"),
    Method("kto", "Kahneman-Tversky optimisation on unpaired desirable/undesirable examples", ("kto",), 1, True,
           _kto, kl_sequences=True, loss_types=_kto_losses, paper="arXiv:2402.01306", check=_check_kto,
           advice=_kto_advice),
    Method("orpo", "odds-ratio preference optimisation: SFT and preference in one loss, no reference",
           ("preference",), 2, False, _orpo, paper="arXiv:2403.07691"),
    Method("simpo", "simple preference optimisation: length-normalised margin, no reference", ("preference",), 2,
           False, _cpo(simpo=True), paper="arXiv:2405.14734"),
    Method("cpo", "contrastive preference optimisation: preference loss plus chosen NLL, no reference",
           ("preference",), 2, False, _cpo(simpo=False), loss_types=_cpo_losses, paper="arXiv:2401.08417"),
    Method("rm", "Bradley-Terry reward model: a one-label sequence classifier scoring chosen over rejected",
           ("preference",), 2, False, _reward, head=SEQUENCE_SCORE, tunings=("lora", "full"),
           paper="arXiv:2203.02155", check=_check_reward_model),
    Method("classify", "sequence classification: a classifier head on the last token, cross-entropy over the "
           "classes (label smoothing, class weights)", ("classify",), 1, False, _classify, head=SEQUENCE_CLASSES,
           reward_curves=False, disable_dropout=False, check=_check_classify),
)}


def method_names() -> tuple[str, ...]:
    """Every accepted ``method:`` value: the objectives, then the tuning shorthands for ``sft``."""
    return (*METHODS, *TUNINGS)


def get_method(name: str) -> Method:
    """The :class:`Method` a ``method:`` value selects (a tuning name selects ``sft``).

    Raises:
        ConfigError: ``name`` is not a method.
    """
    if name in TUNINGS:
        return METHODS[SFT]
    if name not in METHODS:
        raise ConfigError(f"method: unknown method {name!r} (expected one of {', '.join(method_names())})")
    return METHODS[name]


def methods_table() -> str:
    """The README's method table (Markdown), generated from :data:`METHODS`."""
    lines = ["| method | trains on | reference model | tunings | what it optimises |",
             "|---|---|---|---|---|"]
    for m in METHODS.values():
        ref = "yes (or precomputed)" if m.needs_reference else "no"
        paper = f" ({m.paper})" if m.paper else ""
        tunings = "all" if m.tunings == TUNINGS else ", ".join(m.tunings)
        lines.append(f"| `{m.name}` | {m.data_kind_text} | {ref} | {tunings} | {m.summary}{paper} |")
    return "\n".join(lines)


def get_tuning(name: str) -> Tuning:
    """The :class:`Tuning` called ``name``.

    Raises:
        ConfigError: ``name`` is not a tuning.
    """
    if name not in TUNING_TABLE:
        raise ConfigError(f"tuning: unknown tuning {name!r} (expected one of {', '.join(TUNINGS)})")
    return TUNING_TABLE[name]


def tunings_table() -> str:
    """The README's tuning table (Markdown), generated from :data:`TUNING_TABLE`."""
    lines = ["| tuning | what trains | saved as | merges into the weights | config section |",
             "|---|---|---|---|---|"]
    for t in TUNING_TABLE.values():
        saved = "`model/` (transformers)" if not t.adapter else (
            f"`adapter/` (PEFT `{t.peft_type}`)" if not (t.peft_type or "").startswith("PYFT_")
            else "`adapter/` (pyft format)")
        merge = "yes" if t.mergeable else "no (serve base + adapter)"
        paper = f" ({t.paper})" if t.paper else ""
        section = f"`{t.section}:`" if t.section else "`freeze:`"
        lines.append(f"| `{t.name}` | {t.summary}{paper} | {saved} | {merge} | {section} |")
    return "\n".join(lines)
