"""The training loop: one readable loop for every method (SFT, DPO family, KTO, ORPO, SimPO, reward models).

Per optimizer step (:meth:`Trainer.train_step`): take ``batch_size × grad_accum`` rows on every rank
in a seeded per-epoch order, sum the objective's normalisers over all of them (target tokens for
SFT, pairs for DPO), run each micro-batch and back-propagate its loss divided by those totals (so
accumulation equals one big batch, whatever the sequence lengths, and summing the ranks' gradients
gives the global batch's), clip, step, schedule. What a step
optimises comes from an :class:`~pyft.objectives.Objective`. Evaluation, early stopping (keeping the
best evaluated weights), checkpoints (exact resume) and metrics follow their own intervals; what is
watched and logged lives in :mod:`pyft.train.monitor`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyft.data import PreparedDataset
from pyft.errors import TrainingError
from pyft.objectives import Objective
from pyft.train.batches import RowStream, autocast, collate_batches, resolve_precision
from pyft.train.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_trainable,
    prune_checkpoints,
    remove_stale_staging,
    rng_state,
    save_checkpoint,
    write_run_state,
)
from pyft.train.config import TrainConfig
from pyft.train.distributed import DistInfo, all_reduce_max, barrier, gather_objects, reduce_sums
from pyft.train.grad_norms import grad_norms_by_group
from pyft.train.monitor import Monitor, RunInfo
from pyft.train.optim import build_optimizer, build_scheduler, warmup_steps
from pyft.train.parallel import build_parallel
from pyft.train.progress import write
from pyft.train.sharded_checkpoint import save_sharded_checkpoint

__all__ = ["Trainer", "TrainResult", "RowStream", "resolve_precision", "seed_everything", "peak_memory"]


@dataclass
class TrainResult:
    """What a finished run produced.

    ``eval_loss`` is that of the weights kept: the best evaluation's when ``train.load_best``
    restored them (``best_step``), else the last evaluation's.
    """

    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    stopped_early: bool
    peak_memory_bytes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    best_step: int | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocated CUDA memory on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class Trainer:
    """Model, data, optimizer and loop state of one run. :func:`pyft.train.train` builds and runs it.

    Args:
        config: the run's config.
        model: the model, with adapters applied or parameters frozen as the tuning says.
        train_ds, eval_ds: prepared splits (``eval_ds`` None without a validation split).
        objective: what a step optimises.
        dist_info: the process group under torchrun (default: one process); ``train.parallel``
            says whether the model is replicated (DDP) or sharded (FSDP2), see :mod:`pyft.train.parallel`.
        frozen_at: progressive unfreezing: ``step -> parameters still frozen`` (None: no schedule).
        monitor: metrics, progress, trackers and alarms (default: history only).
        device: where batches go and the model computes (default: where its parameters are; under
            FSDP the model may still be in CPU memory, and sharding moves it).
        cast_to: under FSDP, the dtype parameters train in when the model was loaded in its
            checkpoint's (see :func:`pyft.train.parallel.build_parallel`).

    ``sampler`` (set after construction, rank 0 only): called as ``sampler(model, step)`` every
    ``train.sample_every`` steps; its record goes to :meth:`Monitor.samples`.
    """

    sampler: Callable[[nn.Module, int], dict[str, Any]] | None = None

    def __init__(self, config: TrainConfig, model: nn.Module, train_ds: PreparedDataset,
                 eval_ds: PreparedDataset | None, objective: Objective, dist_info: DistInfo | None = None,
                 frozen_at: Callable[[int], list[nn.Parameter]] | None = None, monitor: Monitor | None = None,
                 device: torch.device | None = None, cast_to: torch.dtype | None = None) -> None:
        self.config = config
        self.options = opts = config.train
        self.dist = dist_info or DistInfo()
        self.model, self.objective = model, objective
        self.train_ds, self.eval_ds = train_ds, eval_ds
        self.device = device or next(model.parameters()).device
        self.precision = resolve_precision(opts.precision, self.device)
        # DDP or FSDP under torchrun (FSDP shards the model in place: the optimizer is built after).
        self.parallel = build_parallel(model, objective, opts.parallel, self.dist, self.device, self.precision,
                                       cpu_offload=opts.fsdp_cpu_offload, find_unused=frozen_at is not None,
                                       cast_to=cast_to)
        rows_per_step = opts.batch_size * opts.grad_accum * self.dist.world
        self.total_steps = opts.max_steps or max(1, math.ceil(opts.epochs * math.ceil(len(train_ds) / rows_per_step)))
        self.optimizer = build_optimizer(model, opts.lr, opts.weight_decay, tuple(opts.betas), opts.eps, opts.optim)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup_steps(opts.warmup, self.total_steps),
                                         opts.schedule, min_lr_ratio=opts.min_lr_ratio)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.frozen_at = frozen_at
        self.monitor = monitor or Monitor()
        self.stream = RowStream(len(train_ds), opts.seed)
        self.step = 0
        self.best_eval: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.output = Path(config.output)
        self.ckpt_root = self.output / "checkpoints"
        # Keep the best evaluated weights (a checkpoint written at each new best, never pruned).
        load_best = opts.load_best if opts.load_best is not None else opts.eval_every is not None
        self.load_best = bool(load_best) and eval_ds is not None
        # L2-SP: pull full fine-tuning toward the pretrained weights, lambda * ||theta - theta_0||^2.
        self.l2sp = config.freeze.l2sp if config.tuning_kind == "full" else 0.0
        self.anchor = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                       if self.l2sp > 0 else {})

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every step and eval record of this process so far."""
        return self.monitor.history

    # -- one step -------------------------------------------------------------------------------
    def accumulate_gradients(self) -> tuple[dict[str, float], int]:
        """Back-propagate one optimizer step's worth of micro-batches (all ranks together).

        Returns:
            ``(metrics, tokens)``: the objective's step metrics (``loss`` is the step loss, e.g. the
            mean token loss for SFT) and how many tokens the step trained on (all ranks).
        """
        self.model.train()
        self.objective.training = True
        per_rank = self.options.batch_size * self.options.grad_accum
        rows = self.stream.take(per_rank * self.dist.world)[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
        batches = collate_batches(self.objective.collate, self.train_ds, rows, "train", self.options.batch_size,
                                  self.device)
        totals = self._totals(batches)  # normalise by the whole step: all micro-batches on all ranks
        sums: dict[str, float] = {}
        for i, batch in enumerate(batches):
            # Gradients are summed over ranks once, after the last micro-batch (DDP/FSDP).
            with self.parallel.micro_step(last=i == len(batches) - 1):
                with autocast(self.precision, self.device):
                    loss, part = self.parallel.runner(batch, totals)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        return self.objective.finalize(reduce_sums(sums, self.dist, self.device), totals), int(totals.get("tokens", 0))

    def train_step(self) -> dict[str, float]:
        """One optimizer update; returns its metrics (the step record without ``step``/``epoch``)."""
        if self.frozen_at is not None:  # progressive unfreezing
            frozen = {id(p) for p in self.frozen_at(self.step)}
            for p in self.params:
                p.requires_grad_(id(p) not in frozen)
        metrics, tokens = self.accumulate_gradients()
        if self.anchor:  # L2-SP, once per step (identical on every rank, so after the all-reduce)
            penalty = self.l2sp * torch.stack([((p - self.anchor[n]) ** 2).sum() for n, p in
                                               self.model.named_parameters() if n in self.anchor and p.requires_grad]).sum()
            (self.scaler.scale(penalty) if self.scaler else penalty).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        groups = grad_norms_by_group(self.model)
        grad_norm = self.parallel.clip_grad_norm(self.params, self.options.max_grad_norm or float("inf"))
        # fp16: scaled gradients that overflow are the loss scaler's to handle: it skips the update and
        # halves the scale (as torch.amp and HF's Trainer do), unless the scale has already collapsed.
        overflow = (self.scaler is not None and math.isfinite(metrics["loss"]) and not math.isfinite(grad_norm)
                    and self.scaler.get_scale() >= 1.0)
        if not overflow and not (math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)):
            self._stop_non_finite("loss" if not math.isfinite(metrics["loss"]) else "gradient norm")
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler:
            self.scaler.step(self.optimizer)  # a no-op when the unscaled gradients hold inf/nan
            self.scaler.update()
        else:
            self.optimizer.step()
        if not overflow:  # the schedule advances with the updates actually applied
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics = {**metrics, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
                   **{f"grad_norm/{g}": v for g, v in groups.items()}}
        if overflow:
            write(f"[warning] step {self.step}: fp16 gradients overflowed; update skipped, loss scale lowered to "
                  f"{self.scaler.get_scale():g}")
            metrics["skipped"] = 1.0
        return metrics

    def _stop_non_finite(self, what: str) -> None:
        last = list_checkpoints(self.ckpt_root)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise TrainingError(f"non-finite {what} at step {self.step + 1}; training stopped before applying it "
                            f"({where}). Lower train.lr or use fp32/bf16.")

    def _totals(self, batches: list[dict[str, Any]], agree_keys: bool = False) -> dict[str, float]:
        """The objective's normalisers summed over ``batches`` and all ranks."""
        totals: dict[str, float] = {}
        for batch in batches:
            for k, v in self.objective.counts(batch).items():
                totals[k] = totals.get(k, 0) + v
        return reduce_sums(totals, self.dist, self.device, agree_keys)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The objective's metrics over the validation split (``loss`` first; empty without one).

        Batches are built once for the whole split so losses are normalised by the split's totals.
        """
        if self.eval_ds is None or len(self.eval_ds) == 0:
            return {}
        self.model.eval()
        self.objective.training = False
        mine = list(range(self.dist.rank, len(self.eval_ds), self.dist.world))
        batches = collate_batches(self.objective.collate, self.eval_ds, mine, "validation", self.options.batch_size,
                                  self.device)
        totals = self._totals(batches, agree_keys=True)  # a rank may hold no batch: agree on the keys
        sums: dict[str, float] = {}
        for batch in batches:
            with autocast(self.precision, self.device):
                _, part = self.parallel.runner(batch, totals)
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        if self.parallel.sharded:  # every rank must join each forward's parameter gathers: the ranks with
            # fewer batches run the difference again on a batch of the split, and discard the result
            spare = batches[:1] or collate_batches(self.objective.collate, self.eval_ds, [0], "validation", 1,
                                                   self.device)
            for _ in range(int(all_reduce_max(len(batches), self.dist, self.device)) - len(batches)):
                with autocast(self.precision, self.device):
                    self.parallel.runner(spare[0], totals)
            self.parallel.reshard()
        return self.objective.finalize(reduce_sums(sums, self.dist, self.device, agree_keys=True), totals)

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Loop state saved with checkpoints."""
        return {"step": self.step, "total_steps": self.total_steps, "data": self.stream.position(),
                "best_eval": self.best_eval, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "method": self.config.method}

    def save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0), with every rank's RNG state; the best one is never pruned."""
        rngs = gather_objects(rng_state(), self.dist)
        keep = checkpoint_path(self.ckpt_root, self.best_step) if self.load_best and self.best_step else None
        if self.parallel.sharded:  # every rank writes its shards
            if self.dist.is_main:
                remove_stale_staging(self.ckpt_root)
            save_sharded_checkpoint(checkpoint_path(self.ckpt_root, self.step), self.model, self.optimizer,
                                    lambda tmp: write_run_state(tmp, self.scheduler, self.state(), rngs), self.dist)
            if self.dist.is_main:
                prune_checkpoints(self.ckpt_root, self.options.keep_last, keep)
        elif self.dist.is_main:
            save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, self.scheduler, self.state(),
                            self.options.keep_last, rngs, keep=keep)
        barrier(self.dist)

    def resume(self, path: Path) -> None:
        """Continue from checkpoint ``path``."""
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, rank=self.dist.rank,
                                world=self.dist.world, sharded=self.parallel.sharded)
        self.step = state["step"]
        self.stream = RowStream(len(self.train_ds), self.options.seed, state["data"]["epoch"], state["data"]["offset"])
        self.best_eval, self.bad_evals = state["best_eval"], state["bad_evals"]
        self.best_step = state.get("best_step")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to ``total_steps`` (or early stopping), evaluating and checkpointing on their intervals."""
        opts = self.options
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.monitor.start(RunInfo(self.output, self.total_steps, self.step, self.config.objective.name,
                                   self.config.to_dict(), opts.log_every, self._describe,
                                   self.config.objective.reward_curves))
        last: dict[str, float] = {}
        stopped_early, completed = False, False
        eval_loss = None
        t0, tokens = time.perf_counter(), 0
        try:
            if opts.eval_every and self.step == 0:  # the starting point of the eval curve
                self._evaluate_and_record()
            while self.step < self.total_steps and not stopped_early:
                last = self.train_step()
                tokens += last["tokens"]
                record = {"step": self.step, "epoch": self.stream.epoch, **last}
                if self.step % opts.log_every == 0 or self.step == self.total_steps:
                    record["tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
                    t0, tokens = time.perf_counter(), 0
                self.monitor.step(record)
                if self.sampler is not None and opts.sample_every and self.step % opts.sample_every == 0:
                    self.monitor.samples(self.sampler(self.model, self.step))
                saved = False
                if opts.eval_every and self.step % opts.eval_every == 0:
                    eval_loss, stopped_early, saved = self._evaluate_and_record()
                if opts.save_every and self.step % opts.save_every == 0 and not saved:
                    self.save_checkpoint()
            if not (opts.eval_every and self.step % opts.eval_every == 0) and self.eval_ds is not None:
                eval_loss, _, _ = self._evaluate_and_record()
            kept = self._restore_best()
            completed = True
        finally:
            self.monitor.end(completed)
        if kept is not None:
            eval_loss = self.best_eval
        return TrainResult(self.output, self.step, last.get("loss"), eval_loss, stopped_early, peak_memory(self.device),
                           self.history, kept)

    def _evaluate_and_record(self) -> tuple[float | None, bool, bool]:
        """Evaluate, log, track the best evaluation (saving its checkpoint under ``load_best``).

        Returns:
            ``(eval loss, stop early, a checkpoint was saved)``.
        """
        metrics = self.evaluate()
        if "loss" not in metrics:
            return None, False, False
        loss = metrics["loss"]
        self.monitor.eval({"step": self.step, "eval_loss": loss,
                           **{f"eval_{k}": v for k, v in metrics.items() if k != "loss"}})
        if self.step == 0:  # the starting point: a baseline, not a candidate
            return loss, False, False
        if self.best_eval is None or loss < self.best_eval:
            self.best_eval, self.best_step, self.bad_evals = loss, self.step, 0
            if self.load_best:
                self.save_checkpoint()
            return loss, False, self.load_best
        self.bad_evals += 1
        patience = self.options.early_stopping_patience
        return loss, patience is not None and self.bad_evals >= patience, False

    def _restore_best(self) -> int | None:
        """Under ``load_best``, load the best evaluated weights back when the last step is not the best;
        returns the step kept (None when the last step's weights stay)."""
        if not self.load_best or self.best_step is None:
            return None
        if self.best_step != self.step:
            load_trainable(checkpoint_path(self.ckpt_root, self.best_step), self.model, self.optimizer,
                           sharded=self.parallel.sharded)
            if self.dist.is_main:
                write(f"[train] kept the weights of step {self.best_step} (best eval loss {self.best_eval:.4f}) "
                      f"instead of step {self.step}'s (train.load_best)")
        return self.best_step

    def _describe(self, record: dict[str, Any]) -> str:
        """The objective's progress text for a step or eval record."""
        return self.objective.progress({k.removeprefix("eval_"): v for k, v in record.items()})
