"""Kill a CLI command while it writes, and compare what it leaves behind (tests/test_safety_*.py).

An output is written through staging entries beside it (``.NAME.pyft-stage-PID-RAND``; before issue
13, ``.NAME.tmp-PID``, ``.NAME.old`` and ``NAME.partial``): any entry of the output's parent
directory whose name starts with ``.NAME.`` or ``NAME.`` counts as staging. The tests put each
output alone in its own parent directory, so nothing else there can match.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent

#: The subprocesses see one thread each (the machine's cores are shared), never the network.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYFT_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}

#: Seconds between two looks at the output's parent directory while waiting for staging, and at the
#: output while waiting for the new one to be renamed into place (deleting the old one afterwards
#: takes milliseconds).
POLL_S, SWAP_POLL_S = 0.001, 0.0001


def command(tool: str, *args: str | os.PathLike[str]) -> list[str]:
    """The console script ``tool`` (``pyft``, ``pyft-merge``, ``pyft-export``) of this venv with ``args``."""
    return [str(BIN / tool), *map(os.fspath, args)]


def snapshot(path: Path) -> dict[str, str] | None:
    """``{relative path: sha256}`` of every file under ``path`` (``{"": sha256}`` for a file), ``None`` if
    it does not exist. Two outputs are the same complete output when their snapshots are equal."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def staging_entries(out: Path) -> list[str]:
    """Names in ``out``'s parent directory that look like staging of ``out``."""
    try:
        names = os.listdir(out.parent)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith((f".{out.name}.", f"{out.name}.")))


def run(cmd: Sequence[str], timeout: float = 120, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to the end. ``limit_bytes``: the largest file it may write (``RLIMIT_FSIZE``, with
    ``SIGXFSZ`` ignored so that a larger write fails with ``EFBIG`` instead of killing it)."""
    return subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if limit_bytes is None else _file_size_limit(limit_bytes))


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@dataclass
class Outcome:
    """How one run went: ``triggered`` whether the moment that starts the countdown to the kill was
    seen, ``write_s`` from it to the exit (or the kill), ``killed`` whether the run was still going
    when SIGKILL was sent."""

    triggered: bool
    write_s: float
    killed: bool
    returncode: int
    stderr: str


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def run_until(cmd: Sequence[str], out: Path, delay_s: float | None, *, after_swap: bool = False,
              timeout: float = 120) -> Outcome:
    """Run ``cmd`` and SIGKILL it ``delay_s`` after a trigger (``None``: let it finish, to measure how
    long it writes). The trigger: a new staging entry of ``out`` appears (one not there before, such
    as a dead run's), or with ``after_swap``, ``out`` becomes another file or directory (the new output
    has been renamed into place; the old one may still be being deleted). ``after_swap`` polls
    every 0.1 ms, to kill within that short window. A run that ends first is not killed."""
    before = set(staging_entries(out))
    old_inode = _inode(out)

    def triggered() -> bool:
        if after_swap:
            return _inode(out) not in (None, old_inode)
        return bool(set(staging_entries(out)) - before)

    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    seen: float | None = None
    killed = False
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - start > timeout:
                raise TimeoutError(f"{cmd}: still running after {timeout} s")
            if seen is None and triggered():
                seen = now
            if seen is not None and delay_s is not None:
                time.sleep(max(0.0, seen + delay_s - time.monotonic()))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                break
            time.sleep(SWAP_POLL_S if after_swap else POLL_S)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    end = time.monotonic()
    return Outcome(seen is not None, end - seen if seen is not None else 0.0, killed, proc.returncode, stderr)


@dataclass(frozen=True)
class Inputs:
    """What the commands read: a tokenizer, a base model, two LoRA adapters of it, a chat dataset."""

    root: Path
    tokenizer: Path
    base: Path
    adapters: tuple[Path, Path]
    data: Path


def build_inputs(root: Path, *, hidden_size: int, intermediate_size: int, rows: int) -> Inputs:
    """Build :class:`Inputs` under ``root``: a 4-layer Llama of the given width (float32; hidden 512 and
    intermediate 1408 make a 68 MB model), rank-8 adapters on every linear layer with random B (so that
    merging changes every weight), and ``rows`` distinct conversations."""
    import torch
    from helpers import CONVERSATIONS, write_jsonl

    import pyft
    from pyft.peft import LoraConfig, apply_lora, lora_modules, save_adapter
    from pyft.testing import make_tiny_model, make_tokenizer

    tok = make_tokenizer(root / "tokenizer", style="chatml")
    base = make_tiny_model(root / "base", tok, arch="llama", hidden_size=hidden_size,
                           intermediate_size=intermediate_size, num_hidden_layers=4)
    adapters = []
    for seed in (1, 2):
        model = pyft.load_model(base, dtype="float32")
        apply_lora(model, LoraConfig(r=8, alpha=16, targets="all-linear"))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, layer in lora_modules(model):
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.2)
        adapters.append(save_adapter(model, root / f"adapter{seed}"))
    records = [{"messages": [{**m, "content": f"{m['content']} #{i}"} for m in CONVERSATIONS[i % len(CONVERSATIONS)]]}
               for i in range(rows)]
    data = write_jsonl(root / "chats.jsonl", records)
    return Inputs(root, tok, base, (adapters[0], adapters[1]), data)
