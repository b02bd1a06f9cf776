"""``pyft.io.merge``: fold a LoRA-family adapter into its base model, streamed in Rust.

Each base tensor is read memory-mapped, merged in float32 (``W + s·BA``; DoRA renormalised to
its magnitude), rounded once to the output dtype and written to the current shard. Peak memory
is about one tensor, not the model. Output: an HF model directory (shards + index when needed,
``config.json`` copied with only the dtype changed, tokenizer and generation files copied
verbatim) that transformers and vLLM load directly.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pyft import _core

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB`` (10^9, as transformers' ``max_shard_size``), ``500MiB`` (2^20) or an int."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not m:
        raise _core.ConfigError(f"max_shard_size: cannot read {size!r} (examples: 5GB, 500MB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def merge(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str = "auto",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge ``adapter`` into ``base`` and write ``out``.

    Args:
        base: base model directory (``config.json`` + safetensors).
        adapter: PEFT LoRA adapter directory (LoRA, rsLoRA, DoRA, rank/alpha patterns,
            ``modules_to_save``).
        out: output directory (staged, renamed into place at the end).
        dtype: ``auto`` (keep the base dtypes), ``bf16``, ``fp16`` or ``fp32``.
        max_shard_size: largest shard, e.g. ``5GB``.
        overwrite: replace an existing ``out``.

    Returns:
        A report: ``tensors``, ``merged_modules``, ``replaced``, ``shards``, ``total_bytes``.
    """
    report = _core.merge(
        os.fspath(base), os.fspath(adapter), os.fspath(out),
        dtype=None if dtype == "auto" else dtype, max_shard_bytes=parse_size(max_shard_size), overwrite=overwrite,
    )
    return json.loads(report)
