"""Watching a run: metrics JSONL, progress line, trackers (TensorBoard, W&B, MLflow), plots and alarms.

The loop reports two events, a finished optimizer step and a finished evaluation, to a
:class:`Monitor`, which keeps the run's history and passes each record to its listeners (objects
with the methods of :class:`Listener`). Listeners run on rank 0 only; nothing here changes training.

Records: a step record holds ``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``, ``tokens``, the
objective's metrics (e.g. ``rewards/margins``), ``grad_norm/<group>`` per layer group, ``skipped``
(fp16 overflow) and, on log steps, ``tokens_per_s``. An eval record holds ``step``, ``eval_loss``
and ``eval_<metric>`` for the objective's other metrics.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pyft._atomic import atomic_file


@dataclass
class RunInfo:
    """What listeners learn when a run starts.

    Attributes:
        output: the run's output directory (exists).
        total_steps: optimizer steps the run will take.
        start_step: 0, or the checkpoint step a resumed run continues from.
        objective: the method's name (``sft``, ``dpo``, ...).
        config: the whole resolved config as plain data (``TrainConfig.to_dict()``).
        log_every: log steps are the multiples of this, and the last step.
        describe: objective-specific text for a record (``margin 0.31  acc 0.75``), maybe ``""``.
        reward_curves: the objective logs rewards (``rewards.png`` is drawn).
    """

    output: Path
    total_steps: int
    start_step: int
    objective: str
    config: dict[str, Any]
    log_every: int
    describe: Callable[[dict[str, Any]], str] = lambda record: ""
    reward_curves: bool = False


class Listener(Protocol):
    """Receives a run's events (rank 0 only)."""

    def on_start(self, run: RunInfo) -> None: ...

    def on_step(self, record: dict[str, Any]) -> None: ...

    def on_eval(self, record: dict[str, Any]) -> None: ...

    def on_end(self, artifacts: list[Path]) -> None:
        """Once, after the loop (also after an exception); ``artifacts`` are the PNGs drawn."""
        ...


def warn(message: str) -> None:
    """Print a ``[warning]`` line to stderr (without breaking a progress bar shown there)."""
    from pyft.train.progress import write

    write(f"[warning] {message}")


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


class MetricsFile:
    """``output/metrics.jsonl``: one JSON record per step and per evaluation, line-buffered so a killed
    run loses no record of a step its checkpoints hold; a resumed run first drops later records."""

    def __init__(self) -> None:
        self.file: Any = None
        self.path: Path | None = None

    def on_start(self, run: RunInfo) -> None:
        self.path = run.output / "metrics.jsonl"
        if run.start_step > 0:
            drop_metrics_after(self.path, run.start_step)
        self.file = open(self.path, "a", encoding="utf-8", buffering=1)

    def on_step(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")

    on_eval = on_step

    def on_end(self, artifacts: list[Path]) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class GradientAlarm:
    """Warns about exploding (10x the running average) or vanishing (< 1e-8) gradient norms, per layer
    group when the records carry ``grad_norm/<group>``, at most once per 50 steps and not in the first 10."""

    def __init__(self) -> None:
        from pyft.train.grad_norms import GradientHealth

        self.health = GradientHealth()

    def on_start(self, run: RunInfo) -> None:
        pass

    def on_step(self, record: dict[str, Any]) -> None:
        if "skipped" in record:  # an fp16 overflow the loss scaler handled
            return
        groups = {k.removeprefix("grad_norm/"): v for k, v in record.items() if k.startswith("grad_norm/")}
        # The health check counts updates completed before this one.
        message = self.health.update(record["step"] - 1, groups or {"all parameters": record["grad_norm"]})
        if message:
            warn(f"step {record['step']}: {message}")

    def on_eval(self, record: dict[str, Any]) -> None:
        pass

    def on_end(self, artifacts: list[Path]) -> None:
        pass


class OverfittingAlarm:
    """Warns when eval loss rose over the last two evaluations while the mean train loss fell."""

    def __init__(self) -> None:
        self.train: list[tuple[int, float]] = []
        self.evals: list[tuple[int, float]] = []

    def on_start(self, run: RunInfo) -> None:
        pass

    def on_step(self, record: dict[str, Any]) -> None:
        self.train.append((record["step"], record["loss"]))

    def on_eval(self, record: dict[str, Any]) -> None:
        self.evals.append((record["step"], record["eval_loss"]))
        e = self.evals
        if len(e) < 3 or not (e[-1][1] > e[-2][1] > e[-3][1]):
            return
        before, now = self._mean_train(e[-3][0], e[-2][0]), self._mean_train(e[-2][0], e[-1][0])
        if before is not None and now is not None and now < before:
            warn(f"possible overfitting: eval loss rose for two evaluations ({e[-3][1]:.4f} -> {e[-1][1]:.4f}) while "
                 f"train loss fell; consider fewer epochs or early stopping")

    def _mean_train(self, lo: int, hi: int) -> float | None:
        xs = [loss for step, loss in self.train if lo < step <= hi]
        return sum(xs) / len(xs) if xs else None

    def on_end(self, artifacts: list[Path]) -> None:
        pass


def draw_plots(run: RunInfo) -> list[Path]:
    """``loss.png`` (and ``rewards.png`` for objectives with rewards) from ``metrics.jsonl``; the PNGs drawn."""
    from pyft.train.plots import plot_losses, plot_rewards

    metrics = run.output / "metrics.jsonl"
    if not metrics.is_file():
        return []
    try:
        drawn = [plot_losses(metrics, run.output / "loss.png")]
        if run.reward_curves:
            drawn.append(plot_rewards(metrics, run.output / "rewards.png"))  # None when nothing was logged
    except ImportError:
        print("[note] matplotlib is not installed: no loss.png (pip install matplotlib)", file=sys.stderr)
        return []
    return [Path(p) for p in drawn if p is not None]


@dataclass
class Monitor:
    """The run's history and its listeners (none on ranks other than 0)."""

    listeners: list[Any] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    run: RunInfo | None = None

    def start(self, run: RunInfo) -> None:
        self.run = run
        for listener in self.listeners:
            listener.on_start(run)

    def step(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        for listener in self.listeners:
            listener.on_step(record)

    def eval(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        for listener in self.listeners:
            listener.on_eval(record)

    def samples(self, record: dict[str, Any]) -> None:
        """Generated samples (``{"step", "samples": [{"prompt", "completion"}]}``) for listeners that show
        text (those with an ``on_samples`` method)."""
        for listener in self.listeners:
            hook = getattr(listener, "on_samples", None)
            if hook is not None:
                hook(record)

    def end(self, completed: bool = True) -> None:
        """Close the metrics file, draw the plots (after a completed run), then end every listener."""
        metrics = [x for x in self.listeners if isinstance(x, MetricsFile)]
        for listener in metrics:
            listener.on_end([])
        artifacts = draw_plots(self.run) if completed and self.run is not None and self.listeners else []
        errors = []
        for listener in self.listeners:
            if listener in metrics:
                continue
            try:
                listener.on_end(artifacts)
            except Exception as e:  # every tracker gets closed even when one fails
                errors.append(e)
        if errors:
            raise errors[0]


def build_monitor(report_to: Any, output: Path, is_main: bool) -> Monitor:
    """The monitor of a run: on rank 0 the metrics file, the progress line, the trackers of
    ``train.report_to`` and the gradient and overfitting alarms; elsewhere only the history."""
    if not is_main:
        return Monitor()
    from pyft.train.progress import ProgressLine
    from pyft.train.trackers import tracker_listeners

    return Monitor([MetricsFile(), ProgressLine(), *tracker_listeners(report_to, output), GradientAlarm(),
                    OverfittingAlarm()])
