"""The training loop: one readable loop for every method (SFT, DPO family, KTO, ORPO, SimPO, reward models).

Per optimizer step: take ``batch_size × grad_accum`` rows in a seeded per-epoch order, sum the
objective's normalisers over all of them (target tokens for SFT, pairs for DPO), run each
micro-batch and back-propagate its loss divided by those totals (so accumulation equals one big
batch, whatever the sequence lengths), clip, step, schedule. What a step optimises comes from a
:class:`~pyft.train.objective.Objective`. Evaluation, checkpoints (exact resume: parameters,
optimizer, scheduler, RNG, data position) and metrics follow their own intervals.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyft._atomic import atomic_file
from pyft.data import PreparedDataset
from pyft.errors import ConfigError, TrainingError
from pyft.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from pyft.train.config import TrainConfig
from pyft.train.distributed import DistInfo, all_reduce_grads, all_reduce_sum, barrier, gather_objects
from pyft.train.checkpoint import rng_state
from pyft.train.objective import Objective, SftObjective
from pyft.train.optim import build_optimizer, build_scheduler, warmup_steps


@dataclass
class TrainResult:
    """What a finished run produced."""

    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    stopped_early: bool
    peak_memory_bytes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA device that supports it, else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocated CUDA memory on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class RowStream:
    """Rows in a seeded random order per epoch, resumable from ``(epoch, offset)``."""

    def __init__(self, n_rows: int, seed: int, epoch: int = 0, offset: int = 0) -> None:
        self.n_rows, self.seed, self.epoch, self.offset = n_rows, seed, epoch, offset
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n_rows, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        """The next ``k`` row indices, continuing into the next epoch when this one ends."""
        out: list[int] = []
        while len(out) < k:
            if self.offset >= self.n_rows:
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            n = min(k - len(out), self.n_rows - self.offset)
            out.extend(self._order[self.offset : self.offset + n])
            self.offset += n
        return out

    def position(self) -> dict[str, int]:
        """Where the stream is (for checkpoints)."""
        return {"epoch": self.epoch, "offset": self.offset}


def drop_metrics_after(path: Path, step: int) -> None:
    """Keep only the records of ``path`` (metrics JSONL) logged at or before ``step``.

    A run resumed from checkpoint ``step`` logs the later steps again; the records a killed run wrote
    past its last checkpoint (and a line cut short by the kill) must go, or curves would hold two runs.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


class Trainer:
    """Holds the model, data, optimizer and state of one run. Use :func:`train`."""

    def __init__(self, config: TrainConfig, model: nn.Module, train_ds: PreparedDataset,
                 eval_ds: PreparedDataset | None, pad_token_id: int, dist_info: DistInfo | None = None,
                 progressive: Any = None, objective: Objective | None = None) -> None:
        self.cfg = config
        self.dist = dist_info or DistInfo()
        self.t = config.train
        self.model = model
        self.train_ds, self.eval_ds = train_ds, eval_ds
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(self.t.precision, self.device)
        self.objective = objective or SftObjective(model, train_ds, pad_token_id, self.t.chunk_tokens)
        rows_per_step = self.t.batch_size * self.t.grad_accum * self.dist.world
        steps_per_epoch = max(1, math.ceil(len(train_ds) / rows_per_step))
        self.total_steps = self.t.max_steps or max(1, math.ceil(self.t.epochs * steps_per_epoch))
        self._optimized = [p for p in model.parameters() if p.requires_grad]
        self.progressive = progressive
        self.optimizer = build_optimizer(model, self.t.lr, self.t.weight_decay, tuple(self.t.betas), self.t.eps,
                                         self.t.optim)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup_steps(self.t.warmup, self.total_steps),
                                         self.t.schedule)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.stream = RowStream(len(train_ds), self.t.seed)
        self.step = 0
        self.best_eval: float | None = None
        self.bad_evals = 0
        self.output = Path(config.output)
        self.ckpt_root = self.output / "checkpoints"
        self.history: list[dict[str, Any]] = []
        self.tb = None
        self.last_eval: dict[str, float] = {}
        self._grad_avg: float | None = None
        self._last_grad_warning = -(10**9)
        # L2-SP: pull full fine-tuning toward the pretrained weights, lambda * ||theta - theta_0||^2.
        self.l2sp = config.freeze.l2sp if config.tuning_kind == "full" else 0.0
        self.anchor = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                       if self.l2sp > 0 else {})

    # -- pieces -----------------------------------------------------------------------------
    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else self._to_device(v) if isinstance(v, dict) else v
                for k, v in batch.items()}

    def _batches(self, ds: PreparedDataset, rows: list[int], split: str) -> list[dict[str, Any]]:
        out = []
        for i in range(0, len(rows), self.t.batch_size):
            chunk = rows[i : i + self.t.batch_size]
            out.append(self._to_device(self.objective.collate([ds[j] for j in chunk], chunk, split)))
        return out

    def _micro_batches(self) -> list[dict[str, Any]]:
        per_rank = self.t.batch_size * self.t.grad_accum
        rows = self.stream.take(per_rank * self.dist.world)[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
        return self._batches(self.train_ds, rows, "train")

    def _totals(self, batches: list[dict[str, Any]], agree_keys: bool = False) -> dict[str, float]:
        """The objective's normalisers summed over ``batches`` and all ranks."""
        totals: dict[str, float] = {}
        for b in batches:
            for k, v in self.objective.counts(b).items():
                totals[k] = totals.get(k, 0) + v
        return self._reduce_sums(totals, agree_keys)

    def _reduce_sums(self, sums: dict[str, float], agree_keys: bool = False) -> dict[str, float]:
        """Sum each entry over ranks. Training steps give every rank the same keys; in evaluation a rank
        may hold no batch, so ``agree_keys`` first gathers the union of the keys."""
        if not self.dist.enabled:
            return dict(sorted(sums.items()))
        keys = sorted(set().union(*gather_objects(sorted(sums), self.dist))) if agree_keys else sorted(sums)
        return {k: all_reduce_sum(sums.get(k, 0.0), self.dist, self.device) for k in keys}

    def accumulate_gradients(self) -> tuple[dict[str, float], int]:
        """Back-propagate one optimizer step's worth of micro-batches.

        Returns:
            ``(metrics, tokens)``: the step's metrics (``loss`` is the step loss, e.g. the mean
            token loss for SFT) and how many tokens it trained on (all ranks).
        """
        self.model.train()
        self.objective.training = True
        batches = self._micro_batches()
        totals = self._totals(batches)  # normalise by the whole step: all micro-batches on all ranks
        sums: dict[str, float] = {}
        for b in batches:
            with self._autocast():
                loss, part = self.objective.loss(self.model, b, totals)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        all_reduce_grads([p for g in self.optimizer.param_groups for p in g["params"]], self.dist)
        return self.objective.finalize(self._reduce_sums(sums), totals), int(totals.get("tokens", 0))

    def _apply_progressive_unfreezing(self) -> None:
        if self.progressive is None:
            return
        frozen = {id(p) for p in self.progressive(self.model, self.cfg, self.step)}
        for p in self._optimized:
            p.requires_grad_(id(p) not in frozen)

    def train_step(self) -> dict[str, float]:
        """One optimizer update; returns its metrics."""
        self._apply_progressive_unfreezing()
        step_metrics, n_tokens = self.accumulate_gradients()
        loss_sum = step_metrics["loss"]
        terms = [((p - self.anchor[n]) ** 2).sum() for n, p in self.model.named_parameters()
                 if n in self.anchor and p.requires_grad]
        if terms:  # L2-SP, once per step (identical on every rank, so after the all-reduce)
            penalty = self.l2sp * torch.stack(terms).sum()
            (self.scaler.scale(penalty) if self.scaler else penalty).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.t.max_grad_norm if self.t.max_grad_norm else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        # fp16: scaled gradients that overflow are what the loss scaler handles: it skips the update
        # and halves the scale (as torch.amp and HF's Trainer do). Anything else non-finite stops.
        overflow = self.scaler is not None and math.isfinite(loss_sum) and not math.isfinite(grad_norm)
        if overflow and self.scaler.get_scale() < 1.0:
            overflow = False  # the scale has collapsed: the gradients are non-finite themselves
        if not overflow and (not math.isfinite(loss_sum) or not math.isfinite(grad_norm)):
            last = list_checkpoints(self.ckpt_root)
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"non-finite {'loss' if not math.isfinite(loss_sum) else 'gradient norm'} at step {self.step + 1}; "
                f"training stopped before applying it ({where}). Lower train.lr or use fp32/bf16."
            )
        if not overflow:
            self._gradient_health(grad_norm)
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
        metrics = {**step_metrics, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens}
        if overflow:
            print(f"[warning] step {self.step}: fp16 gradients overflowed; update skipped, loss scale lowered to "
                  f"{self.scaler.get_scale():g}", file=sys.stderr)
            metrics["skipped"] = 1.0
        return metrics

    @torch.no_grad()
    def evaluate_metrics(self) -> dict[str, float]:
        """The objective's metrics over the validation split (``loss`` first; empty without one).

        Batches are built once for the whole split so losses are normalised by the split's totals.
        """
        if self.eval_ds is None or len(self.eval_ds) == 0:
            return {}
        self.model.eval()
        self.objective.training = False
        mine = list(range(self.dist.rank, len(self.eval_ds), self.dist.world))
        batches = self._batches(self.eval_ds, mine, "validation")
        totals = self._totals(batches, agree_keys=True)
        sums: dict[str, float] = {}
        for b in batches:
            with self._autocast():
                _, part = self.objective.loss(self.model, b, totals)
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        return self.objective.finalize(self._reduce_sums(sums, agree_keys=True), totals)

    def evaluate(self) -> float | None:
        """Mean loss over the validation split (None without one); all metrics in :attr:`last_eval`."""
        self.last_eval = self.evaluate_metrics()
        return self.last_eval.get("loss")

    def state(self) -> dict[str, Any]:
        """Loop state saved with checkpoints."""
        return {"step": self.step, "total_steps": self.total_steps, "data": self.stream.position(),
                "best_eval": self.best_eval, "bad_evals": self.bad_evals, "method": self.cfg.method}

    def save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0), with every rank's RNG state."""
        rngs = gather_objects(rng_state(), self.dist)
        if self.dist.is_main:
            save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, self.scheduler, self.state(),
                            self.t.keep_last, rngs)
        barrier(self.dist)

    def resume(self, path: Path) -> None:
        """Continue from checkpoint ``path``."""
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, rank=self.dist.rank)
        self.step = state["step"]
        self.stream = RowStream(len(self.train_ds), self.t.seed, state["data"]["epoch"], state["data"]["offset"])
        self.best_eval, self.bad_evals = state["best_eval"], state["bad_evals"]

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        main = self.dist.is_main
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
            try:  # TensorBoard when it is installed
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.output / "tensorboard"))
            except ImportError:
                self.tb = None
        if main and self.step > 0:
            drop_metrics_after(self.output / "metrics.jsonl", self.step)
        # Line-buffered: a killed run loses no record of a step its checkpoints hold.
        metrics = (open(self.output / "metrics.jsonl", "a", encoding="utf-8", buffering=1) if main
                   else open(os.devnull, "w"))
        t0, tokens_since = time.perf_counter(), 0
        last: dict[str, float] = {}
        stopped_early = False
        eval_loss = None
        try:
            if self.t.eval_every and self.step == 0:  # the starting point of the eval curve
                self._after_eval(self.evaluate(), metrics)
            while self.step < self.total_steps:
                last = self.train_step()
                tokens_since += last["tokens"]
                record = {"step": self.step, "epoch": self.stream.epoch, **last}
                if self.step % self.t.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    record["tokens_per_s"] = tokens_since / max(elapsed, 1e-9)
                    t0, tokens_since = time.perf_counter(), 0
                    if main:
                        self._print(record)
                metrics.write(json.dumps(record) + "\n")
                self.history.append(record)
                self._tensorboard(record)
                if self.t.eval_every and self.step % self.t.eval_every == 0:
                    eval_loss = self.evaluate()
                    stopped_early = self._after_eval(eval_loss, metrics)
                if self.t.save_every and self.step % self.t.save_every == 0:
                    self.save_checkpoint()
                if stopped_early:
                    break
            if not (self.t.eval_every and self.step % self.t.eval_every == 0) and self.eval_ds is not None:
                eval_loss = self.evaluate()
                self._after_eval(eval_loss, metrics)
        finally:
            metrics.close()
            if self.tb is not None:
                self.tb.close()
        if main:
            self._plot()
        return TrainResult(self.output, self.step, last.get("loss"), eval_loss, stopped_early, peak_memory(self.device),
                           self.history)

    def _after_eval(self, eval_loss: float | None, metrics) -> bool:
        if eval_loss is None:
            return False
        record = {"step": self.step, "eval_loss": eval_loss}
        if self.cfg.objective == "sft":
            record["eval_ppl"] = math.exp(min(eval_loss, 50.0))
        record.update({f"eval_{k}": v for k, v in self.last_eval.items() if k != "loss"})
        metrics.write(json.dumps(record) + "\n")
        self.history.append(record)
        self._tensorboard(record)
        self._overfitting_alarm()
        if self.dist.is_main:
            if sys.stderr.isatty():
                print(file=sys.stderr)
            extra = (f"ppl {record['eval_ppl']:.2f}" if "eval_ppl" in record
                     else self.objective.progress(self.last_eval))
            print(f"[eval] step {self.step}: loss {eval_loss:.4f}  {extra}", file=sys.stderr)
        if self.best_eval is None or eval_loss < self.best_eval:
            self.best_eval, self.bad_evals = eval_loss, 0
            return False
        self.bad_evals += 1
        patience = self.t.early_stopping_patience
        return patience is not None and self.bad_evals >= patience

    def _gradient_health(self, grad_norm: float) -> None:
        """Warn about exploding (10x the running average) or vanishing (< 1e-8) gradient norms."""
        avg = self._grad_avg
        self._grad_avg = grad_norm if avg is None else 0.9 * avg + 0.1 * grad_norm
        if not self.dist.is_main or self.step < 10 or self.step - self._last_grad_warning < 50:
            return
        message = None
        if avg and grad_norm > 10 * avg:
            message = f"exploding gradients: norm {grad_norm:.3g} is {grad_norm / avg:.0f}x the recent average"
        elif grad_norm < 1e-8:
            message = f"vanishing gradients: norm {grad_norm:.3g}; check the learning rate and the loss mask"
        if message:
            self._last_grad_warning = self.step
            print(f"[warning] step {self.step + 1}: {message}", file=sys.stderr)

    def _overfitting_alarm(self) -> None:
        """Warn when eval loss rose over the last two evaluations while train loss fell."""
        evals = [(r["step"], r["eval_loss"]) for r in self.history if "eval_loss" in r]
        if not self.dist.is_main or len(evals) < 3 or not (evals[-1][1] > evals[-2][1] > evals[-3][1]):
            return
        def mean_train(lo: int, hi: int) -> float | None:
            xs = [r["loss"] for r in self.history if "loss" in r and lo < r["step"] <= hi]
            return sum(xs) / len(xs) if xs else None
        before, now = mean_train(evals[-3][0], evals[-2][0]), mean_train(evals[-2][0], evals[-1][0])
        if before is not None and now is not None and now < before:
            print(f"[warning] possible overfitting: eval loss rose for two evaluations ({evals[-3][1]:.4f} -> "
                  f"{evals[-1][1]:.4f}) while train loss fell; consider fewer epochs or early stopping",
                  file=sys.stderr)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{'eval' if k.startswith('eval') else 'train'}/{k}", v, record["step"])

    def _plot(self) -> None:
        try:
            from pyft.train.plots import plot_losses, plot_rewards
        except ImportError:
            return
        try:
            plot_losses(self.output / "metrics.jsonl", self.output / "loss.png")
            if self.cfg.objective != "sft":
                plot_rewards(self.output / "metrics.jsonl", self.output / "rewards.png")
        except ImportError:
            print("[note] matplotlib is not installed: no loss.png (pip install matplotlib)", file=sys.stderr)

    def _print(self, r: dict[str, Any]) -> None:
        """The progress line: a bar redrawn in place on a terminal, one line per log step otherwise."""
        done = r["step"] / self.total_steps
        bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
        line = (f"[{bar}] step {r['step']}/{self.total_steps}  loss {r['loss']:.4f}  lr {r['lr']:.3g}  "
                f"grad {r['grad_norm']:.3f}  {r.get('tokens_per_s', 0):,.0f} tok/s")
        extra = self.objective.progress(r)
        if extra:
            line += "  " + extra
        if sys.stderr.isatty():
            end = "\n" if r["step"] == self.total_steps else ""
            print("\r" + line, end=end, file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr)
