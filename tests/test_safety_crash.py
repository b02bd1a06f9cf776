"""``kill -9`` while ``pyft data prepare``, ``pyft-merge`` and ``pyft-export`` write (issue 13).

Each command is killed at ``PYFT_CRASH_KILLS`` (default 20) seeded moments: once a staging entry of
its output appears, after a random fraction of the time the command was measured to write. Kills
alternate between a first write (no output yet) and an ``--overwrite`` of a previous complete
output made by the other of two variants of the command, so that old and new differ. After each
kill the output must be missing (first write) or the old complete output (overwrite), or the new
complete one, byte for byte; the same command, with ``--overwrite`` where an output exists, must
then succeed with no manual cleanup, write the new output and leave no staging entry behind.
``PYFT_CRASH_SWAP_KILLS`` (default 4) more overwrites are killed as soon as the new output is in
place, while the old one is still being deleted: a window of a few milliseconds that timed kills
rarely hit, where a fixed-name ``.NAME.old`` used to block every later ``--overwrite``.

Longer run: ``PYFT_CRASH_KILLS=200 pytest tests/test_safety_crash.py``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
from pathlib import Path

import pytest
from crashing import Inputs, build_inputs, command, run_until, snapshot, staging_entries

KILLS = int(os.environ.get("PYFT_CRASH_KILLS", "20"))
SWAP_KILLS = int(os.environ.get("PYFT_CRASH_SWAP_KILLS", "4"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    # 68 MB of float32 weights. Write times measured on 2 cores at load ~9 (staging seen -> exit):
    # prepare 0.2-0.4 s (1195 files) and 0.2 s (packed, 202 files); merge 0.1-0.2 s (68 MB in 4 MB
    # shards) and 0.8-1.7 s (TIES); GGUF f16 0.07 s and q4_k_m 0.6-1.2 s; Ollama 0.2 s (Q8_0 + LoRA)
    # and 1.1-1.5 s (merged q4_k_m).
    return build_inputs(tmp_path_factory.mktemp("crash-inputs"), hidden_size=512, intermediate_size=1408, rows=3000)


def _variants(case: str, inp: Inputs, out: Path) -> tuple[list[str], list[str]]:
    """Two runs of one command that write different outputs to ``out``: a plain one (mostly I/O) and
    a slower one (more compute between the writes)."""
    a1, a2 = inp.adapters
    if case == "prepare":
        prepare = ("pyft", "data", "prepare", inp.data, "--tokenizer", inp.tokenizer, "--out", out, "--quiet")
        return (command(*prepare, "--shard-tokens", "256"),  # ~1200 small shard files
                command(*prepare, "--pack", "bfd", "--max-len", "1024", "--shard-tokens", "1024", "--val-ratio", "0.1"))
    if case == "merge":
        return (command("pyft-merge", inp.base, a1, out, "--max-shard-size", "4MB"),
                command("pyft-merge", inp.base, "--adapter", a1, "--adapter", a2, "--method", "ties",
                        "--density", "0.5", "--dtype", "bf16", out))
    if case == "export-gguf":
        return (command("pyft-export", inp.base, "--to", "gguf", "--out", out),
                command("pyft-export", inp.base, "--adapter", a1, "--to", "gguf", "--qtype", "q4_k_m", "--out", out))
    if case == "export-ollama":
        return (command("pyft-export", inp.base, "--adapter", a1, "--to", "ollama", "--out", out),
                command("pyft-export", inp.base, "--adapter", a2, "--to", "ollama", "--merge", "--qtype", "q4_k_m",
                        "--out", out))
    raise AssertionError(case)


def _remove(out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()


def _differences(got: dict[str, str] | None, want: dict[str, str] | None) -> str:
    if got is None or want is None:
        return "missing" if got is None else "present"
    changed = sorted(k for k in got.keys() & want.keys() if got[k] != want[k])
    return f"missing {sorted(want.keys() - got.keys())[:5]}, extra {sorted(got.keys() - want.keys())[:5]}, " \
           f"changed {changed[:5]}"


@pytest.mark.parametrize("case", ["prepare", "merge", "export-gguf", "export-ollama"])
def test_kill_during_write_leaves_old_or_new_output_and_next_run_recovers(case, inputs, tmp_path):
    out = tmp_path / "out" / ("model.gguf" if case == "export-gguf" else "result")
    out.parent.mkdir()
    variants = _variants(case, inputs, out)
    inputs_before = snapshot(inputs.root)

    # Reference: each variant uninterrupted, as a first write and as an --overwrite of itself. Every
    # uninterrupted run also times its write (staging seen -> exit); kills are drawn over the median.
    refs, write_s = [], [[], []]
    for v, cmd in enumerate(variants):
        _remove(out)
        for extra in ([], ["--overwrite"]):
            done = run_until(cmd + extra, out, delay_s=None)
            assert done.returncode == 0, done.stderr
            assert done.triggered, f"{case}: no staging entry of {out.name} was seen while it wrote"
            assert staging_entries(out) == []
            write_s[v].append(done.write_s)
            if not extra:
                refs.append(snapshot(out))
        assert snapshot(out) == refs[v], f"{case}: an uninterrupted --overwrite wrote other bytes than a first write"
    assert refs[0] != refs[1]
    _remove(out)

    rng = random.Random(f"pyft-crash-{case}")
    current: int | None = None  # which variant's complete output is at `out`
    landed, swaps_landed = 0, 0
    # KILLS timed kills, alternately a first write and an --overwrite, then SWAP_KILLS --overwrites
    # killed as soon as the new output is in place (while the old one is being deleted).
    for i in range(KILLS + SWAP_KILLS):
        at_swap = i >= KILLS
        first_write = not at_swap and i % 2 == 0
        if first_write:
            _remove(out)
            current, new = None, (i // 2) % 2
        else:
            if current is None:  # only with PYFT_CRASH_KILLS=0: something to overwrite
                assert run_until(variants[0], out, delay_s=None).returncode == 0
                current = 0
            new = 1 - current
        if at_swap:
            delay, when = 0.0, "as soon as the new output was in place"
        else:
            # Overwrites are killed later on average (fraction sqrt(U)): their end swaps the outputs
            # and deletes the old one, the moments that strand staging or lose the old output.
            measured = statistics.median(write_s[new])
            delay = (rng.random() if first_write else rng.random() ** 0.5) * measured
            when = f"{delay * 1e3:.0f} ms after staging appeared, median write {measured * 1e3:.0f} ms"
        killed = run_until(variants[new] + ([] if first_write else ["--overwrite"]), out, delay_s=delay,
                           after_swap=at_swap)
        if at_swap:
            swaps_landed += killed.killed and killed.triggered
        else:
            landed += killed.killed and killed.triggered
        where = (f"{case}, kill {i} ({'first write' if first_write else '--overwrite'} with variant {new}, "
                 f"SIGKILL {when})")
        assert killed.killed or killed.returncode == 0, f"{where}: failed on its own: {killed.stderr}"
        after = snapshot(out)
        old = None if current is None else refs[current]
        assert after in (old, refs[new]), (
            f"{where}: {out.name} is neither the old output ({_differences(after, old)}) nor the new one "
            f"({_differences(after, refs[new])}); staging beside it: {staging_entries(out)}")

        again = run_until(variants[new] + (["--overwrite"] if out.exists() else []), out, delay_s=None)
        assert again.returncode == 0, f"{where}: the next run failed: {again.stderr}"
        write_s[new].append(again.write_s)
        assert snapshot(out) == refs[new], f"{where}: the next run wrote other bytes than an uninterrupted one"
        assert staging_entries(out) == [], f"{where}: staging left after the next run"
        current = new

    assert snapshot(inputs.root) == inputs_before, f"{case}: an input changed"
    # Kills drawn over the measured write duration; a run that happens to write faster ends first.
    assert landed >= KILLS // 2, (f"{case}: only {landed} of {KILLS} kills landed while the command wrote "
                                  f"({swaps_landed} of {SWAP_KILLS} at the swap)")
