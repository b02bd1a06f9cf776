"""The progress line (pyft.train.progress) on tqdm: one plain line per log step off a terminal, a bar
redrawn in place on one, evaluation lines that do not break the bar."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

from pyft.train.monitor import RunInfo
from pyft.train.progress import ProgressLine


def _describe(record: dict[str, Any]) -> str:
    return f"margin {record['rewards/margins']:.2f}" if "rewards/margins" in record else ""


def _records(total: int = 10, log_every: int = 3, start: int = 0) -> list[dict[str, Any]]:
    out = []
    for step in range(start + 1, total + 1):
        r = {"step": step, "epoch": 0, "loss": 1.0 / step, "lr": 2e-4 * step, "grad_norm": 0.5 + step / 1000,
             "tokens": 512, "rewards/margins": step / 10}
        if step % log_every == 0 or step == total:
            r["tokens_per_s"] = 1234.4 * step
        out.append(r)
    return out


def _drive(listener: ProgressLine, run: RunInfo, records: list[dict[str, Any]],
           evals: dict[int, dict[str, Any]]) -> None:
    listener.on_start(run)
    if 0 in evals:
        listener.on_eval(evals[0])
    for r in records:
        listener.on_step(r)
        if r["step"] in evals:
            listener.on_eval(evals[r["step"]])
    listener.on_end([])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_one_plain_line_per_log_step(capsys, tmp_path):
    run = RunInfo(tmp_path, 10, 0, "dpo", {}, 3, _describe)
    evals = {0: {"step": 0, "eval_loss": 2.5, "eval_rewards/margins": 0.0},
             6: {"step": 6, "eval_loss": 1.25, "eval_rewards/margins": 0.456}}
    _drive(ProgressLine(), run, _records(), evals)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\r" not in captured.err and "|" not in captured.err  # no bar fragments
    assert captured.err.splitlines() == [  # what the hand-drawn line printed, minus its bar
        "[eval] step 0: loss 2.5000  margin 0.00",
        "step 3/10  loss 0.3333  lr 0.0006  grad 0.503  3,703 tok/s  margin 0.30",
        "step 6/10  loss 0.1667  lr 0.0012  grad 0.506  7,406 tok/s  margin 0.60",
        "[eval] step 6: loss 1.2500  margin 0.46",
        "step 9/10  loss 0.1111  lr 0.0018  grad 0.509  11,110 tok/s  margin 0.90",
        "step 10/10  loss 0.1000  lr 0.002  grad 0.510  12,344 tok/s  margin 1.00",
    ]


def test_not_a_terminal_sft_eval_shows_perplexity(capsys, tmp_path):
    run = RunInfo(tmp_path, 4, 2, "sft", {}, 2, lambda r: "")
    records = _records(total=4, log_every=2, start=2)
    for r in records:
        del r["rewards/margins"]
    _drive(ProgressLine(), run, records, {4: {"step": 4, "eval_loss": 1.0, "eval_ppl": 2.718281828}})
    assert capsys.readouterr().err.splitlines() == [
        "step 4/4  loss 0.2500  lr 0.0008  grad 0.504  4,938 tok/s",  # a resumed run: steps 3 and 4 only
        "[eval] step 4: loss 1.0000  ppl 2.72",
    ]


def test_terminal_bar_redrawn_in_place(monkeypatch, tmp_path):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    run = RunInfo(tmp_path, 10, 0, "dpo", {}, 3, _describe)
    _drive(ProgressLine(), run, _records(), {6: {"step": 6, "eval_loss": 1.25, "eval_rewards/margins": 0.456}})
    text = term.getvalue()
    lines = text.split("\n")
    # One bar, redrawn with carriage returns, and the evaluation on a line of its own above it.
    assert "\r" in text
    assert "[eval] step 6: loss 1.2500  margin 0.46" in [segment.strip() for line in lines
                                                      for segment in line.split("\r")]
    final = lines[-2].split("\r")[-1]  # the bar as close() left it, then the final newline
    assert lines[-1] == ""
    assert "10/10" in final and "100%" in final
    assert "loss 0.1000  lr 0.002  grad 0.510  12,344 tok/s  margin 1.00" in final
    assert sum("[eval]" in line for line in lines) == 1


def test_terminal_postfix_keeps_the_last_throughput(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    listener = ProgressLine()
    listener.on_start(RunInfo(tmp_path, 10, 0, "dpo", {}, 3, _describe))
    for r in _records()[:4]:  # step 4 is not a log step: no tokens_per_s of its own
        listener.on_step(r)
    assert listener.bar.postfix == "loss 0.2500  lr 0.0008  grad 0.504  3,703 tok/s  margin 0.40"
    listener.on_end([])


def test_terminal_resumed_bar_starts_at_the_checkpoint(monkeypatch, tmp_path):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    run = RunInfo(tmp_path, 10, 7, "sft", {}, 3, lambda r: "")
    listener = ProgressLine()
    listener.on_start(run)
    assert listener.bar is not None and listener.bar.n == 7
    for r in _records(start=7):
        listener.on_step(r)
    assert listener.bar.n == 10
    listener.on_end([])
    assert listener.bar is None
    assert " 7/10" in term.getvalue()


def test_eval_before_any_step_off_terminal(capsys, tmp_path):
    listener = ProgressLine()
    listener.on_start(RunInfo(tmp_path, 5, 0, "rm", {}, 1, lambda r: f"acc {r.get('accuracy', 0):.2f}"))
    listener.on_eval({"step": 0, "eval_loss": 0.6931, "eval_accuracy": 0.5})
    listener.on_end([])
    assert capsys.readouterr().err == "[eval] step 0: loss 0.6931  acc 0.50\n"


@pytest.mark.parametrize("tty", [False, True])
def test_on_end_after_an_exception_closes_the_bar(monkeypatch, tmp_path, tty):
    term = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", term)
    listener = ProgressLine()
    listener.on_start(RunInfo(tmp_path, 10, 0, "sft", {}, 1, lambda r: ""))
    listener.on_step(_records(log_every=1)[0])
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        listener.on_end([])
    assert listener.bar is None
    assert term.getvalue().endswith("\n")
