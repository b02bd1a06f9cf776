"""Data preparation and loading.

- :func:`prepare` — conversation files (JSONL/JSON/Parquet; alpaca, sharegpt, messages, text,
  preference, kto) to validated, templated, masked, optionally packed token shards, in Rust.
- :func:`load` — a map-style dataset over the memory-mapped shards.
- :class:`PaddedCollator`, :class:`PackedCollator` — batches for transformers models.
- :func:`inspect` — statistics and one example with its trainable tokens highlighted.
"""

from pyft.data.collate import PackedCollator, PackedRowsCollator, PaddedCollator
from pyft.data.dataset import PreparedDataset, load
from pyft.data.inspect import inspect, render_example
from pyft.data.prepare import PreparedInfo, prepare

__all__ = [
    "prepare",
    "PreparedInfo",
    "load",
    "PreparedDataset",
    "PaddedCollator",
    "PackedCollator",
    "PackedRowsCollator",
    "inspect",
    "render_example",
]
