"""`pyft chat` end to end under a pseudo-terminal: two turns with history, /reset, streamed replies."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from pyft.generate import Generator, SamplingSettings
from pyft.generate.prompts import Prompt
from pyft.testing import make_tiny_model


def _read_until(fd: int, marker: str, buf: list[str], timeout: float = 120.0) -> str:
    """Read the terminal until ``marker`` appears after what was consumed; return the new text."""
    start = len("".join(buf))
    deadline = time.monotonic() + timeout
    while marker not in "".join(buf)[start:]:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; got {''.join(buf)[start:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            buf.append(chunk.decode("utf-8", "replace"))
    return "".join(buf)[start:]


def test_chat_under_a_pseudo_terminal(tokenizer_dirs, tmp_path):
    model = make_tiny_model(tmp_path / "m", tokenizer_dirs["chatml"], arch="llama")
    settings = SamplingSettings(max_new_tokens=8)
    gen = Generator(model, dtype="float32")
    r1 = gen.complete([Prompt(messages=[{"role": "user", "content": "hello"}])], settings)[0].text
    r2 = gen.complete([Prompt(messages=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": r1},
                                        {"role": "user", "content": "and then?"}])], settings)[0].text

    master, slave = pty.openpty()
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pyft.cli.main", "chat", str(model), "--max-new-tokens", "8",
                             "--dtype", "float32"], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    buf: list[str] = []
    try:
        _read_until(master, "you> ", buf)
        os.write(master, b"hello\n")
        first = _read_until(master, "you> ", buf)
        os.write(master, b"and then?\n")
        second = _read_until(master, "you> ", buf)
        os.write(master, b"/reset\n")
        reset = _read_until(master, "you> ", buf)
        os.write(master, b"hello\n")
        third = _read_until(master, "you> ", buf)
        os.write(master, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    # The terminal echoes input and turns \n into \r\n.
    norm = [t.replace("\r\n", "\n") for t in (first, second, reset, third)]
    assert f"assistant> {r1}\n" in norm[0]
    assert f"assistant> {r2}\n" in norm[1], "the second turn sees the first one"
    assert "(conversation reset)" in norm[2]
    assert f"assistant> {r1}\n" in norm[3], "after /reset the history is gone"
    assert r1 != r2
