"""``pyft.data.load``: a map-style dataset over memory-mapped token shards.

A shard is a safetensors file of 1-D int32 tensors (see ``rust/pyft-core/src/data/shards.rs``
for the layout). Tensors are mapped with :class:`numpy.memmap`, so opening a dataset reads only
the headers and items are zero-copy views; a PyTorch ``DataLoader`` with forked workers shares
the pages.
"""

from __future__ import annotations

import json
import os
import struct
from bisect import bisect_right
from pathlib import Path
from typing import Any

import numpy as np

from pyft.data.prepare import PreparedInfo

_DTYPES = {"I32": np.int32, "I64": np.int64, "U8": np.uint8}


def read_safetensors_mmap(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only numpy arrays)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor `{name}` has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = (end - start) // np.dtype(dtype).itemsize
        if count == 0:
            out[name] = np.zeros(info["shape"], dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=(count,)).reshape(info["shape"])
    return out


class PreparedDataset:
    """Rows of one split of a prepared directory.

    Items (all numpy int32 arrays, zero-copy views into the shards):

    - ``chat``/``text``: ``input_ids [L]``, ``labels [L]`` (-100 = no loss), ``position_ids [L]``
      (restarting at 0 for each document of a packed row) and ``seq_lengths [D]`` (the lengths
      of the row's D documents);
    - ``preference``: ``prompt``, ``chosen``, ``rejected`` (token ids);
    - ``kto``: ``prompt_ids``, ``completion_ids`` and ``label`` (a 0-d array, 1 = desirable).

    Works with ``torch.utils.data.DataLoader`` and the collators of :mod:`pyft.data.collate`.
    """

    def __init__(self, out_dir: str | os.PathLike[str], split: str = "train") -> None:
        self.info = PreparedInfo.read(out_dir)
        if split not in self.info.splits:
            raise KeyError(f"{out_dir}: no split {split!r} (have {sorted(self.info.splits)})")
        self.split = split
        self.kind = self.info.kind
        self.packed = self.info.meta["options"]["pack"] == "bfd"
        self._shards = [read_safetensors_mmap(self.info.out_dir / s["file"]) for s in self.info.splits[split]["shards"]]
        sizes = [s["rows"] for s in self.info.splits[split]["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[dict[str, np.ndarray], int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        s = bisect_right(self._starts, index) - 1
        return self._shards[s], index - self._starts[s]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        shard, i = self._locate(index)
        if self.kind in ("chat", "text"):
            d0, d1 = shard["row_offsets"][i], shard["row_offsets"][i + 1]
            doc_offsets = shard["doc_offsets"][d0 : d1 + 1]
            t0, t1 = int(doc_offsets[0]), int(doc_offsets[-1])
            seq_lengths = np.diff(doc_offsets).astype(np.int32)
            position_ids = np.concatenate([np.arange(n, dtype=np.int32) for n in seq_lengths])
            return {
                "input_ids": shard["input_ids"][t0:t1],
                "labels": shard["labels"][t0:t1],
                "position_ids": position_ids,
                "seq_lengths": seq_lengths,
            }
        if self.kind == "preference":
            return {k: _slice(shard, k, i) for k in ("prompt", "chosen", "rejected")}
        return {
            "prompt_ids": _slice(shard, "prompt", i),
            "completion_ids": _slice(shard, "completion", i),
            "label": shard["label"][i],
        }

    def lengths(self) -> np.ndarray:
        """Tokens per row (int64 ``[len(self)]``), e.g. for length-grouped sampling."""
        out = []
        for shard in self._shards:
            if self.kind in ("chat", "text"):
                rows = shard["row_offsets"]
                out.append(np.diff(shard["doc_offsets"][rows]))
            elif self.kind == "preference":
                p = np.diff(shard["prompt_offsets"])
                out.append(p + np.maximum(np.diff(shard["chosen_offsets"]), np.diff(shard["rejected_offsets"])))
            else:
                out.append(np.diff(shard["prompt_offsets"]) + np.diff(shard["completion_offsets"]))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.info.out_dir)!r}, split={self.split!r}, kind={self.kind!r}, rows={len(self)})"


def _slice(shard: dict[str, np.ndarray], name: str, i: int) -> Any:
    offsets = shard[f"{name}_offsets"]
    return shard[f"{name}_ids"][offsets[i] : offsets[i + 1]]


def load(out_dir: str | os.PathLike[str], split: str = "train") -> PreparedDataset:
    """Open one split (``train`` or ``validation``) of a directory written by :func:`pyft.data.prepare`."""
    return PreparedDataset(out_dir, split)
