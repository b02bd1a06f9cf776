"""Write outputs atomically, never onto an input: the Python face of the Rust core's staging rules.

Every output is built under a unique new name beside its final place (``.NAME.pyft-stage-PID-NONCE``,
created exclusively: a planted file or symlink is never followed) and renamed in at the end, so the
final name always holds either the old complete output or the new complete one. Staging left by a
process that died (``kill -9``) is removed the next time the same output is staged. See
``rust/pyft-core/src/io/staging.rs``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pyft import _core


def _staged(staging: _core.StagingDir | _core.StagingFile) -> Iterator[Path]:
    """Yield the staging path; commit it after the body, discard it if the body raises."""
    try:
        yield Path(staging.path)
    except BaseException:
        staging.discard()
        raise
    staging.commit()


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory next to ``target``; on success it replaces ``target``.

    On an exception the staging directory is removed and ``target`` is left as it was. An existing
    ``target`` is replaced only with ``overwrite=True``, by an atomic exchange once the new content is
    complete (the old content is then deleted).

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        DataError: ``target`` exists and is not a directory.
    """
    yield from _staged(_core.StagingDir(str(target), overwrite))


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield the path of a new, empty staging file next to ``target``; on success it is renamed onto ``target``.

    The parent directory is created if needed. On an exception the staging file is removed and
    ``target`` is left as it was.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        DataError: ``target`` is a directory.
    """
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    yield from _staged(_core.StagingFile(str(target), overwrite))


def check_output_disjoint(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an output that is, contains, or lies inside any input (real paths; ``None`` inputs skipped).

    Raises:
        ConfigError: the output overlaps an input; ``--overwrite`` never changes this.
    """
    _core.check_output_disjoint(str(out), [str(p) for p in inputs if p is not None])


def discard_directory(path: str | os.PathLike[str]) -> None:
    """Delete directory ``path`` so that it is never seen half-deleted under its own name.

    It is renamed to a staging name first; should this process die while deleting it, the next
    staging of the same name (or :func:`remove_stale_staging`) removes the rest.
    """
    _core.discard_dir(str(path))


def remove_stale_staging(directory: str | os.PathLike[str], names: Iterable[str]) -> int:
    """Remove the staging of outputs ``names`` in ``directory`` left by processes that no longer run.

    Returns:
        How many staging entries were removed. Staging of live processes is never touched.
    """
    return sum(_core.remove_stale_staging(str(directory), name) for name in names)
