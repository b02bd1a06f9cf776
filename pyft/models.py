"""``pyft.load_model``: a transformers causal LM from a local directory or Hub id, optionally with an adapter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyft.io.dtypes import parse_float, torch_dtype


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    row = parse_float(dtype)
    if row is not None:
        return torch_dtype(row)
    raise ValueError(f"unknown dtype {dtype!r} (expected auto, float32, float16 or bfloat16)")


def check_model_dir(path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """Check that ``path`` is a transformers model directory; name what is missing.

    ``path`` may also be a Hugging Face Hub id (``owner/name``, ``owner/name@revision``; ``revision``
    pins it too): its config, tokenizer and safetensors weights are fetched into the Hub cache (see
    :mod:`pyft.hub`) and the snapshot directory is checked and returned. A local path wins.
    """
    from pyft.hub import resolve_model

    p = resolve_model(path, revision, kind="model")
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
    quantize: str | None = None,
    compute_dtype: Any = None,
    quant_blocksize: int = 64,
    double_quant: bool = True,
):
    """Load a causal LM from a local directory or a Hugging Face Hub id.

    Args:
        path: a transformers model directory (``config.json`` + safetensors weights), or a Hub id
            (``owner/name[@revision]``) fetched into the Hub cache (safetensors only, see :mod:`pyft.hub`).
        dtype: ``auto`` (the checkpoint's dtype), ``float32``, ``float16``/``fp16``,
            ``bfloat16``/``bf16`` or a ``torch.dtype``.
        device: where to put the model (e.g. ``"cuda"``); default CPU.
        adapter: a PEFT-format LoRA adapter directory to apply (see :func:`pyft.peft.load_adapter`).
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``... (transformers' choice if None).
        trainable_adapter: keep the loaded adapter trainable.
        quantize: ``"nf4"`` to quantize every decoder linear layer to 4-bit NormalFloat while
            loading (QLoRA's base; bit-identical to bitsandbytes), streaming from the safetensors
            files so the full-precision model is never in memory. A checkpoint already saved in
            bitsandbytes' 4-bit format loads as NF4 without this.
        compute_dtype: matmul dtype of the NF4 layers (default: ``dtype``, bf16 when ``auto``).
        quant_blocksize: NF4 block size (64, as bitsandbytes).
        double_quant: also quantize the NF4 block scales (QLoRA's double quantization).

    Returns:
        A ``transformers`` ``PreTrainedModel`` in eval mode.
    """
    from transformers import AutoModelForCausalLM

    from pyft.quant.loader import read_model_config

    p = check_model_dir(path)
    if quantize not in (None, "nf4"):
        raise ValueError(f"unknown quantize {quantize!r} (expected None or 'nf4')")
    _, config = read_model_config(p)  # a regular file holding a JSON object with well-typed fields
    if quantize == "nf4" or getattr(config, "quantization_config", None) is not None:
        import torch

        from pyft.quant.loader import load_nf4_model

        load_dtype = _resolve_dtype(dtype)
        if load_dtype == "auto":
            load_dtype = torch.bfloat16
        model = load_nf4_model(p, dtype=load_dtype, compute_dtype=_resolve_dtype(compute_dtype) if compute_dtype
                               else None, device=device, blocksize=quant_blocksize, double_quant=double_quant,
                               attn_implementation=attn_implementation)
        if adapter is not None:
            from pyft.peft import load_adapter

            load_adapter(model, adapter, trainable=trainable_adapter)
        return model.eval()
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


def load_reward_model(path: str | os.PathLike[str], *, dtype: Any = "auto", device: Any = None,
                      pad_token_id: int | None = None, attn_implementation: str | None = None):
    """A causal LM directory loaded as a one-label sequence-classification model (a reward model).

    The ``score`` head is new (random, seeded by torch's RNG) unless the directory already holds a
    sequence-classification model. ``pad_token_id`` is recorded in the config: transformers reads
    the score at the last token that is not padding.

    Returns:
        A ``transformers`` ``*ForSequenceClassification`` model with ``num_labels=1``, in eval mode.
    """
    return load_sequence_classifier(path, {"num_labels": 1}, dtype=dtype, device=device, pad_token_id=pad_token_id,
                                    attn_implementation=attn_implementation)


def load_sequence_classifier(path: str | os.PathLike[str], labels: dict[str, Any], *, dtype: Any = "auto",
                             device: Any = None, pad_token_id: int | None = None,
                             attn_implementation: str | None = None, quantize: str | None = None,
                             compute_dtype: Any = None, quant_blocksize: int = 64, double_quant: bool = True):
    """A causal LM directory loaded as a ``*ForSequenceClassification`` model.

    Args:
        labels: config fields of the classes: ``num_labels`` and optionally ``id2label``,
            ``label2id``, ``problem_type`` (:meth:`pyft.classify.labels.LabelMap.model_config`).
        quantize: ``"nf4"``: the decoder's linear layers in 4-bit NormalFloat (QLoRA's base, see
            :func:`load_model`); the ``score`` head stays in ``dtype``.
        Others as :func:`load_model`.

    The ``score`` head is new (random: transformers' initialisation, seeded by torch's RNG) unless
    the directory already holds a sequence-classification model. ``pad_token_id`` is recorded in the
    config: transformers reads the logits at the last token that is not padding.

    Returns:
        The model, in eval mode.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if quantize is not None:
        lm = load_model(path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                        quantize=quantize, compute_dtype=compute_dtype, quant_blocksize=quant_blocksize,
                        double_quant=double_quant)
        return _classifier_around(lm, labels, pad_token_id)
    p = check_model_dir(path)
    kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype), "local_files_only": True, **labels}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(p), **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    if device is not None:
        model.to(device)
    return model.eval()


def _classifier_around(lm: Any, labels: dict[str, Any], pad_token_id: int | None) -> Any:
    """A ``*ForSequenceClassification`` model over the decoder of the loaded causal LM ``lm`` (its
    weights, quantized or not, are reused) with a new ``score`` head, initialised as transformers does."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(lm.config)
    for key, value in labels.items():
        setattr(config, key, value)
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    config.architectures = None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    setattr(model, model.base_model_prefix, lm.get_decoder())
    embed = lm.get_input_embeddings().weight
    dtype = next((p.dtype for p in lm.get_output_embeddings().parameters()), embed.dtype)
    model.score = torch.nn.Linear(config.hidden_size, config.num_labels, bias=False, device=embed.device, dtype=dtype)
    model.score.weight.data.normal_(mean=0.0, std=getattr(config, "initializer_range", 0.02))
    return model.eval()
