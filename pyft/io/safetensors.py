"""``pyft.io.safetensors``: the one reader of safetensors headers and model indexes on the Python side.

Headers and ``model.safetensors.index.json`` are parsed and validated by the Rust core
(:func:`pyft._core.safetensors_layout`, :func:`pyft._core.safetensors_model_files`), the reader
behind merge and export: a header longer than the file or over 100 MB, JSON that is not UTF-8 or
not an object, unknown dtypes, negative dimensions, sizes that disagree with shapes, overlapping,
gapped or trailing data, and index entries that leave the model directory are all refused with one
:class:`pyft.errors.DataError` whose ``.file`` and message name the file. No tensor data is read and
torch is not imported: ``pyft inspect``, the vLLM adapter check and the token-shard dataset use it
as they are; :mod:`pyft.io.shards` turns the layouts into torch tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pyft import _core
from pyft.io.files import check_regular

__all__ = ["SafetensorsHeader", "TensorLayout", "model_files", "read_header"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TensorLayout:
    """One tensor: its name, safetensors dtype (``F32``, ``BF16``, ``U8``, ...), shape, and its
    absolute byte range ``[start, end)`` in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (``end - start``; the core checked it matches dtype and shape)."""
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one safetensors file."""

    path: Path
    #: The ``__metadata__`` map (empty when the file has none).
    metadata: dict[str, str]
    #: Every tensor, in data order.
    tensors: list[TensorLayout]
    #: Size of the whole file in bytes.
    file_size: int
    _names: dict[str, TensorLayout] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", {t.name: t for t in self.tensors})

    def names(self) -> list[str]:
        """Tensor names in data order."""
        return [t.name for t in self.tensors]

    def __getitem__(self, name: str) -> TensorLayout:
        return self._names[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names


def read_header(path: PathLike) -> SafetensorsHeader:
    """The validated header of the safetensors file ``path``, without reading tensor data.

    Raises:
        DataError: not a regular file (a FIFO or a device is refused before it is opened), or not
            a valid safetensors file; ``.file`` and the message name ``path`` and the defect.
        FileNotFoundError: ``path`` does not exist.
    """
    stat = check_regular(path)
    metadata, layout = _core.safetensors_layout(os.fspath(path))
    tensors = [TensorLayout(name, dtype, tuple(shape), start, end) for name, dtype, shape, start, end in layout]
    return SafetensorsHeader(Path(path), dict(metadata), tensors, stat.st_size)


def model_files(model_dir: PathLike) -> list[Path]:
    """The safetensors files of a model directory, as merge and export read them: the distinct
    files of ``model.safetensors.index.json``'s ``weight_map`` (sorted; each a plain name inside
    ``model_dir`` that exists), else ``model.safetensors``.

    Raises:
        DataError: a malformed index, a shard outside ``model_dir`` or missing, or neither an index
            nor ``model.safetensors`` (the message names the index or the directory).
    """
    return [Path(p) for p in _core.safetensors_model_files(os.fspath(model_dir))]
