"""``kill -9`` during checkpoint writes of ``pyft train``, at seeded moments, again and again.

One training run is killed while it writes a checkpoint, resumed with ``train.resume=auto``, killed
again, ... ``PYFT_CRASH_KILLS`` times (default 20), then resumed to the end. After every kill each
``checkpoints/step-*`` must be complete and loadable; the resumed runs need no manual cleanup; the
last one leaves no staging behind, and its final weights equal an uninterrupted run's bit for bit
(CPU, one thread, same seed: the same operations in the same order, so no tolerance is needed).

Starting Python, torch and transformers costs seconds, about ten times a training step here; so
the runs are forked from one server process that imported them once (:data:`SERVER`). Each run is
still a process of its own executing ``pyft train`` (``pyft.cli.main.main``) and dies by SIGKILL.
The model (full fine-tuning of a 2-layer Llama, hidden 256: 3.4 M parameters) makes a checkpoint
about 41 MB (weights, AdamW's two moments), which takes tens of milliseconds to write.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyft.data
from pyft.testing import make_tiny_model
from pyft.train.checkpoint import STEP_PREFIX, load_state

from crashing import ENV
from helpers import CONVERSATIONS, write_jsonl

KILLS = int(os.environ.get("PYFT_CRASH_KILLS", "20"))
SEED = 1303
#: Steps of the run. A run is killed while writing the first checkpoint after the one it resumed
#: from (after step 1 in the first run), so a kill moves the run on by one step only when it lands
#: after the commit (while the oldest checkpoint is deleted), and a drawn moment that falls after the
#: write ended moves it on by one; about 20 % of each in the runs seen.
STEPS = 12 + KILLS
FILES = ["optimizer.json", "optimizer.safetensors", "rng.json", "rng.safetensors", "scheduler.json", "state.json",
         "trainable.safetensors"]
STAGE = ".pyft-stage-"
POLL_S = 0.0005

#: Reads JSON requests on stdin: ``{"argv", "log"}`` forks a child running ``pyft ARGV`` (output to
#: ``log``) and answers its pid; ``{"poll": pid}`` answers its exit code or null; ``{"wait": pid}``
#: waits for it. Nothing runs torch code before forking, so the children start from a clean state.
SERVER = r"""
import json, os, sys, traceback
import matplotlib.pyplot, safetensors.torch, torch, transformers
from transformers.models.llama import modeling_llama
import pyft.cli.main, pyft.train.run
try:
    import torch.utils.tensorboard
except ImportError:
    pass
ended = {}
for line in sys.stdin:
    req = json.loads(line)
    if "argv" in req:
        pid = os.fork()
        if pid == 0:
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            code = 70
            try:
                code = pyft.cli.main.main(req["argv"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        answer = pid
    else:
        pid = req.get("poll", req.get("wait"))
        if pid not in ended:
            done, status = os.waitpid(pid, os.WNOHANG if "poll" in req else 0)
            if done:
                ended[pid] = os.waitstatus_to_exitcode(status)
        answer = ended.get(pid)
    print(json.dumps(answer), flush=True)
"""


class Runs:
    """The fork server (see :data:`SERVER`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=ENV, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.running: set[int] = set()

    def _ask(self, request: dict) -> int | None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self.proc.wait()})")
        return json.loads(line)

    def start(self, argv: list[str], log: Path) -> int:
        pid = self._ask({"argv": argv, "log": str(log)})
        self.running.add(pid)
        return pid

    def poll(self, pid: int) -> int | None:
        return self._ask({"poll": pid})

    def wait(self, pid: int) -> int:
        self.running.discard(pid)
        return self._ask({"wait": pid})

    def close(self) -> None:
        for pid in sorted(self.running):  # a failed test's run: stop it
            os.kill(pid, signal.SIGKILL)
            self.wait(pid)
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def task(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="llama", hidden_size=256,
                            intermediate_size=512)
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(4)])
    pyft.data.prepare(src, model, base / "data", seed=0)
    runs = Runs()
    yield {"base": base, "model": model, "data": base / "data", "runs": runs}
    runs.close()


def _argv(task, out: Path) -> list[str]:
    return ["train", f"model={task['model']}", f"data={task['data']}", f"output={out}", "method=full",
            f"train.max_steps={STEPS}", "train.batch_size=2", "train.lr=1e-3", "train.seed=5", "train.save_every=1",
            "train.keep_last=2", "train.log_every=1000", "train.precision=fp32", "train.resume=auto"]


def _staging(ckpts: Path, pid: int | None = None) -> list[str]:
    """Staging entries in ``ckpts`` (of process ``pid`` only, if given)."""
    try:
        names = os.listdir(ckpts)
    except FileNotFoundError:
        return []
    mark = STAGE if pid is None else f"{STAGE}{pid}-"
    return sorted(n for n in names if mark in n)


def _step_of(name: str) -> int:
    """The step of a checkpoint or of its staging (``.step-000012.pyft-stage-...``)."""
    return int(name.lstrip(".")[len(STEP_PREFIX):].split(".")[0])


def _complete(ckpts: Path) -> list[int]:
    """Steps of the checkpoints, each checked complete and loadable."""
    from safetensors.torch import load_file

    steps = []
    for d in sorted(ckpts.glob(f"{STEP_PREFIX}*")) if ckpts.is_dir() else []:
        assert sorted(p.name for p in d.iterdir()) == FILES, d
        assert json.loads((d / "state.json").read_text())["step"] == _step_of(d.name), d
        assert load_file(str(d / "trainable.safetensors")), d
        for name in ("optimizer", "scheduler", "rng"):
            load_state(d, name)
        steps.append(_step_of(d.name))
    return steps


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _reference(task) -> tuple[Path, float]:
    """Run uninterrupted; return its output and the median time a checkpoint takes to write: from its
    staging appearing to its being in place with the oldest checkpoint deleted (no staging left)."""
    runs, out = task["runs"], task["base"] / "reference"
    ckpts, log = out / "checkpoints", task["base"] / "reference.log"
    pid = runs.start(_argv(task, out), log)
    seen: dict[int, float] = {}
    done: dict[int, float] = {}
    while runs.poll(pid) is None:
        now = time.monotonic()
        staging = _staging(ckpts, pid)
        for name in staging:
            seen.setdefault(_step_of(name), now)
        for step in seen:
            if step not in done and not staging and (ckpts / f"{STEP_PREFIX}{step:06d}").is_dir():
                done[step] = now
        time.sleep(POLL_S)
    assert runs.wait(pid) == 0, _log_tail(log)
    writes = [done[s] - seen[s] for s in done]
    assert len(writes) >= STEPS // 2, f"saw {len(writes)} of {STEPS} checkpoint writes"
    return out, statistics.median(writes)


def test_kill_during_checkpoint_writes_then_resume_equals_an_uninterrupted_run(task):
    from safetensors.torch import load_file

    runs, rng = task["runs"], random.Random(SEED)
    reference, write_s = _reference(task)
    out = task["base"] / "crashed"
    ckpts, argv = out / "checkpoints", _argv(task, out)
    kills, missed, pruning = 0, 0, 0
    for launch in range(KILLS):
        log = task["base"] / f"run{launch}.log"
        latest = max(_complete(ckpts), default=0)
        pid = runs.start(argv, log)
        killed = False
        while not killed:
            # Wait for this run to start writing a checkpoint (after at least one complete one) ...
            while True:
                if runs.poll(pid) is not None:
                    pytest.fail(f"run {launch} ended before its kill ({kills} kills, {missed} missed; raise "
                                f"STEPS):\n{_log_tail(log)}")
                mine = [n for n in _staging(ckpts, pid) if _step_of(n) > max(latest, 1)]
                if mine:
                    break
                time.sleep(POLL_S)
            # ... then kill it a seeded fraction of a write later, if it is still writing.
            time.sleep(rng.random() * write_s)
            if _staging(ckpts, pid):
                os.kill(pid, signal.SIGKILL)
                killed = True
                pruning += (ckpts / f"{STEP_PREFIX}{_step_of(mine[0]):06d}").is_dir()
            else:
                missed += 1
                latest = _step_of(mine[0])
        assert runs.wait(pid) == -signal.SIGKILL
        kills += 1
        _complete(ckpts)  # every checkpoint complete and loadable
    log = task["base"] / "final.log"
    pid = runs.start(argv, log)
    assert runs.wait(pid) == 0, _log_tail(log)
    assert _complete(ckpts) == [STEPS - 1, STEPS]
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*") if STAGE in p.name]
    assert leftovers == []
    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert a[k].equal(b[k]), k
    # Records a killed run logged past its last checkpoint are dropped on resume: one record per step.
    def logged(run: Path) -> list[tuple[int, list[str]]]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], sorted(r)) for r in records]

    assert logged(out) == logged(reference)
    print(f"{kills} kills during checkpoint writes ({pruning} after the commit, while deleting the oldest; "
          f"{missed} drawn moments fell after a write ended); median write {write_s * 1e3:.0f} ms")
