"""``pyft.data.load``: a map-style dataset over memory-mapped token shards.

A shard is a safetensors file of 1-D int32 tensors (see ``rust/pyft-core/src/data/shards.rs``
for the layout). Tensors are mapped with :class:`numpy.memmap`, so opening a dataset reads only
the headers and items are zero-copy views; a PyTorch ``DataLoader`` with forked workers shares
the pages.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path
from typing import Any

import numpy as np

from pyft.data.prepare import PreparedInfo
from pyft.errors import DataError
from pyft.io.dtypes import by_safetensors
from pyft.io.files import child_path, data_error
from pyft.io.safetensors import read_header

#: The safetensors dtypes token shards use.
_SHARD_DTYPES = ("I32", "I64", "U8")


def read_safetensors_mmap(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only numpy arrays). The header is
    validated by the Rust core (:func:`pyft.io.safetensors.read_header`, as for merge and export),
    so offsets and shapes can be trusted.

    Raises:
        DataError: not a regular file, a malformed header, or a dtype shards do not use.
    """
    out: dict[str, np.ndarray] = {}
    for t in read_header(path).tensors:
        row = by_safetensors(t.dtype)
        if t.dtype not in _SHARD_DTYPES or row is None or row.numpy is None:
            raise data_error(path, f"tensor `{t.name}` has dtype {t.dtype}; token shards hold I32, I64 or U8")
        dtype = np.dtype(row.numpy)
        if t.nbytes == 0:
            out[t.name] = np.zeros(t.shape, dtype=dtype)
        else:
            out[t.name] = np.memmap(path, dtype=dtype, mode="r", offset=t.start,
                                    shape=(t.nbytes // dtype.itemsize,)).reshape(t.shape)
    return out


#: Per kind: (offsets tensor, the tensors its values index, whether they index another offsets tensor).
_OFFSETS = {
    "chat": [("row_offsets", ("doc_offsets",), True), ("doc_offsets", ("input_ids", "labels"), False)],
    "preference": [(f"{p}_offsets", (f"{p}_ids",), False) for p in ("prompt", "chosen", "rejected")],
    "kto": [(f"{p}_offsets", (f"{p}_ids",), False) for p in ("prompt", "completion")],
}
_OFFSETS["text"] = _OFFSETS["chat"]
_OFFSETS["classify"] = [("input_offsets", ("input_ids",), False)]
#: Kinds with a per-row ``label`` tensor.
_LABELLED = ("kto", "classify")


def _check_shard(shard: dict[str, np.ndarray], path: Path, kind: str, rows: int,
                 classes: list[Any] | None = None) -> None:
    """Refuse a shard whose offsets do not index its tokens (so no row reads past them), naming the tensor."""
    def bad(name: str, message: str) -> DataError:
        return data_error(path, f"tensor `{name}` {message}", name)

    needed = {n for o, targets, _ in _OFFSETS[kind] for n in (o, *targets)} | ({"label"} if kind in _LABELLED else set())
    for name in sorted(needed):
        if name not in shard:
            raise bad(name, "is missing")
        if shard[name].ndim != 1:
            raise bad(name, f"has shape {list(shard[name].shape)}; shard tensors are 1-D")
    for name, targets, of_offsets in _OFFSETS[kind]:
        offsets = shard[name]
        if len(offsets) == 0 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
            raise bad(name, "must start at 0 and never decrease")
        limit = min(len(shard[t]) - (1 if of_offsets else 0) for t in targets)
        if offsets[-1] > limit:
            raise bad(name, f"ends at {int(offsets[-1])}, past the {limit} entries of `{targets[0]}`")
    per_row = ["row_offsets"] if kind in ("chat", "text") else [o for o, _, _ in _OFFSETS[kind]]
    for name in per_row:
        if len(shard[name]) != rows + 1:
            raise bad(name, f"holds {len(shard[name]) - 1} rows; meta.json says {rows}")
    if kind in _LABELLED and len(shard["label"]) != rows:
        raise bad("label", f"holds {len(shard['label'])} rows; meta.json says {rows}")
    if kind == "classify" and rows:
        n = len(classes or [])
        lo, hi = int(shard["label"].min()), int(shard["label"].max())
        if lo < 0 or hi >= n:
            raise bad("label", f"holds class index {lo if lo < 0 else hi}; meta.json lists {n} classes")


class PreparedDataset:
    """Rows of one split of a prepared directory.

    Items (all numpy int32 arrays, zero-copy views into the shards):

    - ``chat``/``text``: ``input_ids [L]``, ``labels [L]`` (-100 = no loss), ``position_ids [L]``
      (restarting at 0 for each document of a packed row) and ``seq_lengths [D]`` (the lengths
      of the row's D documents);
    - ``preference``: ``prompt``, ``chosen``, ``rejected`` (token ids);
    - ``kto``: ``prompt_ids``, ``completion_ids`` and ``label`` (a 0-d array, 1 = desirable);
    - ``classify``: ``input_ids`` and ``label`` (a 0-d array: the index of the row's class in
      ``info.classes["values"]``).

    Works with ``torch.utils.data.DataLoader`` and the collators of :mod:`pyft.data.collate`.
    """

    def __init__(self, out_dir: str | os.PathLike[str], split: str = "train") -> None:
        self.info = PreparedInfo.read(out_dir)
        if split not in self.info.splits:
            raise KeyError(f"{out_dir}: no split {split!r} (have {sorted(self.info.splits)})")
        self.split = split
        self.kind = self.info.kind
        self.packed = self.info.meta["options"]["pack"] == "bfd"
        self._shards = []
        for s in self.info.splits[split]["shards"]:
            path = child_path(self.info.out_dir, s["file"], self.info.out_dir / "meta.json", f"splits.{split}.shards")
            self._shards.append(read_safetensors_mmap(path))
            _check_shard(self._shards[-1], path, self.kind, s["rows"], (self.info.classes or {}).get("values"))
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
        if self.kind == "classify":
            return {"input_ids": _slice(shard, "input", i), "label": shard["label"][i]}
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
            elif self.kind == "classify":
                out.append(np.diff(shard["input_offsets"]))
            elif self.kind == "preference":
                p = np.diff(shard["prompt_offsets"])
                out.append(p + np.maximum(np.diff(shard["chosen_offsets"]), np.diff(shard["rejected_offsets"])))
            else:
                out.append(np.diff(shard["prompt_offsets"]) + np.diff(shard["completion_offsets"]))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    def row_labels(self) -> np.ndarray:
        """The ``label`` of every row (int64 ``[len(self)]``) of KTO or classify data."""
        if self.kind not in _LABELLED:
            raise ValueError(f"{self.info.out_dir}: {self.kind} data has no per-row label")
        out = [np.asarray(shard["label"]) for shard in self._shards]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.info.out_dir)!r}, split={self.split!r}, kind={self.kind!r}, rows={len(self)})"


def _slice(shard: dict[str, np.ndarray], name: str, i: int) -> Any:
    offsets = shard[f"{name}_offsets"]
    return shard[f"{name}_ids"][offsets[i] : offsets[i + 1]]


def load(out_dir: str | os.PathLike[str], split: str = "train") -> PreparedDataset:
    """Open one split (``train`` or ``validation``) of a directory written by :func:`pyft.data.prepare`."""
    return PreparedDataset(out_dir, split)
