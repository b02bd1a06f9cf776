"""Output staging (``pyft._atomic`` over ``pyft_core::io::staging``): unique exclusive names, atomic replace,
recovery from staging left by killed processes, and the output-vs-input rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyft._atomic import atomic_directory, atomic_file, check_output_disjoint
from pyft.errors import ConfigError

# Beyond Linux's largest pid_max (2^22): no process can have this PID.
DEAD_PID = 4_194_304 + 17


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_directory_replace_is_complete_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("writer failed")
    assert _entries(out) == ["a"], "a failed write must leave the old output untouched"
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert _entries(out) == ["b"]
    assert _entries(tmp_path) == ["out"]


def test_staging_names_are_unique_per_writer(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as first, atomic_directory(tmp_path / "out2") as other:
        assert first.name.startswith(".out.pyft-stage-") and other.name.startswith(".out2.pyft-stage-")
    # Two writers of the same output at once get different staging directories.
    a = atomic_directory(tmp_path / "same", overwrite=True)
    b = atomic_directory(tmp_path / "same", overwrite=True)
    pa, pb = a.__enter__(), b.__enter__()
    assert pa != pb and pa.is_dir() and pb.is_dir()
    (pa / "from-a").write_text("a")
    (pb / "from-b").write_text("b")
    a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    assert _entries(tmp_path / "same") == ["from-b"]


def test_leftovers_of_a_killed_overwrite_do_not_block_the_next_one(tmp_path):
    """A writer killed mid-replace leaves staging behind: the next run removes it and succeeds."""
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "v1").write_text("1")
    script = (
        "import os, sys, time\n"
        "from pyft._atomic import atomic_directory\n"
        "with atomic_directory(sys.argv[1], overwrite=True) as tmp:\n"
        "    (tmp / 'v2').write_text('2')\n"
        "    print('staged', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    left = [n for n in _entries(tmp_path) if n != "out"]
    assert len(left) == 1 and left[0].startswith(f".out.pyft-stage-{proc.pid}-"), left
    assert _entries(out) == ["v1"], "the old output stays complete"
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "v3").write_text("3")
    assert _entries(tmp_path) == ["out"] and _entries(out) == ["v3"]


def test_stale_staging_of_dead_pids_removed_live_kept_links_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("k")
    (tmp_path / f".out.pyft-stage-{DEAD_PID}-0").mkdir()
    (tmp_path / f".out.pyft-stage-{DEAD_PID}-1").write_text("x")
    (tmp_path / f".out.pyft-stage-{DEAD_PID}-2").symlink_to(victim)
    live = tmp_path / f".out.pyft-stage-{os.getppid()}-3"
    live.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "new").write_text("n")
    assert _entries(tmp_path) == sorted(["out", "victim", live.name])
    assert _entries(victim) == ["keep"]


def test_atomic_file_never_follows_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("z.bin.partial", ".z.bin.tmp"):
        (tmp_path / name).symlink_to(victim)
    target = tmp_path / "z.bin"
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"new")
    assert victim.read_text() == "precious" and target.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        with atomic_file(target):
            pass
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_bytes(b"newer")
    assert target.read_bytes() == b"newer"
    assert _entries(tmp_path) == [".z.bin.tmp", "victim.txt", "z.bin", "z.bin.partial"]


@pytest.mark.parametrize(("out", "relation"), [
    ("proj/base", "is the input"),
    ("proj", "contains the input"),
    ("proj/base/model.safetensors", "lies inside the input"),
    ("link/adapter", "is the input"),
])
def test_output_overlapping_an_input_is_refused(tmp_path, out, relation):
    (tmp_path / "proj/base").mkdir(parents=True)
    (tmp_path / "proj/adapter").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "proj")
    with pytest.raises(ConfigError, match=relation):
        check_output_disjoint(tmp_path / out, [tmp_path / "proj/base", tmp_path / "proj/adapter", None])
    check_output_disjoint(tmp_path / "proj/merged", [tmp_path / "proj/base", tmp_path / "proj/adapter"])
