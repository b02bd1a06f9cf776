"""The progress line of a training run, on tqdm.

On a terminal, one bar redrawn in place: steps done, elapsed/remaining time, and a postfix with the
latest loss, learning rate, gradient norm, tokens per second and the objective's own figures
(``margin 0.31  acc 0.75``). When stderr is not a terminal (a log file, a CI job, ``nohup``), no
bar at all: exactly one plain line per log step (``train.log_every``), so logs stay greppable::

    step 30/100  loss 1.2345  lr 0.0002  grad 0.123  1,234 tok/s  margin 0.31  acc 0.75

Evaluation lines (``[eval] step 30: loss 1.1000  ppl 3.00``) are written through :func:`write`,
which clears the bar, prints the line and redraws the bar below it; warnings printed while a bar
is shown should use :func:`write` too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

    from pyft.train.monitor import RunInfo


def write(message: str) -> None:
    """Print ``message`` on stderr without breaking a progress bar shown there."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def step_text(record: dict[str, Any], total_steps: int, extra: str = "") -> str:
    """The plain progress text of a step record (``step 3/10  loss 1.2345  lr 0.0002 ...``)."""
    text = (f"step {record['step']}/{total_steps}  loss {record['loss']:.4f}  lr {record['lr']:.3g}  "
            f"grad {record['grad_norm']:.3f}  {record.get('tokens_per_s', 0):,.0f} tok/s")
    return f"{text}  {extra}" if extra else text


def eval_text(record: dict[str, Any], extra: str = "") -> str:
    """The line of an evaluation record: ``[eval] step 30: loss 1.1000  ppl 3.00`` (the objective's
    figures, ``extra``, when it has any; else the perplexity when there is one)."""
    if "eval_ppl" in record and not extra:
        extra = f"ppl {record['eval_ppl']:.2f}"
    return f"[eval] step {record['step']}: loss {record['eval_loss']:.4f}  {extra}".rstrip()


class ProgressLine:
    """A :class:`~pyft.train.monitor.Listener` that shows training progress on stderr.

    Whether stderr is a terminal is decided once, when the run starts.
    """

    def __init__(self) -> None:
        self.run: RunInfo | None = None
        self.bar: tqdm | None = None
        self._tokens_per_s = 0.0

    def on_start(self, run: RunInfo) -> None:
        self.run = run
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.start_step, file=sys.stderr, unit="step",
                            dynamic_ncols=True, leave=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")

    def on_step(self, record: dict[str, Any]) -> None:
        run = self.run
        assert run is not None, "on_start first"
        log_step = "tokens_per_s" in record  # the loop measures throughput on log steps only
        if log_step:
            self._tokens_per_s = record["tokens_per_s"]
        if self.bar is None:
            if log_step:
                print(step_text(record, run.total_steps, run.describe(record)), file=sys.stderr, flush=True)
            return
        postfix = (f"loss {record['loss']:.4f}  lr {record['lr']:.3g}  grad {record['grad_norm']:.3f}  "
                   f"{self._tokens_per_s:,.0f} tok/s")
        extra = run.describe(record)
        self.bar.set_postfix_str(f"{postfix}  {extra}" if extra else postfix, refresh=False)
        self.bar.update(record["step"] - self.bar.n)

    def on_eval(self, record: dict[str, Any]) -> None:
        run = self.run
        assert run is not None, "on_start first"
        # The objective describes its metrics by their training names (``rewards/margins``).
        extra = run.describe({k[len("eval_"):]: v for k, v in record.items() if k.startswith("eval_")})
        write(eval_text(record, extra))

    def on_end(self, artifacts: list[Path]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
