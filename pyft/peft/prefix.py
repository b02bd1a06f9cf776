"""Prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022), in HF PEFT's ``PREFIX_TUNING`` form.

Every attention layer gets ``num_virtual_tokens`` learned key/value pairs placed before the real
tokens: each real token attends to them as if they were earlier tokens, while the base model stays
frozen. The prefix keys are used as stored (no rotary embedding), exactly as PEFT passes them in the KV
cache, and the real tokens take positions ``n, n+1, ...`` after the ``n`` virtual ones.

- **P-tuning v2** ("deep prompt tuning") is this method without reparameterisation: the per-layer
  prefixes are the trained parameters (``PrefixConfig(projection=False)``, ``prefix_config_for("p_tuning_v2")``).
  PEFT has no P-tuning v2 type of its own: P-tuning v2 is PEFT's ``PREFIX_TUNING`` with
  ``prefix_projection: false`` (PEFT's ``P_TUNING`` is P-tuning *v1*, an input-layer prompt encoder), and that
  is how pyft saves it.
- **Prefix tuning** as in the paper trains the prefixes through a two-layer MLP (``Linear, tanh, Linear``,
  hidden width ``encoder_hidden_size``) from a small embedding table (``projection=True``,
  ``prefix_config_for("prefix_tuning")``). The MLP exists only during training: what is saved is its
  *output*, so the saved adapter is the same table as P-tuning v2's (and PEFT loads it as such).

Shapes follow PEFT 0.21 on grouped-query attention: ``token_dim = head_dim * num_key_value_heads`` and
``num_attention_heads = num_key_value_heads``. The saved tensor ``prompt_embeddings`` is float32
``[num_virtual_tokens, num_layers * 2 * token_dim]``; for one virtual token, layer ``l``'s key is the slice
``[2l*token_dim, (2l+1)*token_dim)`` and its value the next one, each laid out ``[kv_head, head_dim]``.

How it runs (the model is changed in place, with forward hooks):

- through ``model.generate`` or ``model(...)`` with a KV cache: the prefix is written into the (empty)
  cache once, a 2-D ``attention_mask`` gets ``n`` leading ones and given ``position_ids`` are shifted by
  ``n`` — what PEFT's ``PeftModelForCausalLM`` does;
- without a cache (``use_cache=False``, pyft's training path through ``model.get_decoder()``, or packed
  rows): each attention layer prepends the prefix to its keys and values, and pyft builds the 4-D mask
  itself. In a packed row (``position_ids`` restarting at each document, no ``attention_mask``) every
  document sees the prefix and only its own earlier tokens, at the positions PEFT gives it alone. This
  path needs ``attn_implementation`` ``sdpa`` or ``eager``.

With HF PEFT 0.21.2 and transformers 5.x, ``PeftModel.generate`` ignores the prefix (transformers renamed
the ``past_key_values`` argument ``cache`` and keeps its own cache): pyft's ``generate`` uses it, and equals
greedy decoding with PEFT's forward.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: The one tensor of a PEFT prefix-tuning adapter.
TENSOR_NAME = "prompt_embeddings"
#: The PEFT release whose on-disk format pyft writes.
PEFT_FORMAT_VERSION = "0.21.2"
#: Attention implementations pyft's cache-free path (training, packed rows) builds masks for.
MASKED_ATTENTION = ("sdpa", "eager")

MERGEABLE = False
NOT_MERGEABLE_REASON = (
    "a prefix adds key/value pairs that every token attends to, with softmax weights that depend on the "
    "query; no change of the weight matrices reproduces that, so a prefix adapter cannot be merged into the "
    "base model. Serve the base model plus the adapter with transformers (pyft generate/chat) or HF PEFT "
    "(PeftModel.from_pretrained); vLLM and llama.cpp (and so Ollama) do not load prefix-tuning adapters."
)

#: Names :func:`prefix_config_for` knows: ``prefix_tuning`` (with the reparameterisation MLP, as the
#: paper) and ``p_tuning_v2`` (deep prompts trained directly).
METHODS = ("prefix_tuning", "p_tuning_v2")


@dataclass(frozen=True)
class PrefixConfig:
    """A learned key/value prefix on every attention layer.

    Attributes:
        num_virtual_tokens: prefix length ``n`` (PEFT's ``num_virtual_tokens``).
        projection: train the prefixes through a two-layer MLP (PEFT's ``prefix_projection``; prefix
            tuning as in the paper). False trains them directly: P-tuning v2.
        encoder_hidden_size: the MLP's hidden width; None means PEFT's default, ``token_dim`` (the key
            width ``head_dim * num_key_value_heads``, the hidden size on a model without GQA).
        init_zero: start with zero prefixes (with the MLP: its output layer at zero), PEFT's
            ``init_weights="zero"``. False draws PEFT's defaults (the embedding from N(0, 1), the MLP as
            ``nn.Linear`` does).
    """

    num_virtual_tokens: int = 20
    projection: bool = False
    encoder_hidden_size: int | None = None
    init_zero: bool = False
    modules_to_save: list[str] | None = None  # trained in full and saved beside the adapter (pyft.peft.saved_modules)

    def __post_init__(self) -> None:
        if isinstance(self.num_virtual_tokens, bool) or not isinstance(self.num_virtual_tokens, int) \
                or self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens: a positive integer, got {self.num_virtual_tokens!r}")
        if self.encoder_hidden_size is not None and (isinstance(self.encoder_hidden_size, bool) or not isinstance(
                self.encoder_hidden_size, int) or self.encoder_hidden_size < 1):
            raise ValueError(f"encoder_hidden_size: a positive integer or null, got {self.encoder_hidden_size!r}")


def prefix_config_for(method: str, **fields: Any) -> PrefixConfig:
    """The :class:`PrefixConfig` of a named method: ``"prefix_tuning"`` (reparameterised through the MLP, as
    Li & Liang) or ``"p_tuning_v2"`` (no MLP); ``fields`` set the other knobs (``num_virtual_tokens``, ...).

    Raises:
        ValueError: an unknown method, or ``projection`` given too.
    """
    if method not in METHODS:
        raise ValueError(f"unknown prefix method {method!r} (expected one of {list(METHODS)})")
    if "projection" in fields:
        raise ValueError(f"projection: fixed by the method {method!r}")
    return PrefixConfig(projection=method == "prefix_tuning", **fields)


@dataclass(frozen=True)
class PrefixShape:
    """Where the prefix goes: ``num_layers`` attention layers of ``num_kv_heads`` heads of ``head_dim``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def token_dim(self) -> int:
        """PEFT's ``token_dim``: the width of one layer's keys (or values) for one virtual token."""
        return self.num_kv_heads * self.head_dim

    @property
    def width(self) -> int:
        """Width of one row of ``prompt_embeddings``: keys and values of every layer."""
        return self.num_layers * 2 * self.token_dim


def prefix_shape(model_config: Any) -> PrefixShape:
    """The prefix shape PEFT 0.21 derives from a model config (the text config of a multimodal one)."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return PrefixShape(cfg.num_hidden_layers, kv, head_dim)


class PrefixEncoder(nn.Module):
    """The trained prefix, with PEFT's parameter names.

    Without projection (or once loaded from a saved adapter) ``embedding.weight`` ``[n, num_layers*2*token_dim]``
    *is* the prefix. With projection it is ``transform(embedding.weight)`` where ``embedding.weight`` is
    ``[n, token_dim]`` and ``transform`` is ``Linear(token_dim, encoder_hidden_size), Tanh,
    Linear(encoder_hidden_size, num_layers*2*token_dim)``. Parameters are float32; the prefix is cast to the
    model's dtype where it is used.
    """

    def __init__(self, shape: PrefixShape, num_virtual_tokens: int, projection: bool, encoder_hidden_size: int,
                 init_zero: bool = False) -> None:
        super().__init__()
        self.shape = shape
        self.num_virtual_tokens = num_virtual_tokens
        self.encoder_hidden_size = encoder_hidden_size
        self.adapter_enabled = True
        d = shape.token_dim
        if projection:
            self.embedding = nn.Embedding(num_virtual_tokens, d)
            self.transform = nn.Sequential(nn.Linear(d, encoder_hidden_size), nn.Tanh(),
                                           nn.Linear(encoder_hidden_size, shape.width))
            if init_zero:
                nn.init.zeros_(self.transform[2].weight)
                nn.init.zeros_(self.transform[2].bias)
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, shape.width)
            self.transform = None
            if init_zero:
                nn.init.zeros_(self.embedding.weight)

    def forward(self) -> torch.Tensor:
        """The whole prefix, ``[n, num_layers*2*token_dim]`` float32: what PEFT saves as ``prompt_embeddings``."""
        if self.transform is None:
            return self.embedding.weight
        return self.transform(self.embedding.weight)

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of attention layer ``layer``, each ``[num_kv_heads, n, head_dim]`` float32.

        Computed from the parameters at each call (with projection, only that layer's rows of the output
        layer), so nothing is kept between forward passes and activation checkpointing may recompute it.
        """
        s = self.shape
        lo, hi = 2 * layer * s.token_dim, 2 * (layer + 1) * s.token_dim
        if self.transform is None:
            block = self.embedding.weight[:, lo:hi]
        else:
            first, _, last = self.transform
            hidden = torch.tanh(first(self.embedding.weight))
            block = nn.functional.linear(hidden, last.weight[lo:hi], last.bias[lo:hi])
        kv = block.reshape(self.num_virtual_tokens, 2, s.num_kv_heads, s.head_dim).permute(1, 2, 0, 3)
        return kv[0], kv[1]


def prefix_encoder(model: nn.Module) -> PrefixEncoder | None:
    """The :class:`PrefixEncoder` of ``model``, or None."""
    return next((m for m in model.modules() if isinstance(m, PrefixEncoder)), None)


# ---------------------------------------------------------------------------------------------------------
# Injection


def _cache_argument(fn: Any) -> str:
    """The name under which ``fn`` takes the KV cache (transformers 5 renamed ``past_key_values`` ``cache``)."""
    params = inspect.signature(fn).parameters
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in params:
            return name
    raise ValueError(f"{getattr(fn, '__qualname__', fn)} takes no KV cache argument; pyft cannot add a prefix to it")


def _marked(cache: Any) -> bool:
    return getattr(cache, "pyft_prefix_tokens", None) is not None


class _PrefixedKV:
    """Stands for the KV cache of one attention call: prepends the layer's prefix to the keys and values the
    (optional) real cache returns. Built afresh at every call, so nothing is stored twice on a recompute."""

    def __init__(self, encoder: PrefixEncoder, layer: int, inner: Any) -> None:
        self._encoder, self._layer, self._inner = encoder, layer, inner

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self._inner is not None:
            key_states, value_states = self._inner.update(key_states, value_states, layer_idx, *args, **kwargs)
        pk, pv = self._encoder.layer_kv(self._layer)
        b = key_states.shape[0]
        pk = pk.to(key_states.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        pv = pv.to(value_states.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([pk, key_states], dim=-2), torch.cat([pv, value_states], dim=-2)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class _AttentionHook:
    """Forward pre-hook of one attention module: with no cache holding the prefix, hand the module a
    :class:`_PrefixedKV` in place of its cache argument."""

    def __init__(self, encoder: PrefixEncoder, layer: int, argument: str) -> None:
        self.encoder, self.layer, self.argument = encoder, layer, argument

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self.encoder.adapter_enabled:
            return None
        cache = kwargs.get(self.argument)
        if cache is not None and _marked(cache):
            return None  # the prefix is in the cache already
        kwargs[self.argument] = _PrefixedKV(self.encoder, self.layer, cache)
        return args, kwargs


def _document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the index of its document within the row: a new one wherever the position does not go up by
    one (transformers' rule for packed rows, ``find_packed_sequence_indices``)."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


class _DecoderHook:
    """Forward pre-hook of the decoder (``model.get_decoder()``): the KV cache, mask and positions."""

    def __init__(self, encoder: PrefixEncoder, decoder: nn.Module, argument: str) -> None:
        self.encoder, self.argument = encoder, argument
        self.names = list(inspect.signature(decoder.forward).parameters)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        enc = self.encoder
        if not enc.adapter_enabled:
            return None
        kwargs = dict(kwargs)
        for name, value in zip(self.names, args):
            kwargs[name] = value
        for alias in ("cache", "past_key_values"):
            if alias != self.argument and alias in kwargs:
                value = kwargs.pop(alias)
                if value is not None:
                    kwargs[self.argument] = value
        ref = kwargs.get("input_ids")
        if ref is None:
            ref = kwargs.get("inputs_embeds")
        if ref is None:
            return (), kwargs  # the model raises its own error
        mask, positions, cache = kwargs.get("attention_mask"), kwargs.get("position_ids"), kwargs.get(self.argument)
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim != 2):
            raise ValueError("prefix tuning: attention_mask must be a 2-D [batch, tokens] tensor of 0/1 (pyft adds "
                             "the prefix to it); a prepared 4-D mask or a mask dict is not supported")
        if positions is not None and positions.ndim == 1:
            positions = positions.unsqueeze(0)
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(module.config, "use_cache", True)
        packed = (positions is not None and mask is None
                  and bool((_document_ids(positions)[:, -1] > 0).any()))
        if cache is None and (not use_cache or packed):
            return (), self._without_cache(module, kwargs, ref, mask, positions)
        return (), self._with_cache(module, kwargs, ref, mask, positions, cache)

    def _without_cache(self, module: nn.Module, kwargs: dict, ref: torch.Tensor, mask: torch.Tensor | None,
                       positions: torch.Tensor | None) -> dict:
        """No KV cache: the attention hooks prepend the prefix; here the positions (shifted by ``n``) and an
        explicit 4-D mask: every token sees the prefix, then causally the tokens of its own document that
        ``attention_mask`` keeps."""
        impl = getattr(module.config, "_attn_implementation", None) or "eager"
        if impl not in MASKED_ATTENTION:
            raise ValueError(f"prefix tuning without a KV cache (training, packed rows) needs attn_implementation "
                             f"'sdpa' or 'eager'; this model uses {impl!r}: load it with attn_implementation='sdpa'")
        n = self.encoder.num_virtual_tokens
        b, length = ref.shape[:2]
        device = ref.device
        if positions is None:
            positions = torch.arange(length, device=device).unsqueeze(0)
        positions = positions.to(device).expand(b, -1)
        idx = torch.arange(length, device=device)
        allowed = (idx[None, :, None] >= idx[None, None, :]).expand(b, -1, -1)
        if mask is None:
            docs = _document_ids(positions)
            allowed = allowed & (docs[:, :, None] == docs[:, None, :])
        else:
            allowed = allowed & mask.to(device=device, dtype=torch.bool)[:, None, :]
        full = torch.cat([allowed.new_ones(b, length, n), allowed], dim=-1)[:, None]
        if impl == "eager":
            dtype = ref.dtype if ref.is_floating_point() else module.get_input_embeddings().weight.dtype
            full = torch.zeros(full.shape, dtype=dtype, device=device).masked_fill(~full, torch.finfo(dtype).min)
        kwargs["attention_mask"] = full
        kwargs["position_ids"] = positions + n
        kwargs["use_cache"] = False
        kwargs[self.argument] = None
        return kwargs

    def _with_cache(self, module: nn.Module, kwargs: dict, ref: torch.Tensor, mask: torch.Tensor | None,
                    positions: torch.Tensor | None, cache: Any) -> dict:
        """A KV cache (generation): the prefix enters it once, before the first real token; a 2-D mask gets
        ``n`` leading ones and given positions move by ``n``, as PEFT does."""
        enc = self.encoder
        n = enc.num_virtual_tokens
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=module.config)
            kwargs[self.argument] = cache
        if not _marked(cache):
            held = cache.get_seq_length()
            if held:
                raise ValueError(f"prefix tuning: the KV cache already holds {held} tokens computed without the "
                                 "prefix; start from an empty cache")
            dtype = ref.dtype if ref.is_floating_point() else module.get_input_embeddings().weight.dtype
            b = ref.shape[0]
            for layer in range(enc.shape.num_layers):
                k, v = enc.layer_kv(layer)
                cache.update(k.to(dtype).unsqueeze(0).expand(b, -1, -1, -1),
                             v.to(dtype).unsqueeze(0).expand(b, -1, -1, -1), layer)
            cache.pyft_prefix_tokens = n
        past = cache.get_seq_length()
        length = ref.shape[1]
        if mask is not None:
            if mask.shape[1] == past - n + length:
                mask = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
            elif mask.shape[1] != past + length:
                raise ValueError(f"prefix tuning: attention_mask covers {mask.shape[1]} tokens; expected "
                                 f"{past - n + length} (the cached and new tokens, without the prefix)")
            kwargs["attention_mask"] = mask
        if positions is not None:
            kwargs["position_ids"] = positions + n
        return kwargs


def _check_model(model: nn.Module) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """The decoder and its ``(name, attention module)`` pairs, refusing models pyft cannot add a prefix to."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder"):
        raise ValueError("prefix tuning needs a transformers causal LM (a model with config and get_decoder())")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("prefix tuning: encoder-decoder models are not supported by pyft")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if (layer_types and any(t != "full_attention" for t in layer_types)) or (
            not layer_types and getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)):
        raise ValueError("prefix tuning: models with sliding-window (or other non-full) attention layers are not "
                         "supported by pyft")
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"prefix tuning: {type(decoder).__name__} has no `layers`; pyft cannot find its attention")
    dname = next(name for name, m in model.named_modules() if m is decoder)
    attention = []
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or getattr(attn, "layer_idx", i) != i:
            raise ValueError(f"prefix tuning: layer {i} of {type(decoder).__name__} has no self_attn of layer {i}")
        attention.append((f"{dname}.layers.{i}.self_attn" if dname else f"layers.{i}.self_attn", attn))
    if len(attention) != prefix_shape(config).num_layers:
        raise ValueError(f"prefix tuning: {len(attention)} decoder layers but num_hidden_layers = "
                         f"{prefix_shape(config).num_layers}")
    return decoder, attention


def _install(model: nn.Module, config: PrefixConfig, encoder: PrefixEncoder) -> list[str]:
    decoder, attention = _check_model(model)
    device = model.get_input_embeddings().weight.device
    encoder.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    decoder.prefix_encoder = encoder
    for p in encoder.parameters():
        p.requires_grad_(True)
    decoder.register_forward_pre_hook(_DecoderHook(encoder, decoder, _cache_argument(decoder.forward)),
                                      with_kwargs=True)
    for i, (_, attn) in enumerate(attention):
        attn.register_forward_pre_hook(_AttentionHook(encoder, i, _cache_argument(attn.forward)), with_kwargs=True)
    model.pyft_prefix_config = config
    return [name for name, _ in attention]


def apply_prefix_tuning(model: nn.Module, config: PrefixConfig) -> list[str]:
    """Freeze ``model`` and give each of its attention layers a trainable prefix, in place.

    The :class:`PrefixEncoder` (its only trainable parameters) becomes ``model.get_decoder().prefix_encoder``.

    Returns:
        The names of the attention modules that receive the prefix.

    Raises:
        ValueError: the model already has a prefix, or pyft cannot add one to it (encoder-decoder,
            sliding-window layers, no ``layers``/``self_attn``).
    """
    if prefix_encoder(model) is not None:
        raise ValueError("the model already has a prefix-tuning adapter")
    _check_model(model)
    shape = prefix_shape(model.config)
    hidden = config.encoder_hidden_size or shape.token_dim
    encoder = PrefixEncoder(shape, config.num_virtual_tokens, config.projection, hidden, config.init_zero)
    return _install(model, config, encoder)


# ---------------------------------------------------------------------------------------------------------
# PEFT's format


def prefix_config_dict(config: PrefixConfig, shape: PrefixShape, encoder_hidden_size: int,
                       base_model_name_or_path: str | None, task_type: str = "CAUSAL_LM",
                       revision: str | None = None) -> dict[str, Any]:
    """``adapter_config.json`` exactly as PEFT 0.21.2 writes it for ``PrefixTuningConfig``."""
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "encoder_hidden_size": encoder_hidden_size,
        "inference_mode": True,
        "init_weights": "zero" if config.init_zero else None,
        "modules_to_save": None,
        "num_attention_heads": shape.num_kv_heads,
        "num_layers": shape.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": config.num_virtual_tokens,
        "peft_type": "PREFIX_TUNING",
        "peft_version": PEFT_FORMAT_VERSION,
        "prefix_projection": config.projection,
        "revision": revision,
        "task_type": task_type,
        "token_dim": shape.token_dim,
    }


def save_prefix_adapter(model: nn.Module, out_dir: str | os.PathLike[str], *,
                        base_model_name_or_path: str | None = None, task_type: str = "CAUSAL_LM",
                        revision: str | None = None, overwrite: bool = True) -> Path:
    """Save the prefix of ``model`` as a PEFT ``PREFIX_TUNING`` adapter directory (written atomically).

    ``adapter_model.safetensors`` holds the one float32 tensor ``prompt_embeddings``; with projection it is
    the MLP's output (the MLP itself is not saved, as PEFT).
    """
    from safetensors.torch import save_file

    config = getattr(model, "pyft_prefix_config", None)
    encoder = prefix_encoder(model)
    if config is None or encoder is None:
        raise ValueError("the model has no prefix-tuning adapter to save (apply_prefix_tuning or load_adapter first)")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None) or getattr(
            getattr(model, "config", None), "_name_or_path", None)
    with torch.no_grad():
        table = encoder().detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    raw = prefix_config_dict(config, encoder.shape, encoder.encoder_hidden_size, base_model_name_or_path,
                             task_type, revision)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file({TENSOR_NAME: table}, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt"})
        (Path(tmp) / CONFIG_NAME).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out_dir)


def prefix_config_from_dict(raw: dict[str, Any], path: Path, shape: PrefixShape) -> tuple[PrefixConfig, int]:
    """``(config, encoder_hidden_size)`` from PEFT's ``adapter_config.json`` (``peft_type: PREFIX_TUNING``),
    checked against the model's ``shape``.

    Raises:
        DataError: a field of the wrong type.
        ValueError: a field whose value does not fit this model or pyft, naming the file and the field.
    """
    from pyft.io.files import json_field

    n = json_field(raw, path, "num_virtual_tokens", "positive_int", required=True)
    submodules = json_field(raw, path, "num_transformer_submodules", "positive_int", 1)
    if submodules != 1:
        raise ValueError(f"{path}: field `num_transformer_submodules` = {submodules}: an encoder-decoder adapter; "
                         "pyft loads prefix adapters of decoder-only models")
    if json_field(raw, path, "modules_to_save", "list"):
        raise ValueError(f"{path}: field `modules_to_save` is not supported for prefix-tuning adapters by pyft")
    for field, want in (("num_layers", shape.num_layers), ("num_attention_heads", shape.num_kv_heads),
                        ("token_dim", shape.token_dim)):
        got = json_field(raw, path, field, "positive_int")
        if got is not None and got != want:
            raise ValueError(f"{path}: field `{field}` = {got} but this base model needs {want} (num_layers "
                             f"{shape.num_layers}, {shape.num_kv_heads} KV heads of {shape.head_dim}): the adapter "
                             "was made for a different base model")
    projection = json_field(raw, path, "prefix_projection", "bool", False)
    hidden = json_field(raw, path, "encoder_hidden_size", "positive_int", shape.token_dim)
    init = json_field(raw, path, "init_weights", "str")
    if init not in (None, "zero"):
        raise ValueError(f"{path}: field `init_weights` = {init!r}: PEFT knows only null and \"zero\"")
    return PrefixConfig(num_virtual_tokens=n, projection=projection, encoder_hidden_size=hidden,
                        init_zero=init == "zero"), hidden


def load_prefix_into(model: nn.Module, raw: dict[str, Any], config_path: Path, weights: Path,
                     trainable: bool) -> list[str]:
    """Apply the prefix-tuning adapter described by ``raw`` (its ``adapter_config.json``) with the tensor of
    ``weights`` to ``model``, checking fields and shapes.

    The prefix is loaded as the table it is saved as, also for an adapter trained with projection (the MLP
    is not saved); ``trainable`` keeps that table trainable.

    Raises:
        ValueError: the config or the tensor does not fit the base model (the file and field or tensor named).
    """
    from safetensors.torch import load_file

    shape = prefix_shape(model.config)
    config, hidden = prefix_config_from_dict(raw, config_path, shape)
    saved = load_file(str(weights))
    extra = sorted(set(saved) - {TENSOR_NAME})
    if TENSOR_NAME not in saved or extra:
        raise ValueError(f"{weights}: a prefix-tuning adapter holds one tensor `{TENSOR_NAME}`; "
                         + (f"`{TENSOR_NAME}` is missing" if TENSOR_NAME not in saved else f"found also `{extra[0]}`"))
    table = saved[TENSOR_NAME]
    want = (config.num_virtual_tokens, shape.width)
    if tuple(table.shape) != want:
        raise ValueError(f"{weights}: tensor `{TENSOR_NAME}` has shape {tuple(table.shape)} but {config_path.name} "
                         f"(field `num_virtual_tokens` = {config.num_virtual_tokens}) and the base model "
                         f"({shape.num_layers} layers x 2 x token_dim {shape.token_dim}) need {want}")
    if prefix_encoder(model) is not None:
        raise ValueError("the model already has a prefix-tuning adapter")
    encoder = PrefixEncoder(shape, config.num_virtual_tokens, False, hidden)
    with torch.no_grad():
        encoder.embedding.weight.copy_(table.float())
    adapted = _install(model, config, encoder)
    encoder.embedding.weight.requires_grad_(trainable)
    return adapted


def apply_p_tuning_v2(model: nn.Module, config: PrefixConfig) -> list[str]:
    """P-tuning v2 (deep prompts in every layer): :func:`apply_prefix_tuning` without the MLP.

    Raises:
        ValueError: ``config.projection`` is set (that is prefix tuning with reparameterisation).
    """
    if config.projection:
        raise ValueError("projection: P-tuning v2 trains the prefixes directly; for the MLP reparameterisation "
                         "use tuning prefix_tuning (prefix_tuning.projection: true)")
    return apply_prefix_tuning(model, config)
