"""``pyft.io.merge``: fold adapters (LoRA family, IA3, OFT) into their base model, streamed in Rust.

Each base tensor is read memory-mapped, merged in float32 (``W + s·BA``; DoRA renormalised to
its magnitude; several adapters combined by ``linear``/``ties``/``dare_linear``/``dare_ties``/``svd``
on their delta weights; IA3: ``W`` scaled by ``ia3_l`` per input column of a feedforward module, per
output row and bias element otherwise; OFT: ``W Rᵀ`` with ``R`` PEFT's block-diagonal Cayley rotation),
rounded once to the output dtype and written to the current shard. Prompt tuning, P-tuning, prefix
tuning and bottleneck adapters add tokens or activations, not weights: they are refused, saying so
and what serves them. Peak
memory is a few tensors, not the model. Output: an HF model directory (shards + index when needed,
``config.json`` copied with only the dtype changed, tokenizer files copied verbatim, the chat
template inline and as ``chat_template.jinja``, every end-of-turn id in ``generation_config.json``)
that transformers and vLLM load directly.

A bitsandbytes 4-bit NF4 base (``quantization_config`` in its ``config.json``) is read as 16-bit:
each quantized weight is dequantized exactly as ``bitsandbytes.functional.dequantize_4bit`` does
(to the dtype its quant state records), a block of rows at a time; adapters merge onto those
values and the output is a plain 16-bit model without ``quantization_config``. Nothing is ever
quantized back to 4 bits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyft import _core
from pyft.errors import PyftError
from pyft.io.files import check_model_files, read_json_object
from pyft.io.serving import serving_files

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB`` (10^9, as transformers' ``max_shard_size``), ``500MiB`` (2^20) or an int."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not m:
        raise _core.ConfigError(f"--max-shard-size: cannot read {size!r} (examples: 5GB, 500MB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def is_quantized(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``model_dir``'s ``config.json`` has a ``quantization_config`` (e.g. a 4-bit NF4 base)."""
    try:
        config = read_json_object(Path(model_dir) / "config.json")
    except (OSError, PyftError):
        return False  # the merge itself reports the unreadable config
    return bool(config.get("quantization_config"))


def nf4_note(report: Mapping[str, Any]) -> str | None:
    """One line saying the merge read a 4-bit NF4 base and what it wrote, or ``None`` for a float base."""
    n = report.get("dequantized_nf4", 0)
    if not n:
        return None
    dtypes = ", ".join(report.get("nf4_written_as", [])) or "16-bit"
    return (f"the base is 4-bit NF4 (bitsandbytes): {n} weights were dequantized and written as {dtypes}; "
            "nothing was re-quantized to 4 bits")


def merge(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    weights: Sequence[float] | None = None,
    method: str = "linear",
    density: float | None = None,
    seed: int = 0,
    svd_rank: int | None = None,
    dtype: str = "auto",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Merge one or several adapters into ``base`` and write ``out``.

    Several adapters combine on their full float32 delta weights ``ΔW_i = s_i·B_i A_i`` per module
    (a module missing from an adapter counts as a zero delta), as ``peft.utils.merge_utils`` does:

    - ``linear``: ``Σ w_i ΔW_i``.
    - ``ties``: keep the ``density`` fraction of each ``ΔW_i`` with the largest magnitude, elect each
      element's sign from the sum of the pruned deltas, average the weighted values of that sign.
    - ``dare_linear`` / ``dare_ties``: drop elements at random (kept with probability ``density``,
      rescaled by ``1/density``; reproducible from ``seed``), then ``linear`` / TIES' sign election.
    - ``svd``: ``Σ w_i ΔW_i`` truncated to rank ``svd_rank`` (default: the largest adapter rank), as
      PEFT's ``add_weighted_adapter(combination_type="svd")``; computed from the low-rank factors.

    Args:
        base: base model directory (``config.json`` + safetensors): 16/32-bit, or a bitsandbytes
            NF4 checkpoint (ours or ``save_pretrained`` of a ``load_in_4bit`` model; double
            quantization, any ``bnb_4bit_quant_storage``, sharded) that is dequantized.
        adapter: a PEFT adapter directory or a list of them: LoRA (rsLoRA, DoRA, embedding LoRA,
            rank/alpha patterns, ``modules_to_save``), IA3 or OFT (linear and embedding layers,
            ``block_share``, ``coft``, exact Cayley or Cayley–Neumann). DoRA, IA3 and OFT adapters
            merge only alone. An empty list copies the base (dequantized, when it is NF4; in ``dtype``).
        out: output directory (staged, renamed into place at the end).
        weights: one weight per adapter. Default: 1.0 each (as PEFT's ``add_weighted_adapter``).
        method: ``linear``, ``ties``, ``dare_linear``, ``dare_ties`` or ``svd``.
        density: fraction kept by ``ties``/``dare_*``, in (0, 1]; required by them.
        seed: seed of DARE's random drops.
        svd_rank: output rank of ``svd``.
        dtype: ``auto`` (keep the base dtypes; an NF4 weight's is the dtype its quant state
            records), ``bf16``, ``fp16`` or ``fp32``.
        max_shard_size: largest shard, e.g. ``5GB``.
        overwrite: replace an existing ``out``.
        extra_files: ``{name: bytes}`` written into ``out`` after the base's tokenizer and
            generation files are copied (replacing them). Default: the serving files of
            :func:`pyft.io.serving.serving_files` (the chat template the adapter was trained with,
            inline in ``tokenizer_config.json`` and as ``chat_template.jinja``; every end-of-turn id
            as ``eos_token_id`` in ``generation_config.json``; ``pyft_run.json``). Pass ``{}`` for
            plain copies.

    Returns:
        A report: ``tensors``, ``merged_modules``, ``replaced``, ``shards``, ``total_bytes``,
        ``dequantized_nf4`` (weights read from an NF4 base) and ``nf4_written_as`` (their output
        dtypes); :func:`nf4_note` turns the last two into one line.

    Raises:
        ConfigError: bad options (weights count, method, density, extra file names).
        DataError: an adapter that does not fit the base (names the tensor and both shapes), an
            adapter that cannot be merged (prompt/prefix tuning, P-tuning, bottleneck adapters: the
            message says why and what serves it), a malformed file, a quantized base other than bitsandbytes NF4 (FP4, 8-bit, GPTQ, …) or
            a broken quant state (names the tensor and the file). Nothing is written then.
    """
    adapters = [adapter] if isinstance(adapter, (str, os.PathLike)) else list(adapter)
    check_model_files(base, adapters)
    if extra_files is None:
        extra_files = serving_files([*adapters, base])
    report = _core.merge(
        os.fspath(base), [os.fspath(a) for a in adapters], os.fspath(out),
        weights=None if weights is None else [float(w) for w in weights], method=method, density=density,
        seed=seed, svd_rank=svd_rank, dtype=None if dtype == "auto" else dtype,
        max_shard_bytes=parse_size(max_shard_size), overwrite=overwrite,
        extra_files={k: bytes(v) for k, v in extra_files.items()},
    )
    return json.loads(report)
