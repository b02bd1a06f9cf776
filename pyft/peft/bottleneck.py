"""Bottleneck adapters: Houlsby et al. (2019) and Pfeiffer et al. (2021), for decoder-only LMs.

An adapter is a small residual MLP applied to every token's hidden state ``x`` (width ``h``):

    f(x) = LN_after( s · W_up · σ(W_down · LN_before(x) + b_down) + b_up ),    x ← x + f(x)

``W_down [m, h]``, ``W_up [h, m]`` with ``m = max(1, int(h // reduction_factor))``; ``σ`` is ``relu``
(default), ``gelu`` (exact erf form), ``silu`` (= ``swish``) or ``tanh``; ``s`` is ``scaling`` (1 by
default, He et al. 2021); the two layer norms (``ln_before``, ``ln_after``: ``nn.LayerNorm``, ε 1e-5)
are optional and off by default; ``dropout`` acts on the update during training. ``W_up`` and ``b_up``
start at zero and ``LN_after(0) = 0``, so a fresh adapter leaves the model's outputs unchanged;
``W_down`` starts as ``nn.Linear``'s Kaiming-uniform, ``b_down`` at zero (AdapterHub's ``mam_adapter``
initialisation).

Where the adapters go, in each decoder layer (``model.get_decoder().layers``; the attention block is the
layer's ``self_attn``, the FFN its ``mlp``, or ``attn`` / ``feed_forward``):

- ``kind="houlsby"``: one adapter after the attention block and one after the FFN;
- ``kind="pfeiffer"``: one adapter after the FFN only.

``placement`` says what the adapter reads:

- ``"before_residual"`` (Houlsby's default): the sublayer's output ``o``, before the layer adds it to its
  residual stream ``r``: ``r + o + f(o)``;
- ``"after_residual"`` (Pfeiffer's default): the residual stream after the add: ``y + f(y)``, ``y = r + o``.

These are AdapterHub's ``DoubleSeqBnConfig`` (``original_ln_before=False``) and ``SeqBnConfig``
(``original_ln_before=True``, ``residual_before_ln=True``) as AdapterHub computes them on pre-norm decoders
such as Llama, where no layer norm follows the residual add. Layers in ``leave_out`` get no adapter.
In Gemma 2/3 layers (a norm after each sublayer) ``before_residual`` adapts the sublayer's output before
that norm; ``after_residual`` is refused there for the attention adapter (and in layers without an
``input_layernorm``, whose input it reads).

The adapters are attached with forward hooks, so the base model's module paths and parameter names do
not change, and they act whichever way the model is called: ``model(...)``, ``model.get_decoder()(...)``,
``generate``. They work per token, so packed rows need nothing special. Adapter parameters are float32
whatever the base dtype; the update is added in float32 and the sum cast back once.

Not mergeable: the non-linearity between the two projections cannot be folded into the base weights, so
``pyft-merge``/``pyft-export`` refuse these adapters (:data:`NOT_MERGEABLE_REASON`). Serve the base model
plus the adapter with ``pyft generate --adapter`` or transformers + :func:`pyft.peft.load_adapter`;
vLLM and llama.cpp do not load bottleneck adapters.

On-disk format (pyft's own, version 1: HF PEFT has no bottleneck adapters, and AdapterHub's ``adapters``
library requires transformers 4.x): a directory with

- ``adapter_config.json``: ``"peft_type": "PYFT_BOTTLENECK"`` (not a PEFT type, so PEFT refuses the
  directory instead of misreading it), ``"pyft_format_version": 1``, ``task_type``,
  ``base_model_name_or_path``, ``revision``, every :class:`BottleneckConfig` field under its own name
  (``kind``, ``reduction_factor``, ``non_linearity``, ``placement`` resolved to its value, ``bias``,
  ``ln_before``, ``ln_after``, ``scaling``, ``dropout``, ``leave_out``), and for information
  ``hidden_size`` and ``bottleneck_size``;
- ``adapter_model.safetensors`` (metadata ``{"format": "pt"}``), float32 tensors named after the module
  paths as PEFT names its tensors: ``base_model.model.<sublayer path>.bottleneck.<part>``, e.g.
  ``base_model.model.model.layers.3.mlp.bottleneck.down.weight`` ``[m, h]``, ``….down.bias`` ``[m]``,
  ``….up.weight`` ``[h, m]``, ``….up.bias`` ``[h]``, ``….norm_before.weight``/``.bias`` and
  ``….norm_after.weight``/``.bias`` ``[h]`` when enabled; the attention adapter sits under ``self_attn``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pyft._atomic import atomic_directory

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: ``peft_type`` of pyft's bottleneck adapter directories (no PEFT type: PEFT refuses them loudly).
PEFT_TYPE = "PYFT_BOTTLENECK"
#: Version of the on-disk format described in the module docstring.
FORMAT_VERSION = 1
#: Bottleneck adapters cannot be merged into the base weights.
MERGEABLE = False
NOT_MERGEABLE_REASON = (
    "bottleneck adapters cannot be merged: the non-linearity between their down- and up-projection cannot be "
    "folded into the base model's weights, so there is no merged model (nor GGUF or vLLM export of one). Serve the "
    "base model plus the adapter with `pyft generate --adapter` or with transformers and "
    "pyft.peft.load_adapter; vLLM and llama.cpp do not load bottleneck adapters."
)

KINDS = ("pfeiffer", "houlsby")
PLACEMENTS = ("before_residual", "after_residual")
NON_LINEARITIES = ("relu", "gelu", "silu", "swish", "tanh")
#: Attribute names of a decoder layer's attention block and FFN, tried in order.
ATTENTION_NAMES = ("self_attn", "attn", "attention")
FFN_NAMES = ("mlp", "feed_forward", "ffn")
#: Each kind's adapted sublayers and default placement.
_KIND_SUBLAYERS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
_KIND_PLACEMENT = {"houlsby": "before_residual", "pfeiffer": "after_residual"}
_CHILD = "bottleneck"


@dataclass(frozen=True)
class BottleneckConfig:
    """A bottleneck adapter configuration.

    Attributes:
        kind: ``"pfeiffer"`` (an adapter after each FFN) or ``"houlsby"`` (after each attention block and
            each FFN).
        reduction_factor: bottleneck width ``m = max(1, int(hidden_size // reduction_factor))`` (AdapterHub's
            rule; below 1 the adapter widens).
        non_linearity: ``relu``, ``gelu`` (erf form), ``silu`` or its alias ``swish``, ``tanh``.
        placement: ``"before_residual"`` (the adapter reads the sublayer's output, before the residual add),
            ``"after_residual"`` (it reads the residual stream after the add), or None: the kind's default
            (Houlsby before, Pfeiffer after).
        bias: biases on both projections.
        ln_before: a new LayerNorm on the adapter's input (inside the adapter branch).
        ln_after: a new LayerNorm on the adapter's update, before it is added back.
        scaling: constant factor on the update.
        dropout: dropout probability on the update, during training.
        leave_out: decoder layer indices (from 0) that get no adapter.
    """

    kind: str = "pfeiffer"
    reduction_factor: float = 16.0
    non_linearity: str = "relu"
    placement: str | None = None
    bias: bool = True
    ln_before: bool = False
    ln_after: bool = False
    scaling: float = 1.0
    dropout: float = 0.0
    leave_out: list[int] = field(default_factory=list)
    modules_to_save: list[str] | None = None  # trained in full and saved beside the adapter (pyft.peft.saved_modules)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {list(KINDS)}")
        rf = self.reduction_factor
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not math.isfinite(rf) or rf <= 0:
            raise ValueError(f"reduction_factor: must be a positive number, got {rf!r}")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity: {self.non_linearity!r} is not one of {list(NON_LINEARITIES)}")
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ValueError(f"placement: {self.placement!r} is not one of {list(PLACEMENTS)} (or null)")
        for name in ("bias", "ln_before", "ln_after"):
            if getattr(self, name) is not True and getattr(self, name) is not False:
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) \
                or not math.isfinite(self.scaling):
            raise ValueError(f"scaling: must be a finite number, got {self.scaling!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.leave_out, (list, tuple)) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.leave_out):
            raise ValueError(f"leave_out: expected a list of layer indices (integers ≥ 0), got {self.leave_out!r}")

    @property
    def resolved_placement(self) -> str:
        """``placement``, or the kind's default when it is None."""
        return self.placement if self.placement is not None else _KIND_PLACEMENT[self.kind]

    @property
    def sublayers(self) -> tuple[str, ...]:
        """``("attention", "ffn")`` for Houlsby, ``("ffn",)`` for Pfeiffer."""
        return _KIND_SUBLAYERS[self.kind]

    def bottleneck_size(self, hidden_size: int) -> int:
        """The adapter's inner width for a model of width ``hidden_size``."""
        return max(1, int(hidden_size // self.reduction_factor))


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name in ("silu", "swish"):
        return F.silu(x)
    return torch.tanh(x)


class BottleneckProjection(nn.Module):
    """``x W^T + b`` with float32 ``weight [out, in]`` and optional ``bias [out]``.

    Not an ``nn.Linear`` on purpose: LoRA's ``all-linear`` targets and NF4 quantization leave it alone.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, device: torch.device | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=torch.float32)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class BottleneckAdapter(nn.Module):
    """One bottleneck adapter: ``x + f(x)`` (see the module docstring), attached to one sublayer.

    Attributes:
        down, up: the projections (``up`` starts at zero).
        norm_before, norm_after: the optional LayerNorms (None when off).
        sublayer: ``"attention"`` or ``"ffn"``.
        placement: ``"before_residual"`` or ``"after_residual"``.
        adapter_enabled: False runs the base model (:func:`pyft.peft.adapters_disabled`).
    """

    def __init__(self, hidden_size: int, config: BottleneckConfig, sublayer: str,
                 device: torch.device | None = None) -> None:
        super().__init__()
        size = config.bottleneck_size(hidden_size)
        self.hidden_size, self.bottleneck_size = hidden_size, size
        self.sublayer, self.placement = sublayer, config.resolved_placement
        self.non_linearity, self.scaling = config.non_linearity, float(config.scaling)
        self.norm_before = (nn.LayerNorm(hidden_size, device=device, dtype=torch.float32)
                            if config.ln_before else None)
        self.down = BottleneckProjection(hidden_size, size, config.bias, device)
        self.up = BottleneckProjection(size, hidden_size, config.bias, device)
        self.norm_after = (nn.LayerNorm(hidden_size, device=device, dtype=torch.float32)
                           if config.ln_after else None)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # nn.Linear's default
        nn.init.zeros_(self.up.weight)
        self.adapter_enabled = True
        self._stream_input: torch.Tensor | None = None  # the layer's input, for an attention adapter after the add

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` in float32."""
        z = x.to(torch.float32)
        if self.norm_before is not None:
            z = self.norm_before(z)
        u = self.up(_activation(self.non_linearity, self.down(z)))
        if self.scaling != 1.0:
            u = u * self.scaling
        u = self.dropout(u)
        if self.norm_after is not None:
            u = self.norm_after(u)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + f(x)``, added in float32 and cast back to ``x``'s dtype."""
        return (x.to(torch.float32) + self.update(x)).to(x.dtype)

    # --- hooks (bound methods, so deepcopy of the model maps them onto the copied adapters) ---

    def _sublayer_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook on the sublayer (placement before the residual add, or the attention adapter after it)."""
        stream_input, self._stream_input = self._stream_input, None
        if not self.adapter_enabled:
            return None
        out = output[0] if isinstance(output, tuple) else output
        if self.placement == "before_residual":
            new = self(out)
        else:  # attention adapter reading r + o: the layer then adds r to o + f(r + o)
            if stream_input is None:
                raise RuntimeError("bottleneck adapter: the attention block ran outside its decoder layer")
            new = (out.to(torch.float32) + self.update(stream_input + out)).to(out.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _stream_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the layer's ``input_layernorm``: remember its input, the residual stream ``r``.

        Inside the layer's ``forward``, so a checkpointed layer's recompute (transformers checkpoints ``forward``,
        not ``__call__``, whose hooks run once) remembers it again."""
        self._stream_input = args[0] if args else next(iter(kwargs.values()), None)

    def _layer_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook on the decoder layer (the FFN adapter after the residual add): ``y + f(y)``."""
        if not self.adapter_enabled:
            return None
        out = output[0] if isinstance(output, tuple) else output
        new = self(out)
        return (new, *output[1:]) if isinstance(output, tuple) else new


def _find(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, (nn.ModuleList, list)) or not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (model.get_decoder().layers); "
                         "pyft applies bottleneck adapters to decoder-only transformers")
    return list(layers)


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    if isinstance(size, int) and size > 0:
        return size
    raise ValueError(f"{type(model).__name__}: its config has no positive integer `hidden_size`")


def _has_post_sublayer_norm(layer: nn.Module) -> bool:
    """Gemma 2/3-style layers normalise each sublayer's output before the residual add."""
    return any(hasattr(layer, n) for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm"))


def apply_bottleneck(model: nn.Module, config: BottleneckConfig) -> list[str]:
    """Freeze ``model`` and attach bottleneck adapters to its decoder layers, in place.

    Returns:
        The module names of the adapted sublayers (e.g. ``model.layers.0.mlp``).

    Raises:
        ValueError: the model already has bottleneck adapters, has no decoder layers or no attention/FFN
            submodule under the known names, a ``leave_out`` index is out of range, or the placement is
            not supported by the layer.
    """
    if any(isinstance(m, BottleneckAdapter) for m in model.modules()):
        raise ValueError("the model already has bottleneck adapters")
    layers = _decoder_layers(model)
    bad = [i for i in config.leave_out if i >= len(layers)]
    if bad:
        raise ValueError(f"leave_out: layer(s) {bad} do not exist (the model has {len(layers)} layers)")
    hidden = _hidden_size(model)
    paths = {id(m): n for n, m in model.named_modules()}
    placement = config.resolved_placement
    plans = []  # checked before anything changes
    for i, layer in enumerate(layers):
        if i in config.leave_out:
            continue
        for sublayer in config.sublayers:
            names = ATTENTION_NAMES if sublayer == "attention" else FFN_NAMES
            found = _find(layer, names)
            if found is None:
                raise ValueError(f"decoder layer {i} ({type(layer).__name__}) has no {sublayer} submodule named "
                                 f"one of {list(names)}")
            if sublayer == "attention" and placement == "after_residual" and (
                    _has_post_sublayer_norm(layer) or not isinstance(getattr(layer, "input_layernorm", None),
                                                                     nn.Module)):
                raise ValueError(f"placement: after_residual is not supported for the attention adapter of "
                                 f"{type(layer).__name__} (a norm follows the attention block, or no "
                                 "`input_layernorm` reads the layer's input); use before_residual")
            plans.append((layer, sublayer, found[1]))
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for layer, sublayer, module in plans:
        device = next(module.parameters(), torch.empty(0)).device
        adapter = BottleneckAdapter(hidden, config, sublayer, device=device)
        adapter.train(module.training)
        module.add_module(_CHILD, adapter)
        if placement == "before_residual":
            module.register_forward_hook(adapter._sublayer_hook, prepend=True)
        elif sublayer == "attention":
            layer.input_layernorm.register_forward_pre_hook(adapter._stream_pre_hook, with_kwargs=True, prepend=True)
            module.register_forward_hook(adapter._sublayer_hook, prepend=True)
        else:
            # prepend: transformers' output_hidden_states hooks on the layer must see the adapted output
            layer.register_forward_hook(adapter._layer_hook, prepend=True)
        adapted.append(paths[id(module)])
    model.pyft_bottleneck_config = config
    return adapted


def bottleneck_modules(model: nn.Module) -> Iterator[tuple[str, BottleneckAdapter]]:
    """``(name, adapter)`` for every bottleneck adapter of ``model`` (``model.layers.0.mlp.bottleneck``)."""
    for name, module in model.named_modules():
        if isinstance(module, BottleneckAdapter):
            yield name, module


def remove_bottleneck(model: nn.Module) -> nn.Module:
    """Detach every bottleneck adapter (its hooks and parameters) from ``model``, in place; the base model is
    left as it was (still frozen)."""
    adapters = {id(a) for _, a in bottleneck_modules(model)}
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if id(getattr(h, "__self__", None)) in adapters]:
                del hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_pre_hooks_with_kwargs.pop(key, None)
    for module in list(model.modules()):
        child = module._modules.get(_CHILD)
        if isinstance(child, BottleneckAdapter):
            del module._modules[_CHILD]
    if hasattr(model, "pyft_bottleneck_config"):
        del model.pyft_bottleneck_config
    return model


def merge_bottleneck(model: nn.Module) -> nn.Module:
    """Always raises: bottleneck adapters are not mergeable (:data:`NOT_MERGEABLE_REASON`)."""
    raise ValueError(NOT_MERGEABLE_REASON)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` under their on-disk names (detached, contiguous CPU copies)."""
    return {f"{PREFIX}{name}.{pname}": p.detach().to("cpu").contiguous().clone()
            for name, adapter in bottleneck_modules(model) for pname, p in adapter.named_parameters()}


def bottleneck_config_dict(config: BottleneckConfig, hidden_size: int, base_model_name_or_path: str | None,
                           task_type: str = "CAUSAL_LM", revision: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` content for ``config`` (see the module docstring)."""
    return {
        "peft_type": PEFT_TYPE, "pyft_format_version": FORMAT_VERSION, "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path, "revision": revision,
        "kind": config.kind, "reduction_factor": float(config.reduction_factor),
        "non_linearity": config.non_linearity, "placement": config.resolved_placement, "bias": config.bias,
        "ln_before": config.ln_before, "ln_after": config.ln_after, "scaling": float(config.scaling),
        "dropout": float(config.dropout), "leave_out": sorted(config.leave_out),
        "hidden_size": hidden_size, "bottleneck_size": config.bottleneck_size(hidden_size),
    }


def save_bottleneck_adapter(model: nn.Module, out_dir: str | os.PathLike[str], *,
                            base_model_name_or_path: str | None = None, task_type: str = "CAUSAL_LM",
                            revision: str | None = None, overwrite: bool = True) -> Path:
    """Save the bottleneck adapters of ``model`` in pyft's format (module docstring), written atomically."""
    from safetensors.torch import save_file

    config = getattr(model, "pyft_bottleneck_config", None)
    if config is None:
        raise ValueError("the model has no bottleneck adapter to save (apply_bottleneck or load_adapter first)")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None) or getattr(
            getattr(model, "config", None), "_name_or_path", None)
    tensors = adapter_state_dict(model)
    text = json.dumps(bottleneck_config_dict(config, _hidden_size(model), base_model_name_or_path, task_type,
                                             revision), indent=2, sort_keys=True)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt"})
        (Path(tmp) / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return Path(out_dir)


_CONFIG_FIELDS = ("kind", "reduction_factor", "non_linearity", "placement", "bias", "ln_before", "ln_after",
                  "scaling", "dropout", "leave_out")
_OTHER_FIELDS = ("peft_type", "pyft_format_version", "task_type", "base_model_name_or_path", "revision",
                 "hidden_size", "bottleneck_size", "inference_mode")


def bottleneck_config_from_dict(raw: dict[str, Any], path: Path) -> BottleneckConfig:
    """A :class:`BottleneckConfig` from a pyft bottleneck ``adapter_config.json``.

    Raises:
        ValueError: a wrong ``peft_type``, a newer format version, an unknown field, or an invalid value,
            naming the file and the field.
    """
    if raw.get("peft_type") != PEFT_TYPE:
        raise ValueError(f"{path}: field `peft_type` is {raw.get('peft_type')!r}, not {PEFT_TYPE!r}")
    version = raw.get("pyft_format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: field `pyft_format_version` is {version!r}; this pyft reads version "
                         f"{FORMAT_VERSION} (a newer pyft wrote it?)")
    unknown = sorted(set(raw) - set(_CONFIG_FIELDS) - set(_OTHER_FIELDS))
    if unknown:
        raise ValueError(f"{path}: field `{unknown[0]}` is not part of pyft's bottleneck format version "
                         f"{FORMAT_VERSION}")
    if "kind" not in raw:
        raise ValueError(f"{path}: field `kind` is missing")
    values = {k: raw[k] for k in _CONFIG_FIELDS if k in raw}
    if isinstance(values.get("leave_out"), list):
        values["leave_out"] = list(values["leave_out"])
    try:
        return BottleneckConfig(**values)
    except ValueError as e:
        name, _, why = str(e).partition(": ")
        raise ValueError(f"{path}: field `{name}`: {why}") from None


def load_bottleneck_into(model: nn.Module, raw: dict[str, Any], config_path: Path, weights: Path,
                         trainable: bool) -> list[str]:
    """Attach the bottleneck adapters described by ``raw`` (their ``adapter_config.json``) with the tensors of
    ``weights`` to ``model`` (the ``OTHER_LOADERS`` entry for ``PYFT_BOTTLENECK``).

    Raises:
        ValueError: an invalid config (file and field named), or tensors that do not fit the base model
            (file and tensor named); the model is left without adapters then.
    """
    from safetensors.torch import load_file

    config = bottleneck_config_from_dict(raw, config_path)
    saved = load_file(str(weights))
    adapted = apply_bottleneck(model, config)
    try:
        params = {f"{PREFIX}{name}.{pname}": p for name, a in bottleneck_modules(model)
                  for pname, p in a.named_parameters()}
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        if missing or extra:
            raise ValueError(f"{weights}: does not fit this base model and {config_path.name}"
                             + (f"; missing {len(missing)} tensor(s), e.g. `{missing[0]}`" if missing else "")
                             + (f"; unexpected {len(extra)} tensor(s), e.g. `{extra[0]}`" if extra else ""))
        for key, p in params.items():
            if tuple(saved[key].shape) != tuple(p.shape):
                raise ValueError(f"{weights}: tensor `{key}` has shape {tuple(saved[key].shape)} but the base model "
                                 f"needs {tuple(p.shape)}: the adapter was trained on a different base model or "
                                 "reduction_factor")
            if not saved[key].is_floating_point():
                raise ValueError(f"{weights}: tensor `{key}` has dtype {saved[key].dtype}, not a float type")
    except ValueError:
        remove_bottleneck(model)
        raise
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(saved[key].to(device=p.device, dtype=p.dtype))
            p.requires_grad_(trainable)
    return adapted
