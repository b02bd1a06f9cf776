"""Tensor-by-tensor reading of a model directory's safetensors files, without memory-mapping.

``safetensors.safe_open`` maps whole files: every page it touches stays in the process's resident
set until the file is closed, so streaming a model through it still "uses" the whole checkpoint.
:class:`SafetensorsShards` reads each tensor with one ``readinto`` into its own buffer instead, so
peak memory is what the caller keeps plus one tensor; :meth:`SafetensorsShards.map` gives a tensor
that stays backed by the file (copy-on-write), resident only where it is touched, for tensors kept
as stored (as transformers loads them).

Headers and the index are read by :mod:`pyft.io.safetensors` (validated by the Rust core, the
reader behind merge and export): overlapping or gapped offsets, sizes that disagree with shapes,
negative dimensions, non-UTF-8 headers and index entries outside the model directory are refused
naming the file, before a byte of data is read.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pyft.io.dtypes import DTYPES, by_safetensors, torch_dtype
from pyft.io.files import data_error, open_regular
from pyft.io.safetensors import model_files, read_header


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsShards:
    """The tensors of a model directory (``model.safetensors`` or the shards of its index).

    Raises:
        FileNotFoundError: no safetensors weights in ``model_dir``.
        DataError: a malformed header or index, a shard outside ``model_dir``, a tensor stored
            twice, or a file that is not a regular file; the message names the file.
    """

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        d = Path(model_dir)
        index = d / "model.safetensors.index.json"
        if index.exists():
            paths = model_files(d)
        else:
            paths = sorted(d.glob("*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"{d}: no *.safetensors weights")
        self.files = paths
        self._maps: dict[Path, mmap.mmap] = {}
        self.entries: dict[str, TensorEntry] = {}
        for p in paths:
            for name, entry in _read_header(p).items():
                if name in self.entries:
                    raise data_error(p, f"tensor `{name}` is also stored in {self.entries[name].path.name}")
                self.entries[name] = entry

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (a fresh CPU tensor of its stored dtype and shape)."""
        e = self.entries[name]
        buf = bytearray(e.end - e.start)
        with open_regular(e.path) as f:
            f.seek(e.start)
            if f.readinto(buf) != len(buf):
                raise data_error(e.path, f"tensor `{name}` is truncated (the file changed while it was read)")
        if not buf:
            return torch.empty(e.shape, dtype=e.dtype)
        return torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape)

    def map(self, name: str) -> torch.Tensor:
        """The tensor ``name`` backed by a private (copy-on-write) mapping of its file: pages are
        read, and count as resident memory, only where the tensor is touched. The mapping lives as
        long as the tensor."""
        e = self.entries[name]
        if e.end == e.start:
            return torch.empty(e.shape, dtype=e.dtype)
        m = self._maps.get(e.path)
        if m is None:
            with open_regular(e.path) as f:
                m = self._maps[e.path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = (e.end - e.start) // torch.empty((), dtype=e.dtype).element_size()
        return torch.frombuffer(m, dtype=e.dtype, count=count, offset=e.start).reshape(e.shape)


def _read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of ``path`` from its header, as validated by the Rust core."""
    out = {}
    for t in read_header(path).tensors:
        row = by_safetensors(t.dtype)
        if row is None:
            raise data_error(path, f"tensor `{t.name}` has dtype {t.dtype}, which pyft does not read "
                                   f"(expected one of {', '.join(d.safetensors for d in DTYPES)})")
        out[t.name] = TensorEntry(path, torch_dtype(row), t.shape, t.start, t.end)
    return out
