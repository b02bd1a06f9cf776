"""Tensor-by-tensor reading of a model directory's safetensors files, without memory-mapping.

``safetensors.safe_open`` maps whole files: every page it touches stays in the process's resident
set until the file is closed, so streaming a model through it still "uses" the whole checkpoint.
:class:`SafetensorsShards` reads each tensor with one ``readinto`` into its own buffer instead, so
peak memory is what the caller keeps plus one tensor; :meth:`SafetensorsShards.map` gives a tensor
that stays backed by the file (copy-on-write), resident only where it is touched, for tensors kept
as stored (as transformers loads them).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U8": torch.uint8,
           "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "F64": torch.float64,
           "BOOL": torch.bool}


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
        ValueError: a malformed header, naming the file.
    """

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        d = Path(model_dir)
        index = d / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            paths = [d / f for f in files]
        else:
            paths = sorted(d.glob("*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"{d}: no *.safetensors weights")
        self.files = paths
        self._maps: dict[Path, mmap.mmap] = {}
        self.entries: dict[str, TensorEntry] = {}
        for p in paths:
            self.entries.update(_read_header(p))

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (a fresh CPU tensor of its stored dtype and shape)."""
        e = self.entries[name]
        buf = bytearray(e.end - e.start)
        with open(e.path, "rb") as f:
            f.seek(e.start)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"{e.path}: tensor `{name}` is truncated")
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
            with open(e.path, "rb") as f:
                m = self._maps[e.path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = (e.end - e.start) // torch.empty((), dtype=e.dtype).element_size()
        return torch.frombuffer(m, dtype=e.dtype, count=count, offset=e.start).reshape(e.shape)


def _read_header(path: Path) -> dict[str, TensorEntry]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} runs past the end of the file")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: header is not JSON ({e})") from None
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor `{name}` has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= size - base:
            raise ValueError(f"{path}: tensor `{name}` has data offsets {start}..{end} outside the file")
        out[name] = TensorEntry(path, dtype, tuple(info["shape"]), base + start, base + end)
    return out
