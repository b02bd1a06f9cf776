"""OFT: orthogonal fine-tuning (Qiu et al., 2023) in HF PEFT 0.21's ``OFT`` form (block-diagonal rotations
of each targeted layer's input, Cayley-parameterised).

The math (what PEFT 0.21.2 computes, checked by running it; the same definition for ``pyft-merge``)
----------------------------------------------------------------------------------------------------

A targeted linear layer has ``W [out, in]`` (PyTorch layout) and bias ``c [out]``: ``y = x Wᵀ + c`` for
``x [..., in]``.

*Blocks.* ``in`` splits into ``n`` blocks of ``b`` features: ``n = r`` and ``b = in / r`` when ``r`` is set,
``b = oft_block_size`` and ``n = in / b`` otherwise (exactly one of the two is non-zero; ``b`` must divide
``in``). The stored parameter ``oft_R.weight`` is float32 ``[n_s, b(b-1)/2]`` with ``n_s = n``, or
``n_s = 1`` with ``block_share`` (one block used ``n`` times).

*Skew-symmetric blocks.* Row ``v_k`` of ``oft_R.weight`` is the strict upper triangle of ``Q_k [b, b]``,
row-major, i.e. in the order of ``torch.triu_indices(b, b, 1)``: (0,1), (0,2), …, (0,b-1), (1,2), …,
(b-2,b-1). ``Q_k[i, j] = v_k[t]`` and ``Q_k[j, i] = -v_k[t]`` for the t-th pair ``(i, j)``; zero diagonal.

*COFT* (``coft``, constrained OFT), before every use: with ``ε' = eps / sqrt(n_s)`` (float32) and
``‖Q_k‖`` the Frobenius norm of the full matrix (``= √2 ‖v_k‖₂``), ``v_k`` is kept when ``‖Q_k‖ ≤ ε'``
and replaced by ``ε' v_k / ‖Q_k‖`` otherwise. The projected values overwrite the parameter (no
gradient through the projection), as PEFT does, so a saved COFT adapter holds projected values.

*Rotations* ``R_k [b, b]`` (float32):

- exact Cayley (``use_cayley_neumann: false``): ``R_k = (I - Q_k)(I + Q_k)⁻¹``
  (``torch.linalg.solve(I + Q, I - Q, left=False)``), orthogonal; for small ``Q``, ``R ≈ I - 2Q``.
- Cayley–Neumann (``use_cayley_neumann: true``, ``m = num_cayley_neumann_terms``):
  ``R = I`` (m = 1), ``I + 2Q`` (m = 2), and for m ≥ 3 ``R = I + 2(Q + Q² + … + Qᵖ) + Qᵖ⁺¹`` with
  ``p = max(2, m - 2)`` (so m = 3 and m = 4 give the same R; m = 5, PEFT's default: ``I + 2Q + 2Q² + 2Q³ + Q⁴``),
  the powers by repeated right-multiplication by ``Q``. This is a truncation of ``(I + Q)(I - Q)⁻¹``,
  **the transpose of the exact form**: for small ``Q``, ``R ≈ I + 2Q``. The same stored vector therefore
  gives (nearly) mutually transposed rotations under the two settings: the flag is part of the format.

*Forward.* ``BD = diag(R_0, …, R_{n-1}) [in, in]`` (block diagonal; ``block_share``: ``R_0`` n times).
The rotation acts on the *input*, multiplying the row vector ``x`` on the right:
``x' = x BD``, i.e. for block k, ``x'[kb + c] = Σ_j x[kb + j] R_k[j, c]``; then ``y = x' Wᵀ + c``.
The input is cast to float32 for the rotation and back to its dtype before ``W``.

*Merge* (``merge_oft``, PEFT's ``merge_and_unload``): ``W' = W BDᵀ = (BD Wᵀ)ᵀ``, i.e.
``W'[o, kb + c] = Σ_j W[o, kb + j] R_k[c, j]`` (each ``[out, b]`` column block of ``W`` times ``R_kᵀ``);
bias unchanged. Computed in float32 (``W`` upcast), cast once to ``W``'s dtype; then ``y = x W'ᵀ + c``.

*Module dropout* (``module_dropout = p``, training only, ``n_s > 1``): ``int(p n_s)`` blocks chosen at random
are replaced by ``I`` for that step (PEFT's ``MultiplicativeDropoutLayer``). PEFT 0.21 builds that layer
but never calls it (its knob is a no-op there); pyft applies it. Inference is the same either way.

On disk (PEFT's format): ``adapter_config.json`` with ``peft_type: OFT`` and the fields above (``r``,
``oft_block_size``, ``coft``, ``eps``, ``block_share``, ``use_cayley_neumann``, ``num_cayley_neumann_terms``,
``module_dropout``, …), and ``adapter_model.safetensors`` holding ``base_model.model.<module>.oft_R.weight``.
Bases may be ``nn.Linear`` or :class:`~pyft.quant.NF4Linear` (PEFT applies OFT to bitsandbytes 4-bit
layers the same way).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyft._atomic import atomic_directory
from pyft.peft._inject import all_linear_names, is_target, replace_module
from pyft.quant.linear import NF4Linear

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: The layer types OFT adapts.
ADAPTABLE = (nn.Linear, NF4Linear)


# ------------------------------------------------------------------------------------------------ math


def skew_symmetric(vec: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[n, b(b-1)/2]`` upper-triangle vectors → ``[n, b, b]`` skew-symmetric matrices ``Q``
    (``Q[i, j] = v[t]``, ``Q[j, i] = -v[t]`` for the t-th pair of ``torch.triu_indices(b, b, 1)``)."""
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=vec.device)
    upper = torch.zeros(vec.shape[0], block_size, block_size, device=vec.device, dtype=vec.dtype)
    upper[:, rows, cols] = vec
    return upper - upper.transpose(-2, -1)


def upper_vector(skew: torch.Tensor) -> torch.Tensor:
    """``[n, b, b]`` → the strict upper triangles ``[n, b(b-1)/2]`` (inverse of :func:`skew_symmetric`)."""
    b = skew.shape[-1]
    rows, cols = torch.triu_indices(b, b, 1, device=skew.device)
    return skew[:, rows, cols]


def coft_project(vec: torch.Tensor, block_size: int, eps: float) -> torch.Tensor:
    """COFT's projection: each block's vector kept if its skew matrix has Frobenius norm ≤ ``eps / sqrt(n)``,
    else rescaled onto that radius (``n`` = number of rows of ``vec``)."""
    q = skew_symmetric(vec, block_size)
    radius = eps * 1 / torch.sqrt(torch.tensor(q.shape[0]))  # float32, as PEFT's _project_batch
    norm = torch.norm(q, dim=(1, 2), keepdim=True)
    return upper_vector(torch.where(norm <= radius, q, radius * (q / norm)))


def cayley(vec: torch.Tensor, block_size: int, use_cayley_neumann: bool = True,
           num_cayley_neumann_terms: int = 5) -> torch.Tensor:
    """The rotations ``[n, b, b]`` of the vectors ``vec [n, b(b-1)/2]``: exact Cayley ``(I - Q)(I + Q)⁻¹``, or
    the Cayley–Neumann series ``I + 2Q + … + 2Qᵖ + Qᵖ⁺¹`` (see the module docstring), in ``vec``'s dtype."""
    n = vec.shape[0]
    q = skew_symmetric(vec, block_size)
    eye = torch.eye(block_size, device=vec.device, dtype=vec.dtype)
    if not use_cayley_neumann:
        ident = eye.unsqueeze(0).expand(n, block_size, block_size)
        return torch.linalg.solve(ident + q, ident - q, left=False)
    rot = eye.repeat(n, 1, 1)
    m = num_cayley_neumann_terms
    if m > 1:
        rot.add_(q, alpha=2.0)
        if m > 2:
            power = torch.bmm(q, q)
            rot.add_(power, alpha=2.0)
            for _ in range(3, m - 1):
                power = torch.bmm(power, q)
                rot.add_(power, alpha=2.0)
            rot.add_(torch.bmm(power, q))
    return rot


def expand_shared(blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """``[n_s, b, b]`` rotations → the ``[num_blocks, b, b]`` blocks of the diagonal (a shared block repeated)."""
    return blocks.repeat(num_blocks, 1, 1) if blocks.shape[0] == 1 and num_blocks > 1 else blocks


def block_diagonal(blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """``BD = diag(R_0, …, R_{n-1})`` ``[in, in]`` from ``[n_s, b, b]`` rotations."""
    return torch.block_diag(*expand_shared(blocks, num_blocks).unbind(0))


def rotate_input(x: torch.Tensor, blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """``x BD`` for ``x [..., in]``: each ``b``-feature block of ``x`` (a row vector) times its ``R_k``."""
    blocks = expand_shared(blocks, num_blocks)
    b = blocks.shape[-1]
    rotated = torch.einsum("...rk,rkc->...rc", x.reshape(*x.shape[:-1], num_blocks, b), blocks)
    return rotated.reshape(x.shape)


def merge_weight(weight: torch.Tensor, blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """``W BDᵀ`` in float32 for ``W [out, in]``: the weight whose plain layer equals the rotated one."""
    bd = block_diagonal(blocks.float(), num_blocks)
    return torch.mm(bd, weight.t().float()).t()


def resolve_blocks(in_features: int, r: int, oft_block_size: int, *, where: str = "",
                   adjust: bool = False) -> tuple[int, int]:
    """``(number of blocks, block size)`` of a layer with ``in_features`` inputs.

    Args:
        r, oft_block_size: the config's values (exactly one non-zero).
        where: the module, for the message.
        adjust: round a size that does not divide ``in_features`` to the nearest one that does, as PEFT does
            when it builds the layer, so adapters PEFT saved with such a size load; pyft's own
            :func:`apply_oft` refuses instead.

    Raises:
        ValueError: naming the field, when the size does not divide ``in_features`` (and not ``adjust``).
    """
    key, value = ("r", r) if r else ("oft_block_size", oft_block_size)
    if in_features % value or value > in_features:
        if not adjust:
            raise ValueError(f"{key}: {value} does not divide in_features {in_features} of `{where}`; choose a "
                             f"divisor of {in_features}")
        value = _nearest_divisor(in_features, value)
    return (value, in_features // value) if key == "r" else (in_features // value, value)


def _nearest_divisor(n: int, value: int) -> int:
    """PEFT's ``adjust_oft_parameters``: the divisor of ``n`` nearest ``value`` (the lower on a tie)."""
    if value >= n:
        return n
    higher = value
    while higher <= n and n % higher:
        higher += 1
    lower = value
    while lower > 1 and n % lower:
        lower -= 1
    return lower if value - lower <= higher - value else higher


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class OftConfig:
    """Which layers OFT rotates and how (PEFT's ``OFTConfig``, same defaults).

    Attributes:
        r: number of blocks per layer (``in_features / r`` features each); 0 = use ``oft_block_size``.
        oft_block_size: features per block (must divide each target's ``in_features``); 0 = use ``r``.
            Exactly one of ``r`` and ``oft_block_size`` is non-zero (default: blocks of 32).
        targets: module names or suffixes (a list), a regex (a string) or ``"all-linear"``, PEFT's
            ``target_modules``; default PEFT's for Llama-style models: the query and value projections.
        exclude: modules never targeted (PEFT's ``exclude_modules``).
        layers_to_transform, layers_pattern: keep only targets in these layer indices (PEFT's rules).
        module_dropout: during training, this fraction of each layer's blocks is set to the identity per step.
        coft: constrained OFT: each block's skew matrix is kept within Frobenius norm ``eps / sqrt(n)``.
        eps: COFT's radius (only with ``coft``).
        block_share: one rotation block shared by all blocks of a layer.
        use_cayley_neumann: the Cayley–Neumann series instead of the exact Cayley transform (a matrix
            solve); the two give different rotations for the same weights (see the module docstring).
        num_cayley_neumann_terms: terms of that series (at least 2).
        init_weights: start at the identity rotation (zeros); False draws N(0, 0.1²) (tests).
    """

    r: int = 0
    oft_block_size: int = 32
    targets: str | list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    exclude: str | list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: str | list[str] | None = None
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5
    init_weights: bool = True
    modules_to_save: list[str] | None = None  # trained in full and saved beside the adapter (pyft.peft.saved_modules)

    def __post_init__(self) -> None:
        if not isinstance(self.targets, str) and not self.targets:
            raise ValueError("targets: at least one module name")
        if self.r < 0:
            raise ValueError(f"r: must be 0 or positive, got {self.r}")
        if self.oft_block_size < 0:
            raise ValueError(f"oft_block_size: must be 0 or positive, got {self.oft_block_size}")
        if self.r and self.oft_block_size:
            raise ValueError(f"r ({self.r}) and oft_block_size ({self.oft_block_size}) are both set; set exactly "
                             "one (r x oft_block_size = in_features): e.g. oft_block_size: 0 to use r")
        if not self.r and not self.oft_block_size:
            raise ValueError("r and oft_block_size are both 0; set exactly one of them")
        if not 0.0 <= self.module_dropout < 1.0:
            raise ValueError(f"module_dropout: must be in [0, 1), got {self.module_dropout}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps: must be a positive number, got {self.eps}")
        if self.num_cayley_neumann_terms < 2:
            raise ValueError(f"num_cayley_neumann_terms: must be at least 2, got {self.num_cayley_neumann_terms} "
                             "(one term is the identity: nothing would train)")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern: only used with layers_to_transform, which is not set")


# ------------------------------------------------------------------------------------------------ layers


class OftRotation(nn.Module):
    """The rotation blocks of one layer: parameter ``weight [n_s, b(b-1)/2]`` (float32), PEFT's ``oft_R``."""

    def __init__(self, num_blocks: int, block_size: int, *, coft: bool = False, eps: float = 6e-5,
                 block_share: bool = False, use_cayley_neumann: bool = True, num_cayley_neumann_terms: int = 5,
                 module_dropout: float = 0.0, device: torch.device | None = None) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.coft = coft
        self.eps = eps
        self.block_share = block_share
        self.use_cayley_neumann = use_cayley_neumann
        self.num_cayley_neumann_terms = num_cayley_neumann_terms
        self.module_dropout = module_dropout
        stored = 1 if block_share else num_blocks
        self.weight = nn.Parameter(torch.zeros(stored, block_size * (block_size - 1) // 2, device=device))

    def rotations(self) -> torch.Tensor:
        """``[n_s, b, b]`` rotations (COFT-projecting ``weight`` in place first), no dropout."""
        if self.coft:
            with torch.no_grad():
                self.weight.copy_(coft_project(self.weight, self.block_size, self.eps))
        return cayley(self.weight, self.block_size, self.use_cayley_neumann, self.num_cayley_neumann_terms)

    def _dropped(self, blocks: torch.Tensor) -> torch.Tensor:
        n = blocks.shape[0]
        if not (self.training and self.module_dropout > 0 and n > 1):
            return blocks
        k = int(self.module_dropout * n)
        mask = torch.cat([torch.ones(k, device=blocks.device), torch.zeros(n - k, device=blocks.device)])
        mask = mask[torch.randperm(n, device=blocks.device)].view(n, 1, 1).to(blocks.dtype)
        eye = torch.eye(self.block_size, device=blocks.device, dtype=blocks.dtype)
        return (1 - mask) * blocks + mask * eye

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x BD`` (``x`` in the parameter's dtype)."""
        return rotate_input(x, self._dropped(self.rotations()), self.num_blocks)


class OftLinear(nn.Module):
    """An ``nn.Linear`` or :class:`~pyft.quant.NF4Linear` whose input is rotated block-wise: ``y = base(x BD)``.

    Names follow PEFT (``base_layer``, ``oft_R.weight``), so state dicts map one to one onto its format.
    """

    def __init__(self, base: nn.Linear | NF4Linear, config: OftConfig, *, name: str = "", adjust: bool = False) -> None:
        super().__init__()
        self.base_layer = base
        num_blocks, block_size = resolve_blocks(base.in_features, config.r, config.oft_block_size, where=name,
                                                adjust=adjust)
        device = base.weight.device
        self.oft_R = OftRotation(num_blocks, block_size, coft=config.coft, eps=config.eps,
                                 block_share=config.block_share, use_cayley_neumann=config.use_cayley_neumann,
                                 num_cayley_neumann_terms=config.num_cayley_neumann_terms,
                                 module_dropout=config.module_dropout, device=device)
        if not config.init_weights:
            with torch.no_grad():
                self.oft_R.weight.normal_(0.0, 0.1)
        self.adapter_enabled = True

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        dtype = x.dtype
        rotated = self.oft_R(x.to(self.oft_R.weight.dtype))
        return self.base_layer(rotated.to(dtype)).to(dtype)

    def base_weight(self) -> torch.Tensor:
        """``W`` in its own dtype (dequantized for an NF4 base)."""
        if isinstance(self.base_layer, NF4Linear):
            return self.base_layer.dequantized_weight()
        return self.base_layer.weight

    def merged_weight(self) -> torch.Tensor:
        """``W BDᵀ`` (float32 ``[out, in]``)."""
        with torch.no_grad():
            return merge_weight(self.base_weight(), self.oft_R.rotations().float(), self.oft_R.num_blocks)


# ------------------------------------------------------------------------------------------------ model


def oft_modules(model: nn.Module) -> Iterator[tuple[str, OftLinear]]:
    """``(name, layer)`` for every OFT layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, OftLinear):
            yield name, module


def apply_oft(model: nn.Module, config: OftConfig, *, adjust_sizes: bool = False) -> list[str]:
    """Freeze ``model`` and wrap every targeted ``nn.Linear`` / ``NF4Linear`` in an :class:`OftLinear`, in place.

    Args:
        adjust_sizes: round an ``r``/``oft_block_size`` that does not divide a layer's ``in_features`` as PEFT
            does (used to load PEFT's files); by default that is an error.

    Returns:
        The names of the adapted modules.

    Raises:
        ValueError: the model already has an OFT adapter, a listed target is not a linear layer, a block
            size does not divide a target's ``in_features`` (naming the field), or nothing matches.
    """
    if any(isinstance(m, OftLinear) for m in model.modules()):
        raise ValueError("the model already has an OFT adapter")
    targets = all_linear_names(model) if config.targets == "all-linear" else config.targets
    layers: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or not is_target(name, targets, exclude=config.exclude,
                                     layers_to_transform=config.layers_to_transform,
                                     layers_pattern=config.layers_pattern):
            continue
        if not isinstance(module, ADAPTABLE):
            if isinstance(targets, str):
                continue  # a regex may also match containers
            raise ValueError(f"target `{name}` is a {type(module).__name__}; pyft applies OFT to nn.Linear and "
                             "NF4Linear layers")
        layers.append((name, module))
    if not layers:
        raise ValueError(f"no module of the model matches targets {targets!r}")
    wrapped = [(name, OftLinear(module, config, name=name, adjust=adjust_sizes)) for name, module in layers]
    rounded = [(name, layer) for name, layer in wrapped
               if (layer.oft_R.num_blocks if config.r else layer.oft_R.block_size) != (config.r or config.oft_block_size)]
    if rounded:
        key = "r" if config.r else "oft_block_size"
        name, layer = rounded[0]
        got = layer.oft_R.num_blocks if config.r else layer.oft_R.block_size
        warnings.warn(f"OFT: {key} {config.r or config.oft_block_size} does not divide in_features of {len(rounded)} "
                      f"layer(s); rounded as PEFT does (e.g. `{name}`: in_features {layer.in_features}, {key} {got})",
                      stacklevel=2)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in wrapped:
        replace_module(model, name, layer)
    model.pyft_oft_config = OftConfig(**{**config.__dict__, "targets": targets})
    return [name for name, _ in wrapped]


def merge_oft(model: nn.Module) -> nn.Module:
    """Fold every rotation into its layer's weight (``W ← W BDᵀ``, float32, cast once to the weight's dtype,
    as PEFT's ``merge_and_unload``) and remove the wrappers, in place. Returns ``model``.

    An :class:`~pyft.quant.NF4Linear` base is not re-quantized: it becomes a dense ``nn.Linear`` in the
    weight's original dtype (as :func:`~pyft.peft.merge_lora` does).
    """
    from pyft.peft.lora import _dense_linear

    for name, layer in list(oft_modules(model)):
        base = layer.base_layer
        with torch.no_grad():
            merged = layer.merged_weight()
            if isinstance(base, NF4Linear):
                base = _dense_linear(base, merged)
            else:
                base.weight.copy_(merged.to(base.weight.dtype))
        replace_module(model, name, base)
    if hasattr(model, "pyft_oft_config"):
        del model.pyft_oft_config
    return model


# ------------------------------------------------------------------------------------------------ files


def _names(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int)) else sorted(value)


def oft_config_dict(config: OftConfig, base_model_name_or_path: str | None, task_type: str = "CAUSAL_LM",
                    revision: str | None = None) -> dict[str, Any]:
    """``adapter_config.json`` as PEFT 0.21.2 writes it for ``OFTConfig``."""
    from pyft.peft.adapter_io import PEFT_FORMAT_VERSION

    return {
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path, "bias": "none",
        "block_share": config.block_share, "coft": config.coft, "eps": float(config.eps),
        "exclude_modules": _names(config.exclude), "fan_in_fan_out": False, "inference_mode": True,
        "init_weights": config.init_weights, "layers_pattern": config.layers_pattern,
        "layers_to_transform": config.layers_to_transform, "module_dropout": float(config.module_dropout),
        "modules_to_save": None, "num_cayley_neumann_terms": config.num_cayley_neumann_terms,
        "oft_block_size": config.oft_block_size, "peft_type": "OFT", "peft_version": PEFT_FORMAT_VERSION,
        "r": config.r, "revision": revision, "target_modules": _names(config.targets), "task_type": task_type,
        "use_cayley_neumann": config.use_cayley_neumann,
    }


def oft_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live OFT parameters of ``model`` under PEFT's on-disk names."""
    return {f"{PREFIX}{name}.oft_R.weight": layer.oft_R.weight for name, layer in oft_modules(model)}


def save_oft_adapter(model: nn.Module, out_dir: str | os.PathLike[str], *, base_model_name_or_path: str | None = None,
                     task_type: str = "CAUSAL_LM", revision: str | None = None, overwrite: bool = True) -> Path:
    """Save the OFT adapter of ``model`` as a PEFT adapter directory (written atomically)."""
    from safetensors.torch import save_file

    config = getattr(model, "pyft_oft_config", None)
    if config is None:
        raise ValueError("the model has no OFT adapter to save (apply_oft or load_adapter first)")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in oft_tensors(model).items()}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(oft_config_dict(config, base_model_name_or_path, task_type, revision), indent=2,
                          sort_keys=True)
        (Path(tmp) / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return Path(out_dir)


_KINDS: dict[str, tuple[Any, str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


def _field(raw: dict[str, Any], path: Path, key: str, kind: str, default: Any) -> Any:
    """``raw[key]`` (``default`` when absent or null), checked to be of ``kind``."""
    value = raw.get(key)
    if value is None:
        return default
    test, wanted = _KINDS[kind]
    if not test(value):
        raise ValueError(f"{path}: field `{key}` must be {wanted}, got {value!r}")
    return value


def _version(text: Any) -> tuple[int, ...]:
    """``"0.17.1"`` → ``(0, 17, 1)`` (a commit suffix after ``@`` and non-numeric parts ignored)."""
    parts = []
    for part in str(text).partition("@")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def oft_config_from_dict(raw: dict[str, Any], path: Path) -> OftConfig:
    """An :class:`OftConfig` from PEFT's ``adapter_config.json`` (``peft_type: OFT``).

    Raises:
        ValueError: fields pyft cannot apply (``bias``, ``fan_in_fan_out``, ``modules_to_save``) or an
            adapter older than PEFT 0.14's format, naming the file and the field.
    """
    if "oft_block_size" not in raw:
        raise ValueError(f"{path}: field `oft_block_size` is missing: an OFT adapter from PEFT < 0.14, whose "
                         "parameterisation PEFT and pyft no longer read; retrain it")
    if raw.get("fan_in_fan_out"):
        raise ValueError(f"{path}: field `fan_in_fan_out` = true is not supported by pyft (Conv1D layers)")
    if raw.get("bias") not in (None, "none"):
        raise ValueError(f"{path}: field `bias` = {raw['bias']!r} is not supported by pyft for OFT adapters")
    if raw.get("modules_to_save"):
        raise ValueError(f"{path}: field `modules_to_save` is not supported for OFT adapters by pyft")
    targets = raw.get("target_modules")
    if targets is None:
        raise ValueError(f"{path}: field `target_modules` is missing")
    if raw.get("use_cayley_neumann") and _version(raw.get("peft_version", "0")) < (0, 18):
        warnings.warn(f"{path}: a Cayley–Neumann OFT adapter from PEFT < 0.18, whose series was since changed; "
                      "it is read with the current one (as PEFT does)", stacklevel=2)

    def listed(v: Any) -> Any:
        return v if v is None or isinstance(v, (str, int)) else list(v)

    try:
        return OftConfig(
            r=_field(raw, path, "r", "int", 0), oft_block_size=_field(raw, path, "oft_block_size", "int", 0),
            targets=listed(targets), exclude=listed(raw.get("exclude_modules")),
            layers_to_transform=listed(raw.get("layers_to_transform")),
            layers_pattern=listed(raw.get("layers_pattern")),
            module_dropout=float(_field(raw, path, "module_dropout", "number", 0.0)),
            coft=_field(raw, path, "coft", "bool", False), eps=float(_field(raw, path, "eps", "number", 6e-5)),
            block_share=_field(raw, path, "block_share", "bool", False),
            use_cayley_neumann=_field(raw, path, "use_cayley_neumann", "bool", True),
            num_cayley_neumann_terms=_field(raw, path, "num_cayley_neumann_terms", "int", 5),
            init_weights=_field(raw, path, "init_weights", "bool", True),
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_oft_into(model: nn.Module, raw: dict[str, Any], config_path: Path, weights: Path, trainable: bool) -> list[str]:
    """Apply the OFT adapter described by ``raw`` (its ``adapter_config.json``) with the tensors of ``weights``
    to ``model``, checking names and shapes. Block sizes that do not divide a layer are rounded as PEFT does.

    Raises:
        ValueError: the tensors do not fit the base model (a tensor named).
    """
    from safetensors.torch import load_file

    config = oft_config_from_dict(raw, config_path)
    saved = {k.replace(".default.", ".").removesuffix(".default"): v for k, v in load_file(str(weights)).items()}
    if any(".oft_r." in k for k in saved):
        raise ValueError(f"{weights}: an OFT adapter from PEFT <= 0.15 (`oft_r` tensors), whose parameterisation "
                         "PEFT and pyft no longer read; retrain it")
    adapted = apply_oft(model, config, adjust_sizes=True)
    params = oft_tensors(model)
    missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or extra:
        raise ValueError(f"{weights}: does not fit this base model"
                         + (f"; missing {len(missing)} tensor(s), e.g. `{missing[0]}`" if missing else "")
                         + (f"; unexpected {len(extra)} tensor(s), e.g. `{extra[0]}`" if extra else ""))
    with torch.no_grad():
        for key, p in params.items():
            if tuple(saved[key].shape) != tuple(p.shape):
                raise ValueError(f"{weights}: tensor `{key}` has shape {tuple(saved[key].shape)} but the base model "
                                 f"needs {tuple(p.shape)}: the adapter was trained on a different base model or "
                                 "block size")
            p.copy_(saved[key].to(device=p.device, dtype=p.dtype))
            p.requires_grad_(trainable)
    return adapted
