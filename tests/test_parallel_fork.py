"""Rayon work stays safe after fork (PyTorch DataLoader workers fork the process)."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

import pyft.data

from helpers import CONVERSATIONS, write_jsonl


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics tested on Linux")
def test_prepare_in_forked_child_after_parent_used_the_pool(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS * 20])
    pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "parent")  # parent's pool is now running
    with warnings.catch_warnings():  # Python 3.12 warns about fork() in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: must finish (sequentially) rather than hang on the parent's dead threads
        try:
            info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "child")
            os._exit(0 if info.counts["kept"] == 100 else 3)
        except BaseException:
            os._exit(4)
    import time

    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("prepare hung in a forked child")
    assert (tmp_path / "child" / "meta.json").read_text() == (tmp_path / "parent" / "meta.json").read_text()
