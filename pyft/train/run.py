"""``pyft.train.train``: set up model, method and data from a :class:`TrainConfig`, run, save.

Everything that can be checked is checked before the first step: the output (it must not overlap
an input, nor hold an earlier run unless that run is resumed or ``overwrite`` is set), the model
directory, the prepared data (kind, tokenizer identity, vocabulary), the method options.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory, check_output_disjoint, discard_directory
from pyft.align.reference import (
    AdapterDisabledReference,
    FrozenCopyReference,
    PrecomputedReference,
    StartingAdapterReference,
)
from pyft.data import PreparedDataset
from pyft.errors import ConfigError
from pyft.hub import hub_ref
from pyft.io.files import read_json_object
from pyft.methods import CAUSAL_LM, SEQUENCE_CLASSES, SEQUENCE_HEADS, SEQUENCE_SCORE, Method, ObjectiveParts
from pyft.models import check_model_dir, load_model, load_reward_model, load_sequence_classifier
from pyft.peft import merge_lora, trainable_parameters_report
from pyft.train.batches import resolve_precision
from pyft.train.checkpoint import list_checkpoints, remove_stale_staging
from pyft.train.config import TrainConfig
from pyft.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from pyft.train.dropout import disable_dropout, set_model_dropout
from pyft.train.loop import Trainer, TrainResult, seed_everything
from pyft.train.monitor import build_monitor
from pyft.train.parallel import gather_to_main
from pyft.train.reference_logps import PolicyReference, precompute_reference_logps
from pyft.train.tunings import apply_adapters, continue_adapter, save_adapters, stage_frozen


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_data_matches_model(ds: PreparedDataset, model_dir: Path, vocab_size: int, method: Method) -> None:
    """The prepared data must be of a kind ``method`` trains on (:attr:`Method.data_kinds`) and
    tokenized by the model's own tokenizer."""
    meta = ds.info.meta
    if ds.kind not in method.data_kinds:
        raise ConfigError(f"data: {ds.info.out_dir} holds {ds.kind} data; method {method.name} needs "
                          f"{method.data_kind_text} data (prepare it with `pyft data prepare`, format "
                          f"{method.data_kinds[0]})")
    tok_json = model_dir / "tokenizer.json"
    if tok_json.is_file() and _sha256(tok_json) != meta["tokenizer"]["sha256"]:
        raise ConfigError(
            f"data: {ds.info.out_dir} was prepared with another tokenizer ({meta['tokenizer']['path']}) than the "
            f"model's {tok_json}; prepare the data again with --tokenizer {model_dir}"
        )
    if meta["tokenizer"]["vocab_size"] > vocab_size:
        raise ConfigError(f"data: tokenizer vocabulary ({meta['tokenizer']['vocab_size']}) is larger than the model's "
                          f"embedding table ({vocab_size})")


#: The directories a run writes into its output directory, and all it writes there: finding one of
#: them means the output holds a run.
RUN_DIRS = ("adapter", "model", "checkpoints", "tensorboard", "wandb", "mlflow")
RUN_ENTRIES = (*RUN_DIRS, "metrics.jsonl", "loss.png", "rewards.png", "reference_logps.safetensors", "samples.jsonl",
               "general.json")


def check_output(config: TrainConfig) -> list[Path]:
    """Check that ``config.output`` may take this run; return the earlier run's entries to delete first.

    Every entry the run writes (:data:`RUN_ENTRIES`) must be disjoint from the model, data and adapter
    directories: not one of them, inside one, or holding one. (The output directory itself may hold
    the inputs beside the run, as ``pyft demo`` lays them out.) An output that already holds a run
    is refused unless ``train.resume`` continues it or ``overwrite`` replaces it.

    Raises:
        ConfigError: an entry overlaps an input, or the output holds a run that would be replaced.
    """
    out = Path(config.output)
    for name in RUN_ENTRIES:
        check_output_disjoint(out / name, [config.model, config.data, config.adapter])
    found = [out / name for name in RUN_ENTRIES if os.path.lexists(out / name)]
    resume = config.train.resume
    if config.overwrite:
        return found
    if not found or (resume and resume != "auto"):  # nothing to replace, or a checkpoint named to continue from
        return []
    if resume == "auto" and list_checkpoints(out / "checkpoints"):
        return []
    listing = ", ".join(p.name for p in found)
    if resume == "auto":
        raise ConfigError(f"output: {out} already holds a training run ({listing}) but no checkpoint to resume from "
                          f"(train.resume=auto); pass --overwrite (config: overwrite: true) to start it again")
    raise ConfigError(f"output: {out} already holds a training run ({listing}); pass --overwrite (config: "
                      f"overwrite: true) to replace it, or train.resume=auto to continue it from its last checkpoint")


def remove_run(entries: list[Path]) -> None:
    """Delete an earlier run's entries (what :func:`check_output` returned under ``overwrite``).

    Links are removed, never followed; directories are renamed aside before they are deleted, so a
    crash never leaves a half-deleted ``checkpoints/step-*`` that looks complete.
    """
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            discard_directory(path)
        else:
            path.unlink()
    if entries:
        print(f"[train] overwrite: removed the earlier run in {entries[0].parent} "
              f"({', '.join(p.name for p in entries)})", file=sys.stderr)


def apply_freezing(model: nn.Module, config: TrainConfig) -> None:
    """Full fine-tuning: train everything except what ``freeze`` excludes."""
    f = config.freeze
    for p in model.parameters():
        p.requires_grad_(True)
    layers = getattr(model.get_decoder(), "layers", None)
    if f.embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
    if f.first_layers or (f.train_top_layers is not None and f.unfreeze_every is None):
        if layers is None:
            raise ConfigError("freeze: this model has no `layers` list to freeze by index")
        n = len(layers)
        frozen = set(range(min(f.first_layers, n)))
        if f.train_top_layers is not None and f.unfreeze_every is None:
            frozen |= set(range(max(0, n - f.train_top_layers)))
        for i in frozen:
            for p in layers[i].parameters():
                p.requires_grad_(False)


def load_for_training(config: TrainConfig, model_dir: Path, dtype: torch.dtype | str, device: torch.device,
                      pad_token_id: int) -> nn.Module:
    """The model as the method and tuning need it: a one-label sequence scorer for reward models, a
    classifier over the classes of the data for ``classify``, an NF4-quantized base for QLoRA
    (quantized from the safetensors while loading), else the causal LM."""
    if config.objective.head == SEQUENCE_SCORE:
        return load_reward_model(model_dir, dtype=dtype, device=device, pad_token_id=pad_token_id)
    quant: dict[str, Any] = {}
    if config.nf4_base:
        q = config.quant
        names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        compute = dtype if q.compute_dtype == "auto" else names[q.compute_dtype]
        quant = {"quantize": "nf4", "compute_dtype": compute, "quant_blocksize": q.blocksize,
                 "double_quant": q.double_quant}
    if config.objective.head == SEQUENCE_CLASSES:
        from pyft.classify.labels import resolve_labels
        from pyft.data import PreparedInfo

        labels = resolve_labels(PreparedInfo.read(config.data), config.classify.labels)
        return load_sequence_classifier(model_dir, labels.model_config(), dtype=dtype, device=device,
                                        pad_token_id=pad_token_id, **quant)
    return load_model(model_dir, dtype=dtype, device=device, **quant)


def apply_tuning(config: TrainConfig, model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Make trainable what ``tuning`` trains: new or continued adapters (one kind or a hybrid), or the
    unfrozen weights. Returns the parameters of each adapter part (for ``stages``; empty under full)."""
    if config.tuning_kind == "full":
        apply_freezing(model, config)
        return {}
    if config.adapter:
        return continue_adapter(config, model)
    return apply_adapters(config, model)


def build_reference(config: TrainConfig, model_dir: Path, model: nn.Module, splits: dict[str, PreparedDataset],
                    pad_token_id: int, layout: str, precision: str, dist_info: DistInfo) -> Any:
    """The reference model of a method that needs one, or of SFT with ``train.kl_to_base`` (None
    otherwise), complete: with ``align.precompute_ref`` its log-probs for every row are computed here,
    before the objective exists.

    Under LoRA/QLoRA the reference is the base with adapters off (or the adapter training started
    from); under full fine-tuning a frozen copy, or the policy itself when everything is precomputed
    (a copy is then kept only for sequences outside the table: KTO's KL pairs). The KL to the base
    compares whole distributions at every step, so it always gets a live reference.
    """
    method, align, chunk = config.objective, config.align, config.train.chunk_tokens
    if not (method.needs_reference or config.train.kl_to_base):
        return None
    adapters = config.trains_adapter
    precompute = align.precompute_ref
    if align.reference == "auto" and adapters and config.adapter:
        live: Any = StartingAdapterReference(model, chunk)
    elif align.reference == "auto" and adapters:
        live = AdapterDisabledReference(chunk)
    elif precompute and not method.kl_sequences:
        live = PolicyReference(chunk)  # scores the starting model once; no copy is kept
    else:
        live = FrozenCopyReference(model, chunk)
    if not precompute:
        return live
    table = precompute_reference_logps(config, model_dir, model, live, splits, method.sequences_per_row, pad_token_id,
                                       layout, precision, dist_info)
    return PrecomputedReference(table, fallback=live if method.kl_sequences else None)


def build_trainer(config: TrainConfig) -> Trainer:
    """Load and check model and data, apply the method, and return a ready :class:`Trainer`
    (resumed from a checkpoint when ``train.resume`` says so)."""
    config.validate()
    opts, method = config.train, config.objective
    model_dir = check_model_dir(config.model, revision=config.model_revision)
    train_ds = PreparedDataset(config.data, "train")
    earlier_run = check_output(config)
    eval_ds = PreparedDataset(config.data, "validation") if "validation" in train_ds.info.splits else None
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(opts.precision, device)
    seed_everything(opts.seed)
    adapters = config.trains_adapter
    dtype = torch.bfloat16 if (adapters and precision == "bf16") else torch.float32
    meta_tok = train_ds.info.meta["tokenizer"]
    pad = meta_tok.get("pad_token_id") if meta_tok.get("pad_token_id") is not None else meta_tok.get("eos_token_id")
    pad = pad or 0
    # FSDP: loaded whole into CPU memory, then each decoder layer moves to the device as its shard
    # (a model that does not fit one device never is on one whole). Full fine-tuning of a causal LM
    # loads in the checkpoint's dtype, memory-mapped (the processes of a machine share the pages),
    # and each layer is cast to the training dtype just before it is sharded: a bf16 checkpoint
    # trained in fp32 is never converted whole, once per process. (Adapters, new heads and the
    # precomputed reference are created or scored in the training dtype, so they load converted.)
    sharded = dist_info.enabled and opts.parallel == "fsdp"
    lazy_cast = (sharded and config.tuning_kind == "full" and method.head == CAUSAL_LM
                 and not (config.align.precompute_ref and method.needs_reference))
    model = load_for_training(config, model_dir, "auto" if lazy_cast else dtype,
                              torch.device("cpu") if sharded else device, pad)
    check_data_matches_model(train_ds, model_dir, model.config.vocab_size, method)
    if earlier_run:  # overwrite: only now that model and data are known good
        if dist_info.is_main:
            remove_run(earlier_run)
        barrier(dist_info)
    if method.disable_dropout and config.align.disable_dropout:
        disable_dropout(model)
    if opts.model_dropout is not None:
        set_model_dropout(model, opts.model_dropout)
    parts = apply_tuning(config, model)
    if opts.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if dist_info.is_main:
        print(f"[train] {config.method} ({config.tuning_kind}): {trainable_parameters_report(model)}", file=sys.stderr)
        advice = method.advice(config, train_ds.info.splits["train"]) if method.advice else None
        if advice:
            print(f"[warning] {advice}", file=sys.stderr)
    attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    layout = config.align.layout if config.align.layout != "auto" else ("flat" if "flash" in attn else "packed")
    splits = {"train": train_ds, **({"validation": eval_ds} if eval_ds is not None else {})}
    # Before any resume: the reference is the starting model.
    reference = build_reference(config, model_dir, model, splits, pad, layout, precision, dist_info)

    def rank_mean(x: float) -> float:
        return all_reduce_sum(x, dist_info, device) / dist_info.world

    objective = method.build(ObjectiveParts(config, model, pad, layout, reference, rank_mean))
    frozen_at = None
    if config.freeze.unfreeze_every:
        frozen_at = lambda step: progressive_frozen(model, config, step)
    elif config.stages:
        frozen_at = lambda step: stage_frozen(config, parts, step)
    monitor = build_monitor(opts.report_to, Path(config.output), dist_info.is_main)
    trainer = Trainer(config, model, train_ds, eval_ds, objective, dist_info, frozen_at, monitor, device=device,
                      cast_to=dtype if lazy_cast else None)
    if opts.sample_every and dist_info.is_main:
        from pyft.train.samples import build_sampler

        trainer.sampler = build_sampler(config, train_ds, eval_ds)
    if opts.resume:
        path = Path(opts.resume)
        if opts.resume == "auto":
            found = list_checkpoints(trainer.ckpt_root)
            path = found[-1] if found else None
        if path is not None:
            if not (path / "state.json").is_file():
                raise ConfigError(f"train.resume: {path} is not a checkpoint directory")
            trainer.resume(path)
    if dist_info.is_main:  # what a killed run left while writing checkpoints or deleting a directory
        remove_stale_staging(Path(config.output), RUN_DIRS)
        remove_stale_staging(trainer.ckpt_root)
    return trainer


def progressive_frozen(model: nn.Module, config: TrainConfig, step: int) -> list[nn.Parameter]:
    """Parameters progressive unfreezing still holds frozen after ``step`` updates.

    See :class:`pyft.train.config.FreezeSection`. With tied embeddings the output layer shares the
    embedding matrix and so joins with the embeddings.
    """
    f = config.freeze
    if config.tuning_kind != "full" or f.unfreeze_every is None:
        return []
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ConfigError("freeze.unfreeze_every: this model has no `layers` list to unfreeze by index")
    n = len(layers)
    open_layers = (f.train_top_layers or 1) + step // f.unfreeze_every
    frozen = [p for i in range(max(0, n - open_layers)) for p in layers[i].parameters()]
    if open_layers <= n:  # embeddings join after the last decoder layer
        frozen += list(model.get_input_embeddings().parameters())
    return frozen


def train(config: TrainConfig) -> TrainResult:
    """Run a whole training job; returns its :class:`TrainResult`.

    Writes into ``config.output``: ``adapter/`` (LoRA family, PEFT format) or ``model/`` (full
    fine-tuning, a transformers directory with the tokenizer; reward models and classifiers always
    get ``model/``, a sequence-classification model), ``metrics.jsonl``, ``loss.png`` (and
    ``rewards.png`` for alignment methods) and ``checkpoints/``. Under ``torchrun`` every process
    runs this; rank 0 writes the files (under ``train.parallel: fsdp`` every process writes its
    checkpoint shards, and the final weights are gathered to rank 0 first).
    """
    trainer = build_trainer(config)
    general = None
    if config.eval.general and trainer.dist.is_main:
        from pyft.train.samples import GeneralPerplexity

        general = GeneralPerplexity(config, trainer.train_ds, trainer.model)
    result = trainer.run()
    # FSDP: whole parameters on rank 0 for the outputs (an adapter run's trained ones; a sequence
    # scorer's adapter is also merged into a whole model, so it needs them all).
    scorer = config.objective.head in SEQUENCE_HEADS
    gather_to_main(trainer.parallel, trainer.dist, trainable_only=config.trains_adapter and not scorer)
    if trainer.dist.is_main:
        _save_final(config, trainer.model, Path(config.model), trainer.train_ds)
        if general is not None:
            general.finish(trainer.model)
    barrier(trainer.dist)
    return result


def _save_final(config: TrainConfig, model: nn.Module, model_dir: Path, ds: PreparedDataset) -> None:
    out = Path(config.output)
    scorer = config.objective.head in SEQUENCE_HEADS
    labels = None
    if config.objective.head == SEQUENCE_CLASSES:  # the classes in id order, for loading the adapter
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if config.trains_adapter:
        task = "SEQ_CLS" if scorer else "CAUSAL_LM"
        # A Hub base is recorded as PEFT records it: the repo id, and the revision apart.
        hub = hub_ref(config.model)
        base = hub[0] if hub else str(model_dir)
        revision = (hub[1] or config.model_revision) if hub else None
        save_adapters(config, model, out / "adapter", base_model_name_or_path=base, task_type=task, revision=revision)
        _save_serving_info(out / "adapter", ds, labels)
        if not scorer:
            return
        # A reward model or classifier is also written whole, so transformers' sequence-classification
        # loader reads it (a QLoRA base is dequantized: the merged weights are in the compute dtype).
        model = merge_lora(model)
    with atomic_directory(out / "model", overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _save_serving_info(tmp, ds, labels)


def _save_serving_info(dest: Path, ds: PreparedDataset, labels: list[str] | None = None) -> None:
    """What serving needs to reproduce the training prompts, next to the weights: the tokenizer
    files the data was prepared with, the chat template used (``chat_template.jinja``, also inline
    in ``tokenizer_config.json``) and ``pyft_run.json`` (template name, default system prompt).
    ``pyft merge``/``pyft export`` read these before the base model's own files. A classifier's
    ``pyft_run.json`` also lists its ``labels`` in id order."""
    for f in (ds.info.out_dir / "tokenizer").iterdir():
        shutil.copy(f, dest / f.name)
    template = ds.info.meta.get("template") or {}
    source = template.get("source")
    if source:
        (dest / "chat_template.jinja").write_text(source, encoding="utf-8")
        tc_path = dest / "tokenizer_config.json"
        tc = read_json_object(tc_path) if tc_path.is_file() else {}
        tc["chat_template"] = source
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    run_info = {"template": template.get("name"), "system_prompt": ds.info.meta.get("system_prompt"),
                **({"labels": labels} if labels is not None else {})}
    (dest / "pyft_run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
