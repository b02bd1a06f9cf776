"""The confusion-matrix PNG: a valid image of plausible size, written atomically."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from pyft.errors import ConfigError, ShapeError
from pyft.eval.classification import confusion_matrix
from pyft.eval.plots import confusion_matrix_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_writes_a_valid_png(tmp_path):
    cm = confusion_matrix(["a", "b", None, "a", "c"], ["a", "b", "b", "c", "c"], labels=["a", "b", "c"])
    out = confusion_matrix_png(cm.counts, cm.labels, tmp_path / "eval" / "confusion.png")
    assert out == tmp_path / "eval" / "confusion.png"
    width, height = _png_size(out)
    assert 250 <= width <= 3000 and 250 <= height <= 3000
    assert 2_000 < out.stat().st_size < 2_000_000
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:  # not a blank canvas: cells, text and colour bar differ in colour
        colors = image.convert("RGB").getcolors(maxcolors=1 << 22)
    assert colors is not None and len(colors) > 20
    assert sorted(p.name for p in out.parent.iterdir()) == ["confusion.png"]  # no staging left behind


def test_square_matrix_unicode_and_long_labels_without_warnings(tmp_path):
    # pytest turns warnings into errors: glyphs missing from the default font must not warn
    labels = ["北京", "положительный", "x" * 80]
    out = confusion_matrix_png(np.array([[3, 0, 1], [0, 2, 0], [1, 1, 9]]), labels, tmp_path / "cm.png")
    assert _png_size(out)[0] > 0


def test_many_labels_stay_bounded(tmp_path):
    n = 60
    out = confusion_matrix_png(np.eye(n, n + 1, dtype=np.int64) * 7, [f"class {i}" for i in range(n)],
                               tmp_path / "cm.png")
    width, height = _png_size(out)
    assert width <= 24 * 110 and height <= 24 * 110


def test_overwrite_and_refusal(tmp_path):
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        confusion_matrix_png([[1]], ["a"], path, overwrite=False)
    assert path.read_bytes() == b"old"
    confusion_matrix_png([[1]], ["a"], path)
    assert _png_size(path)[0] > 0


@pytest.mark.parametrize("matrix, labels, error", [
    ([[1, 2], [3, 4]], ["a"], ShapeError),
    ([[1, 2, 3, 4], [1, 2, 3, 4]], ["a", "b"], ShapeError),
    ([1, 2], ["a", "b"], ShapeError),
    (np.zeros((0, 0), dtype=int), [], ShapeError),
    ([[1.5, 0], [0, 1]], ["a", "b"], ConfigError),
    ([[-1, 0], [0, 1]], ["a", "b"], ConfigError),
])
def test_bad_matrices_write_nothing(tmp_path, matrix, labels, error):
    with pytest.raises(error):
        confusion_matrix_png(matrix, labels, tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []
