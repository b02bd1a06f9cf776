"""Prompt tuning (Lester et al., 2021) and P-tuning (Liu et al., 2021), in HF PEFT's ``PROMPT_TUNING`` and
``P_TUNING`` forms.

Both put ``num_virtual_tokens`` learned vectors in front of the input embeddings; the base model is frozen.

- **Prompt tuning** learns the vectors directly (``prompt_embeddings`` ``[n, hidden]``), initialised at random
  (``nn.Embedding``'s N(0, 1), PEFT's ``RANDOM``), from embedding rows of randomly sampled token ids
  (``SAMPLE_VOCAB``), or from the embeddings of a text's tokens repeated/truncated to ``n`` (``TEXT``).
- **P-tuning** learns them through a prompt encoder (PEFT's ``PromptEncoder``): an input embedding
  ``[n, hidden]`` followed by an MLP (Linear-ReLU-Linear-ReLU-Linear, width ``encoder_hidden_size``) or a
  bidirectional LSTM and a two-layer MLP. Only the encoder's *output* is saved (as PEFT does), so a saved
  P-tuning adapter is, for inference, a plain set of virtual-token embeddings.

The injection works wherever the decoder runs (``model.get_decoder()(...)``, ``model(...)``, ``model.generate``):
a forward pre-hook on the decoder turns ``input_ids`` into ``inputs_embeds`` with the virtual tokens inserted and
adjusts ``position_ids``/``attention_mask``; a forward hook removes the virtual positions from the outputs, so
callers see hidden states (and logits) for their own tokens only. Positions follow PEFT: virtual tokens take
positions ``0 … n-1`` and the real tokens ``n, n+1, …``.

Packed batches (no ``attention_mask``, ``position_ids`` restarting at every document, as pyft's training collator
builds them): every document gets its own copy of the virtual tokens, positioned as PEFT would position that
document alone, and transformers' block-diagonal mask (inferred from the restarting positions) keeps documents
apart. With a KV cache the virtual tokens enter only at the first (prefill) step.

Prompt methods are not mergeable into the base weights (:data:`MERGEABLE`, :data:`NOT_MERGEABLE_REASON`).
Saved as PEFT saves them: ``adapter_config.json`` plus ``adapter_model.safetensors`` holding one float32 tensor
``prompt_embeddings`` ``[num_virtual_tokens, hidden]``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory
from pyft.io.files import json_field

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
TENSOR_NAME = "prompt_embeddings"
#: The attribute of the decoder that holds the prompt module.
MODULE_ATTR = "pyft_prompt"

#: Prompt methods cannot be folded into the base weights.
MERGEABLE = False
NOT_MERGEABLE_REASON = (
    "prompt tuning and P-tuning adapters cannot be merged: they add virtual tokens in front of every input, "
    "not a change of the base weights, so there is nothing to fold into the model. Serve the base model plus "
    "the adapter with transformers + PEFT (PeftModel.from_pretrained) or pyft; vLLM and llama.cpp (GGUF) do "
    "not load prompt adapters."
)

_INITS = ("random", "sample_vocab", "text")
_ENCODERS = ("mlp", "lstm")


@dataclass(frozen=True)
class PromptTuningConfig:
    """Prompt tuning (PEFT's ``PromptTuningConfig``).

    Attributes:
        num_virtual_tokens: how many virtual tokens are prepended.
        init: ``random`` (N(0, 1), PEFT's ``RANDOM``), ``sample_vocab`` (embedding rows of uniformly sampled
            token ids, ``SAMPLE_VOCAB``) or ``text`` (the embeddings of ``init_text``'s tokens, repeated or cut
            to ``num_virtual_tokens``, ``TEXT``).
        init_text: the text for ``init: text`` (PEFT's ``prompt_tuning_init_text``).
        tokenizer: the tokenizer directory (or Hub id) for ``init: text`` (PEFT's ``tokenizer_name_or_path``);
            loaded without running any code from it.
    """

    num_virtual_tokens: int = 20
    init: str = "random"
    init_text: str | None = None
    tokenizer: str | None = None
    modules_to_save: list[str] | None = None  # trained in full and saved beside the adapter (pyft.peft.saved_modules)

    def __post_init__(self) -> None:
        _check_count(self.num_virtual_tokens)
        if self.init not in _INITS:
            raise ValueError(f"init: {self.init!r} is not one of {list(_INITS)}")
        if self.init == "text":
            if not self.init_text:
                raise ValueError("init_text: a non-empty text is needed with init: text")
            if not self.tokenizer:
                raise ValueError("tokenizer: a tokenizer directory is needed with init: text")
        elif self.init_text is not None or self.tokenizer is not None:
            field = "init_text" if self.init_text is not None else "tokenizer"
            raise ValueError(f"{field}: only used with init: text (init is {self.init!r})")


@dataclass(frozen=True)
class PTuningConfig:
    """P-tuning (PEFT's ``PromptEncoderConfig``, ``peft_type: P_TUNING``).

    Attributes:
        num_virtual_tokens: how many virtual tokens are prepended.
        encoder: ``mlp`` or ``lstm`` (PEFT's ``encoder_reparameterization_type``).
        encoder_hidden_size: the encoder's width (None: the model's hidden size, as PEFT).
        encoder_num_layers: LSTM layers (PEFT ignores it for the MLP, which always has 3 linear layers).
        encoder_dropout: dropout between LSTM layers (unused by the MLP, as in PEFT).
    """

    num_virtual_tokens: int = 20
    encoder: str = "mlp"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0
    modules_to_save: list[str] | None = None  # trained in full and saved beside the adapter (pyft.peft.saved_modules)

    def __post_init__(self) -> None:
        _check_count(self.num_virtual_tokens)
        if self.encoder not in _ENCODERS:
            raise ValueError(f"encoder: {self.encoder!r} is not one of {list(_ENCODERS)}")
        if self.encoder_hidden_size is not None and (isinstance(self.encoder_hidden_size, bool)
                                                     or not isinstance(self.encoder_hidden_size, int)
                                                     or self.encoder_hidden_size < 1):
            raise ValueError(f"encoder_hidden_size: {self.encoder_hidden_size!r} is not a positive integer")
        if isinstance(self.encoder_num_layers, bool) or not isinstance(self.encoder_num_layers, int) \
                or self.encoder_num_layers < 1:
            raise ValueError(f"encoder_num_layers: {self.encoder_num_layers!r} is not a positive integer")
        if not 0.0 <= float(self.encoder_dropout) < 1.0:
            raise ValueError(f"encoder_dropout: {self.encoder_dropout!r} is not in [0, 1)")


def _check_count(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_virtual_tokens: {n!r} is not a positive integer")


class PromptEmbedding(nn.Module):
    """Prompt tuning's virtual tokens: ``embedding.weight`` ``[n, hidden]`` float32 (PEFT's ``PromptEmbedding``)."""

    def __init__(self, num_virtual_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)  # N(0, 1): PEFT's RANDOM init
        self.adapter_enabled = True

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.num_embeddings

    def prompts(self) -> torch.Tensor:
        """The virtual-token embeddings ``[n, hidden]``."""
        return self.embedding.weight


class PromptEncoder(nn.Module):
    """P-tuning's prompt encoder, with PEFT's parameter names (``embedding``, ``mlp_head``, ``lstm_head``).

    ``reparameterize=False`` builds the embedding alone: a loaded adapter, whose saved tensor is already the
    encoder's output (PEFT's inference mode).
    """

    def __init__(self, num_virtual_tokens: int, token_dim: int, config: PTuningConfig, reparameterize: bool = True
                 ) -> None:
        super().__init__()
        hidden = config.encoder_hidden_size or token_dim
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)
        self.lstm_head: nn.LSTM | None = None
        self.mlp_head: nn.Sequential | None = None
        if reparameterize and config.encoder == "lstm":
            self.lstm_head = nn.LSTM(input_size=token_dim, hidden_size=hidden, num_layers=config.encoder_num_layers,
                                     dropout=config.encoder_dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, token_dim))
        elif reparameterize:
            self.mlp_head = nn.Sequential(nn.Linear(token_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, token_dim))
        self.adapter_enabled = True

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.num_embeddings

    @property
    def reparameterized(self) -> bool:
        """Whether the virtual tokens come out of the encoder (False: the embedding is used as it is)."""
        return self.mlp_head is not None

    def prompts(self) -> torch.Tensor:
        """The virtual-token embeddings ``[n, hidden]`` (the encoder's output)."""
        x = self.embedding.weight
        if self.mlp_head is None:
            return x
        if self.lstm_head is not None:
            x = self.lstm_head(x.unsqueeze(0))[0].squeeze(0)
        return self.mlp_head(x)


# --- injection -------------------------------------------------------------------------------------------------


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuples
        return int(cache[0][0].shape[-2])
    return 0


def _as_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The decoder call's arguments as keywords (positional ones mapped through its signature)."""
    if not args:
        return dict(kwargs)
    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def _insert(embeds: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor, prompts: torch.Tensor,
            from_zero: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert ``prompts`` ``[n, H]`` before every document start.

    Args:
        embeds: ``[B, T, H]`` token embeddings.
        positions: ``[B, T]`` their positions.
        starts: ``[B, T]`` bool, True where a document starts (always at column 0).
        from_zero: give the virtual tokens positions ``0 … n-1`` (one document per row, maybe left-padded);
            otherwise they continue into their document: ``p … p+n-1`` for a document starting at position ``p``
            (0 in packed rows), so transformers keeps them in that document's block.

    Returns:
        ``(embeds', positions', index)``: ``[B, T', H]`` and ``[B, T']`` with the virtual tokens in (rows shorter
        than ``T'`` end in a zero-embedding tail with positions 0, 1, … so it forms its own block), and ``index``
        ``[B, T]``: the column of every real token in the new rows.
    """
    b, t, h = embeds.shape
    n = prompts.shape[0]
    device = embeds.device
    docs = starts.long().cumsum(1)  # 1-based document number of every token
    index = torch.arange(t, device=device).unsqueeze(0) + n * docs
    lengths = t + n * docs[:, -1]
    width = int(lengths.max())
    rows = torch.arange(b, device=device).unsqueeze(1)
    out = embeds.new_zeros(b, width, h).index_put((rows.expand(b, t), index), embeds)
    # every column but the tail is overwritten below; the tail gets positions 0, 1, …
    new_pos = torch.arange(width, device=device).unsqueeze(0) - lengths.unsqueeze(1)
    new_pos = new_pos.index_put((rows.expand(b, t), index), positions + n)
    sb, st = starts.nonzero(as_tuple=True)
    virtual = (st + n * (docs[sb, st] - 1)).unsqueeze(1) + torch.arange(n, device=device)  # [D, n] columns
    out = out.index_put((sb.unsqueeze(1).expand_as(virtual), virtual),
                        prompts.to(embeds.dtype).unsqueeze(0).expand(len(sb), n, h))
    first = torch.zeros_like(st) if from_zero else positions[sb, st]
    new_pos = new_pos.index_put((sb.unsqueeze(1).expand_as(virtual), virtual),
                                first.unsqueeze(1) + torch.arange(n, device=device))
    return out, new_pos, index


def _pre_hook(decoder: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    prompt = getattr(decoder, MODULE_ATTR)
    plans = prompt.__dict__.setdefault("_plans", [])
    plans.append(None)  # what the forward hook strips (None: nothing); set at the end, popped by the forward hook
    if not prompt.adapter_enabled:
        return None
    kwargs = _as_kwargs(decoder, args, kwargs)
    n = prompt.num_virtual_tokens
    mask = kwargs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
        raise ValueError("prompt tuning: `attention_mask` must be a 2-D [batch, tokens] tensor (or None)")
    positions = kwargs.get("position_ids")
    if positions is not None and positions.dim() != 2:
        raise ValueError("prompt tuning: `position_ids` must be [batch, tokens] (multi-axis positions are not supported)")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if _cache_length(cache) > 0:  # a decoding step: the virtual tokens are in the cache already
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
        if positions is not None:
            kwargs["position_ids"] = positions + n
        return (), kwargs
    ids = kwargs.pop("input_ids", None)
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        if ids is None:
            raise ValueError("prompt tuning: the decoder was called with neither input_ids nor inputs_embeds")
        embeds = decoder.get_input_embeddings()(ids)
    b, t = embeds.shape[:2]
    device = embeds.device
    if positions is None:
        positions = torch.arange(t, device=device).unsqueeze(0)
    positions = positions.to(device).expand(b, t)
    starts = torch.zeros(b, t, dtype=torch.bool, device=device)
    starts[:, 0] = True
    packed = mask is None and cache is None
    if packed and t > 1:
        # packed rows: a document starts wherever the position does not follow the previous one (transformers'
        # own rule for its block-diagonal mask, which it applies without a mask and a cache)
        starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    embeds, positions, index = _insert(embeds, positions, starts, prompt.prompts(), from_zero=not packed)
    kwargs["inputs_embeds"] = embeds
    kwargs["position_ids"] = positions
    if mask is not None:
        kwargs["attention_mask"] = torch.cat([mask.new_ones(b, n), mask], dim=1)
    plans[-1] = index
    return (), kwargs


def _strip(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _post_hook(decoder: nn.Module, args: tuple, output: Any) -> Any:
    prompt = getattr(decoder, MODULE_ATTR)
    plans = prompt.__dict__.get("_plans") or [None]
    index = plans.pop()
    if index is None or output is None:  # adapter off, a decoding step, or the forward raised
        return None
    if isinstance(output, tuple):
        return (_strip(output[0], index), *output[1:])
    width = output.last_hidden_state.shape[1]
    output.last_hidden_state = _strip(output.last_hidden_state, index)
    hidden = getattr(output, "hidden_states", None)
    if hidden is not None:
        output.hidden_states = tuple(_strip(h, index) if h.dim() == 3 and h.shape[1] == width else h for h in hidden)
    return output


def _decoder(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    if decoder is None or not hasattr(decoder, "get_input_embeddings"):
        raise ValueError(f"{type(model).__name__} has no decoder (get_decoder()) to put virtual tokens in front of")
    return decoder


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def prompt_module(model: nn.Module) -> PromptEmbedding | PromptEncoder | None:
    """The prompt module of ``model`` (None without a prompt adapter)."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    return getattr(decoder, MODULE_ATTR, None) if decoder is not None else None


def _attach(model: nn.Module, module: PromptEmbedding | PromptEncoder, config: PromptTuningConfig | PTuningConfig,
            trainable: bool = True) -> list[str]:
    decoder = _decoder(model)
    if getattr(decoder, MODULE_ATTR, None) is not None:
        raise ValueError("the model already has a prompt adapter")
    for p in model.parameters():
        p.requires_grad_(False)
    module.to(decoder.get_input_embeddings().weight.device)
    for p in module.parameters():
        p.requires_grad_(trainable)
    setattr(decoder, MODULE_ATTR, module)
    module._handles = (decoder.register_forward_pre_hook(_pre_hook, with_kwargs=True),
                       decoder.register_forward_hook(_post_hook, always_call=True))
    model.pyft_prompt_config = config
    name = next(k for k, m in model.named_modules() if m is module)
    return [name]


def remove_prompt(model: nn.Module) -> nn.Module:
    """Take the prompt adapter off ``model`` (hooks and module), in place; the base model is left as it was."""
    decoder = _decoder(model)
    module = getattr(decoder, MODULE_ATTR, None)
    if module is None:
        raise ValueError("the model has no prompt adapter")
    for handle in module._handles:
        handle.remove()
    delattr(decoder, MODULE_ATTR)
    if hasattr(model, "pyft_prompt_config"):
        del model.pyft_prompt_config
    return model


def _load_tokenizer(ref: str) -> Any:
    """A tokenizer from a directory or Hub id, never running code shipped with it."""
    from transformers import AutoTokenizer

    from pyft.hub import resolve_model

    path = resolve_model(ref, kind="tokenizer")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer: {ref} is not a tokenizer directory")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:  # e.g. a tokenizer that needs its own code: never run
        raise ValueError(f"tokenizer: {ref} cannot be loaded without running code from it or is not a "
                         f"tokenizer ({e})") from None


def _init_ids(config: PromptTuningConfig, vocab: int) -> torch.Tensor | None:
    """Token ids whose embeddings start the virtual tokens (None: keep N(0, 1)), drawn as PEFT draws them."""
    n = config.num_virtual_tokens
    if config.init == "sample_vocab":
        return torch.randint(0, vocab, (n,), dtype=torch.long)
    if config.init == "text":
        ids = list(_load_tokenizer(config.tokenizer)(config.init_text)["input_ids"])
        if not ids:
            raise ValueError(f"init_text: {config.init_text!r} gives no tokens")
        ids = (ids * math.ceil(n / len(ids)))[:n]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"tokenizer: {config.tokenizer} gives token id {bad[0]} outside the model's "
                             f"vocabulary of {vocab}")
        return torch.tensor(ids, dtype=torch.long)
    return None


def apply_prompt_tuning(model: nn.Module, config: PromptTuningConfig) -> list[str]:
    """Freeze ``model`` and put ``config.num_virtual_tokens`` trainable virtual tokens in front of every input.

    The random draws follow PEFT's order (``nn.Embedding`` init, then the sampled ids), so under the same torch
    seed the initial prompt equals PEFT's.

    Returns:
        The name of the prompt module (``model.pyft_prompt``).

    Raises:
        ValueError: the model already has a prompt adapter or no decoder; ``init: text`` whose text gives no tokens.
    """
    decoder = _decoder(model)
    token_dim = _text_config(model).hidden_size
    module = PromptEmbedding(config.num_virtual_tokens, token_dim)
    words = decoder.get_input_embeddings()
    ids = _init_ids(config, words.num_embeddings)
    if ids is not None:
        with torch.no_grad():
            module.embedding.weight.copy_(words(ids.to(words.weight.device)).float())
    return _attach(model, module, config)


def apply_p_tuning(model: nn.Module, config: PTuningConfig) -> list[str]:
    """Freeze ``model`` and add a P-tuning prompt encoder whose output is put in front of every input.

    Parameters are created in PEFT's order (embedding, then LSTM and MLP), so under the same torch seed they
    equal PEFT's.

    Returns:
        The name of the prompt module (``model.pyft_prompt``).
    """
    _decoder(model)
    module = PromptEncoder(config.num_virtual_tokens, _text_config(model).hidden_size, config)
    return _attach(model, module, config)


# --- saving and loading ----------------------------------------------------------------------------------------


def prompt_config_dict(model: nn.Module, config: PromptTuningConfig | PTuningConfig,
                       base_model_name_or_path: str | None, task_type: str = "CAUSAL_LM",
                       revision: str | None = None) -> dict[str, Any]:
    """``adapter_config.json`` as PEFT 0.21 writes it for ``PromptTuningConfig`` / ``PromptEncoderConfig``."""
    from pyft.peft.adapter_io import PEFT_FORMAT_VERSION

    text = _text_config(model)
    out: dict[str, Any] = {
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "modules_to_save": None, "num_attention_heads": text.num_attention_heads,
        "num_layers": text.num_hidden_layers, "num_transformer_submodules": 1,
        "num_virtual_tokens": config.num_virtual_tokens, "peft_version": PEFT_FORMAT_VERSION, "revision": revision,
        "task_type": task_type, "token_dim": text.hidden_size,
    }
    if isinstance(config, PromptTuningConfig):
        out.update({"peft_type": "PROMPT_TUNING", "prompt_tuning_init": config.init.upper(),
                    "prompt_tuning_init_text": config.init_text, "tokenizer_kwargs": None,
                    "tokenizer_name_or_path": config.tokenizer})
    else:
        out.update({"peft_type": "P_TUNING", "encoder_dropout": float(config.encoder_dropout),
                    "encoder_hidden_size": config.encoder_hidden_size or text.hidden_size,
                    "encoder_num_layers": config.encoder_num_layers,
                    "encoder_reparameterization_type": config.encoder.upper()})
    return out


def prompt_embeddings_to_save(model: nn.Module) -> torch.Tensor:
    """The tensor PEFT saves, ``prompt_embeddings`` ``[n, hidden]`` float32 on the CPU: the virtual tokens (for
    P-tuning, the encoder's output, computed without dropout)."""
    module = prompt_module(model)
    if module is None:
        raise ValueError("the model has no prompt adapter to save (apply_prompt_tuning, apply_p_tuning or "
                         "load_adapter first)")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module.prompts().detach().float().cpu().contiguous().clone()
    finally:
        module.train(was_training)
    return out


def save_prompt_adapter(model: nn.Module, out_dir: str | os.PathLike[str], *, base_model_name_or_path: str | None = None,
                        task_type: str = "CAUSAL_LM", revision: str | None = None, overwrite: bool = True) -> Path:
    """Save the prompt-tuning or P-tuning adapter of ``model`` as a PEFT adapter directory (written atomically).

    Args:
        model: a model prepared with :func:`apply_prompt_tuning`, :func:`apply_p_tuning` or loaded with
            :func:`~pyft.peft.load_adapter`.
        out_dir: directory to write.
        base_model_name_or_path: recorded in the config (default: the model's ``name_or_path``).
        task_type: PEFT's ``task_type``.
        revision: the base's Hub revision, recorded as PEFT does.
        overwrite: replace an existing ``out_dir``.
    """
    from safetensors.torch import save_file

    config = getattr(model, "pyft_prompt_config", None)
    if config is None or prompt_module(model) is None:
        raise ValueError("the model has no prompt adapter to save (apply_prompt_tuning, apply_p_tuning or "
                         "load_adapter first)")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None),
                                                                                  "_name_or_path", None)
    tensors = {TENSOR_NAME: prompt_embeddings_to_save(model)}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(prompt_config_dict(model, config, base_model_name_or_path, task_type, revision), indent=2,
                          sort_keys=True)
        (Path(tmp) / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return Path(out_dir)


def prompt_config_from_dict(raw: dict[str, Any], path: Path) -> PromptTuningConfig | PTuningConfig:
    """A :class:`PromptTuningConfig` or :class:`PTuningConfig` from PEFT's ``adapter_config.json``.

    Raises:
        DataError: a field of the wrong JSON type, naming the file and the field.
        ValueError: an unsupported value, naming the file and the field.
    """
    peft_type = raw.get("peft_type")
    subs = json_field(raw, path, "num_transformer_submodules", "positive_int", 1)
    if subs != 1:
        raise ValueError(f"{path}: field `num_transformer_submodules` = {subs} (an encoder-decoder adapter); pyft "
                         "applies prompt adapters to decoder-only models (1)")
    task = raw.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise ValueError(f"{path}: field `task_type` = {task!r}; pyft applies prompt adapters to CAUSAL_LM models")
    n = json_field(raw, path, "num_virtual_tokens", "positive_int", required=True)
    try:
        if peft_type == "PROMPT_TUNING":
            init = str(json_field(raw, path, "prompt_tuning_init", "str", "RANDOM")).lower()
            if init not in _INITS:
                raise ValueError(f"field `prompt_tuning_init` = {raw['prompt_tuning_init']!r} is not one of "
                                 f"{[i.upper() for i in _INITS]}")
            text = json_field(raw, path, "prompt_tuning_init_text", "str") if init == "text" else None
            tokenizer = json_field(raw, path, "tokenizer_name_or_path", "str") if init == "text" else None
            if init == "text" and not (text and tokenizer):  # only the saved tensor matters when loading
                init = "random"
                text = tokenizer = None
            return PromptTuningConfig(num_virtual_tokens=n, init=init, init_text=text, tokenizer=tokenizer)
        if peft_type == "P_TUNING":
            encoder = str(json_field(raw, path, "encoder_reparameterization_type", "str", "MLP")).lower()
            if encoder not in _ENCODERS:
                raise ValueError(f"field `encoder_reparameterization_type` = "
                                 f"{raw['encoder_reparameterization_type']!r} is not MLP or LSTM")
            return PTuningConfig(num_virtual_tokens=n, encoder=encoder,
                                 encoder_hidden_size=json_field(raw, path, "encoder_hidden_size", "positive_int"),
                                 encoder_num_layers=json_field(raw, path, "encoder_num_layers", "positive_int", 2),
                                 encoder_dropout=float(json_field(raw, path, "encoder_dropout", "number", 0.0)))
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: {e}") from None
    raise ValueError(f"{path}: field `peft_type` is {peft_type!r}; expected PROMPT_TUNING or P_TUNING")


def load_prompt_into(model: nn.Module, raw: dict[str, Any], config_path: Path, weights: Path, trainable: bool
                     ) -> list[str]:
    """Apply the prompt-tuning / P-tuning adapter described by ``raw`` (its ``adapter_config.json``) with the tensor
    of ``weights`` to ``model``.

    A P-tuning adapter holds only the encoder's output (PEFT does not save the encoder), so it is loaded as
    virtual tokens used as they are; with ``trainable`` those train directly.

    Raises:
        DataError: a field of the wrong JSON type, naming the file and the field.
        ValueError: a field or tensor that does not fit the base model, naming the file and the field or tensor.
    """
    from safetensors.torch import load_file

    config = prompt_config_from_dict(raw, config_path)
    hidden = _text_config(model).hidden_size
    token_dim = json_field(raw, config_path, "token_dim", "positive_int", hidden)
    if token_dim != hidden:
        raise ValueError(f"{config_path}: field `token_dim` = {token_dim} but the base model's hidden size is "
                         f"{hidden}: the adapter was trained on a different base model")
    saved = load_file(str(weights))
    if TENSOR_NAME not in saved:
        found = sorted(saved)[:3]
        raise ValueError(f"{weights}: no tensor `{TENSOR_NAME}` (found {found}); not a prompt adapter's weights")
    tensor = saved[TENSOR_NAME]
    n = config.num_virtual_tokens
    if tuple(tensor.shape) != (n, hidden):
        raise ValueError(f"{weights}: tensor `{TENSOR_NAME}` has shape {tuple(tensor.shape)} but "
                         f"{config_path.name} (num_virtual_tokens {n}) and the base model (hidden size {hidden}) "
                         f"need {(n, hidden)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{weights}: tensor `{TENSOR_NAME}` has dtype {tensor.dtype}; expected floating point")
    if isinstance(config, PromptTuningConfig):
        module: PromptEmbedding | PromptEncoder = PromptEmbedding(n, hidden)
    else:
        module = PromptEncoder(n, hidden, config, reparameterize=False)
    with torch.no_grad():
        module.embedding.weight.copy_(tensor.float())
    return _attach(model, module, config, trainable=trainable)
