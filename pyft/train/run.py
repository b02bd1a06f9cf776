"""``pyft.train.train``: set up model, method and data from a :class:`TrainConfig`, run, save.

Everything that can be checked is checked before the first step: the output (it must not overlap
an input, nor hold an earlier run unless that run is resumed or ``overwrite`` is set), the model
directory, the prepared data (kind, tokenizer identity, vocabulary), the method options.
"""

from __future__ import annotations

import dataclasses
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
from pyft.data import PreparedDataset
from pyft.errors import ConfigError
from pyft.io.files import read_json_object
from pyft.models import check_model_dir, load_model, load_reward_model
from pyft.peft import apply_lora, load_adapter, merge_lora, save_adapter, trainable_parameters_report
from pyft.train.config import ALIGN_METHODS, TrainConfig
from pyft.train.loop import Trainer, TrainResult, resolve_precision, seed_everything
from pyft.train.checkpoint import list_checkpoints, remove_stale_staging
from pyft.train.distributed import all_reduce_sum, barrier, init_distributed
from pyft.train.objective import Objective


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_data_matches_model(ds: PreparedDataset, model_dir: Path, vocab_size: int, method: str = "sft") -> None:
    """The prepared data must be of the kind ``method`` trains on (chat/text for SFT, preference for
    DPO/ORPO/SimPO/CPO/reward models, kto for KTO) and tokenized by the model's own tokenizer."""
    meta = ds.info.meta
    wanted = ALIGN_METHODS.get(method)
    if wanted is None and ds.kind not in ("chat", "text"):
        raise ConfigError(f"data: {ds.info.out_dir} holds {ds.kind} data; SFT needs chat or text data")
    if wanted is not None and ds.kind != wanted:
        raise ConfigError(f"data: {ds.info.out_dir} holds {ds.kind} data; method {method} needs {wanted} data "
                          f"(prepare it with `pyft data prepare`, format {wanted})")
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
RUN_DIRS = ("adapter", "model", "checkpoints", "tensorboard")
RUN_ENTRIES = (*RUN_DIRS, "metrics.jsonl", "loss.png", "rewards.png", "reference_logps.safetensors")


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


def build_trainer(config: TrainConfig) -> Trainer:
    """Load and check model and data, apply the method, and return a ready :class:`Trainer`
    (resumed from a checkpoint when ``train.resume`` says so)."""
    config.validate()
    t = config.train
    model_dir = check_model_dir(config.model)
    train_ds = PreparedDataset(config.data, "train")
    earlier_run = check_output(config)
    eval_ds = PreparedDataset(config.data, "validation") if "validation" in train_ds.info.splits else None
    device = torch.device(t.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(t.precision, device)
    seed_everything(t.seed)
    tuning = config.tuning_kind
    adapters = tuning in ("lora", "qlora")
    dtype = torch.bfloat16 if (adapters and precision == "bf16") else torch.float32
    meta_tok = train_ds.info.meta["tokenizer"]
    pad = meta_tok.get("pad_token_id") if meta_tok.get("pad_token_id") is not None else meta_tok.get("eos_token_id")
    pad = pad or 0
    if config.method == "rm":
        model = load_reward_model(model_dir, dtype=dtype, device=device, pad_token_id=pad)
    elif tuning == "qlora":
        # QLoRA: the frozen base in NF4 (quantized from the safetensors while loading), LoRA on top.
        q = config.quant
        names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        compute = dtype if q.compute_dtype == "auto" else names[q.compute_dtype]
        model = load_model(model_dir, dtype=dtype, device=device, quantize="nf4", compute_dtype=compute,
                           quant_blocksize=q.blocksize, double_quant=q.double_quant)
    else:
        model = load_model(model_dir, dtype=dtype, device=device)
    check_data_matches_model(train_ds, model_dir, model.config.vocab_size, config.objective)
    if earlier_run:  # overwrite: only now that model and data are known good
        if dist_info.is_main:
            remove_run(earlier_run)
        barrier(dist_info)
    if config.objective != "sft" and config.align.disable_dropout:
        disable_dropout(model)
    if adapters and config.adapter:
        load_adapter(model, config.adapter, trainable=True)
    elif adapters:
        lora = config.lora
        if config.method == "rm":  # the new score head trains in full (PEFT's SEQ_CLS default)
            lora = dataclasses.replace(lora, modules_to_save=sorted(set(lora.modules_to_save or []) | {"score"}))
        apply_lora(model, lora)
    else:
        apply_freezing(model, config)
    if t.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if dist_info.is_main:
        print(f"[train] {config.method} ({tuning}): {trainable_parameters_report(model)}", file=sys.stderr)
    if config.method == "kto" and dist_info.is_main:
        from pyft.align.objectives import kto_weight_advice

        split = train_ds.info.splits["train"]
        advice = kto_weight_advice(split.get("desirable", 0), split.get("undesirable", 0),
                                   config.align.desirable_weight, config.align.undesirable_weight)
        if advice:
            print(f"[warning] {advice}", file=sys.stderr)
    objective = build_objective(config, model, pad, dist_info, device)
    trainer = Trainer(config, model, train_ds, eval_ds, pad_token_id=pad, dist_info=dist_info,
                      progressive=progressive_frozen if config.freeze.unfreeze_every else None, objective=objective)
    if config.objective in ("dpo", "kto") and config.align.precompute_ref:
        from pyft.align.precompute import precompute_reference_logps

        precompute_reference_logps(trainer, config)  # before any resume: the reference is the starting model
    if t.resume:
        path = Path(t.resume)
        if t.resume == "auto":
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


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0 (TRL's ``disable_dropout`` for preference training)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        # transformers' attention layers apply dropout functionally from this attribute; the config
        # (and so a saved model) is left as it was.
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def build_objective(config: TrainConfig, model: nn.Module, pad: int, dist_info, device) -> Objective | None:
    """The objective of ``config.method`` (None for SFT: the loop's default)."""
    from pyft.align.objectives import CpoObjective, DpoObjective, KtoObjective, OrpoObjective, RewardObjective
    from pyft.align.reference import (AdapterDisabledReference, FrozenCopyReference, PrecomputedReference,
                                      StartingAdapterReference)

    method, a, chunk = config.objective, config.align, config.train.chunk_tokens
    if method == "sft":
        return None
    if method == "rm":
        return RewardObjective(a, pad)
    attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    layout = a.layout if a.layout != "auto" else ("flat" if "flash" in attn else "packed")
    if method in ("orpo",):
        return OrpoObjective(a, pad, layout, chunk)
    if method in ("simpo", "cpo"):
        return CpoObjective(a, method == "simpo", pad, layout, chunk)
    adapters = config.tuning_kind in ("lora", "qlora")
    if a.reference == "auto" and adapters and config.adapter:
        reference: Any = StartingAdapterReference(model, chunk)
    elif a.reference == "auto" and adapters:
        reference = AdapterDisabledReference(chunk)
    elif a.precompute_ref and method == "dpo":
        reference = PrecomputedReference({})  # filled by precompute_reference_logps; no model copy needed
    else:
        reference = FrozenCopyReference(model, chunk)
    if method == "dpo":
        return DpoObjective(a, reference, pad, layout, chunk)
    world = dist_info.world

    def rank_mean(x: float) -> float:
        return all_reduce_sum(x, dist_info, device) / world

    return KtoObjective(a, reference, pad, layout, chunk, rank_mean=rank_mean)


def train(config: TrainConfig) -> TrainResult:
    """Run a whole training job; returns its :class:`TrainResult`.

    Writes into ``config.output``: ``adapter/`` (LoRA family, PEFT format) or ``model/`` (full
    fine-tuning, a transformers directory with the tokenizer; reward models always get ``model/``,
    a one-label sequence-classification model), ``metrics.jsonl``, ``loss.png`` (and
    ``rewards.png`` for alignment methods) and ``checkpoints/``. Under ``torchrun`` every process
    runs this; rank 0 writes the files.
    """
    trainer = build_trainer(config)
    result = trainer.run()
    if trainer.dist.is_main:
        _save_final(config, trainer.model, Path(config.model), trainer.train_ds)
    barrier(trainer.dist)
    return result


def _save_final(config: TrainConfig, model: nn.Module, model_dir: Path, ds: PreparedDataset) -> None:
    out = Path(config.output)
    if config.tuning_kind in ("lora", "qlora"):
        task = "SEQ_CLS" if config.method == "rm" else "CAUSAL_LM"
        save_adapter(model, out / "adapter", base_model_name_or_path=str(model_dir), task_type=task)
        _save_serving_info(out / "adapter", ds)
        if config.method != "rm":
            return
        # A reward model is also written whole, so transformers' sequence-classification loader reads it.
        model = merge_lora(model)
    with atomic_directory(out / "model", overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _save_serving_info(tmp, ds)


def _save_serving_info(dest: Path, ds: PreparedDataset) -> None:
    """What serving needs to reproduce the training prompts, next to the weights: the tokenizer
    files the data was prepared with, the chat template used (``chat_template.jinja``, also inline
    in ``tokenizer_config.json``) and ``pyft_run.json`` (template name, default system prompt).
    ``pyft merge``/``pyft export`` read these before the base model's own files."""
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
    run_info = {"template": template.get("name"), "system_prompt": ds.info.meta.get("system_prompt")}
    (dest / "pyft_run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
