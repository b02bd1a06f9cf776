"""The confusion matrix as a PNG heat map with the count written in every cell."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyft._atomic import atomic_file
from pyft.errors import ConfigError, ShapeError
from pyft.eval.classification import OTHER_COLUMN

#: Longest label drawn in full; longer ones are cut with an ellipsis (the JSON keeps them whole).
MAX_LABEL_CHARS = 24


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[:MAX_LABEL_CHARS - 1] + "…"


def _checked_counts(matrix: Any, labels: Sequence[str]) -> np.ndarray:
    counts = np.asarray(matrix)
    n = len(labels)
    if counts.ndim != 2 or counts.shape[0] != n or counts.shape[1] not in (n, n + 1) or n == 0:
        raise ShapeError(f"confusion matrix of shape {counts.shape} does not fit {n} labels: expected "
                         f"({n}, {n}) or ({n}, {n + 1}) (with the invalid-prediction column)")
    if counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ConfigError(f"confusion matrix must hold non-negative integer counts, got dtype {counts.dtype}")
    return counts


def confusion_matrix_png(matrix: Any, labels: Sequence[str], path: str | os.PathLike[str], *,
                         title: str = "Confusion matrix", overwrite: bool = True) -> Path:
    """Draw ``matrix`` (rows = reference, columns = prediction) into the PNG file ``path``.

    The file is written atomically (:func:`pyft._atomic.atomic_file`): ``path`` holds either the old or
    the new complete image, never a partial one.

    Args:
        matrix: integer counts, shape ``(n, n)`` or ``(n, n + 1)`` with ``n = len(labels)``; an extra last
            column holds the invalid predictions and is titled ``"(other)"``
            (``ConfusionMatrix.counts`` has this shape).
        labels: the row labels (and the first ``n`` column labels), in matrix order; drawn with
            matplotlib's default font, so characters it lacks (e.g. CJK in DejaVu Sans) show as boxes.
        path: the PNG to write; its parent directory is created if needed.
        title: the figure title.
        overwrite: replace an existing ``path``; if False, an existing file raises ``FileExistsError``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ShapeError: the matrix is not 2-D or does not fit ``labels``.
        ConfigError: counts that are not non-negative integers.
    """
    counts = _checked_counts(matrix, labels)
    # matplotlib's object API with the Agg canvas, not pyplot: no global figure registry or backend switch
    # inside a library call, and the figure is freed with its last reference.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n_rows, n_cols = counts.shape
    columns = [_short(label) for label in labels] + ([OTHER_COLUMN] if n_cols > n_rows else [])
    side = min(max(3.0, 0.55 * n_cols + 2.5), 24.0)  # inches; grows with the labels, capped
    font = 10 if n_cols <= 12 else max(4, int(120 / n_cols))
    fig = Figure(figsize=(side, min(max(3.0, 0.55 * n_rows + 2.2), 24.0)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, ticks=MaxNLocator(integer=True))
    ax.set_xticks(range(n_cols), columns, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(n_rows), [_short(label) for label in labels], fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)
    threshold = counts.max() / 2
    for i in range(n_rows):
        for j in range(n_cols):
            value = int(counts[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=font,
                    color="white" if value > threshold else "black")
    out = Path(path)
    with warnings.catch_warnings(), atomic_file(out, overwrite=overwrite) as tmp:
        # A label in a script the font lacks (CJK in DejaVu Sans) is drawn as boxes: say so once in the
        # docs, not once per glyph at run time; the JSON report keeps every label exact.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
    return out
