"""``pyft.load_model``: a transformers causal LM from a local directory, optionally with an adapter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    if isinstance(dtype, str) and dtype in _DTYPES:
        return getattr(torch, _DTYPES[dtype])
    raise ValueError(f"unknown dtype {dtype!r} (expected auto, float32, float16 or bfloat16)")


def check_model_dir(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a local transformers model directory; name what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: model directory not found")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: no config.json (not a transformers model directory)")
    weights = list(p.glob("*.safetensors")) + list(p.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{p}: no model weights (*.safetensors or pytorch_model*.bin)")
    return p


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: Any = "auto",
    device: Any = None,
    adapter: str | os.PathLike[str] | None = None,
    attn_implementation: str | None = None,
    trainable_adapter: bool = False,
):
    """Load a causal LM from a local directory (nothing is downloaded).

    Args:
        path: a transformers model directory (``config.json`` + safetensors weights).
        dtype: ``auto`` (the checkpoint's dtype), ``float32``, ``float16``/``fp16``,
            ``bfloat16``/``bf16`` or a ``torch.dtype``.
        device: where to put the model (e.g. ``"cuda"``); default CPU.
        adapter: a PEFT-format LoRA adapter directory to apply (see :func:`pyft.peft.load_adapter`).
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``... (transformers' choice if None).
        trainable_adapter: keep the loaded adapter trainable.

    Returns:
        A ``transformers`` ``PreTrainedModel`` in eval mode.
    """
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype), "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    if device is not None:
        model.to(device)
    if adapter is not None:
        from pyft.peft import load_adapter

        load_adapter(model, adapter, trainable=trainable_adapter)
    return model.eval()
