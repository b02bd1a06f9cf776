"""bitsandbytes as a test oracle: NF4 checkpoints as transformers + bitsandbytes write them (CPU
backend), and the dense model bitsandbytes' own ``dequantize_4bit`` makes of them.

* :func:`save_nf4` quantizes a saved model with ``from_pretrained(quantization_config=...)`` and
  writes it with ``save_pretrained`` (spec ``nf4.md`` §4), tokenizer files copied.
* :func:`dequantized_dir` is the reference for anything pyft reads from such a checkpoint: every
  quantized weight replaced by ``bnb.functional.dequantize_4bit`` of its saved quant state
  (``QuantState.from_dict``, the loader transformers uses), every other tensor copied, the config
  without ``quantization_config``.
* :func:`use_portable_cpu_kernels` makes bitsandbytes an oracle that is right on every CPU (the
  test session applies it before any test runs; ``tests/test_quant_oracle.py`` checks it against
  the NF4 definition).

Why the last one: bitsandbytes 0.50.2's CPU backend runs C kernels that pick code paths by the
CPU's features. On AVX-512 CPUs its ``dequantize_4bit`` is wrong whenever a quantization block spans
two rows of a 2-D weight (max error 2.0 on a ``randn(48, 96)`` at blocksize 64; 1-D inputs, and
every input on AVX2-only CPUs, are right), and on AVX512-BF16 CPUs ``Linear4bit`` repacks its weight
at inference and computes through a bfloat16 ``gemv_4bit`` kernel. Routing those two ops to
bitsandbytes' own portable PyTorch implementation (dequantize, then ``F.linear``) gives one oracle,
with one answer, on every x86-64 CPU. Its quantization kernels (``quantize_4bit``,
``quantize_blockwise`` with its lookup-table rounding of the double-quantized scales) stay as they
are: pyft reproduces them byte for byte on the AVX2 and the AVX-512 machines the suite has run on.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BLOB = ".quant_state.bitsandbytes__nf4"
#: bitsandbytes ops whose CPU kernel gives CPU-dependent results (see the module docstring).
PORTABLE_OPS = ("dequantize_4bit", "gemv_4bit")
#: Files of a model directory that are neither weights nor config.
_MODEL_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json"}


def use_portable_cpu_kernels() -> list[str]:
    """Route bitsandbytes' CPU-feature-specific kernels to its own portable implementation.

    For each op in :data:`PORTABLE_OPS` with a separate CPU kernel, the CPU dispatch is replaced by
    one that redispatches to the op's ``CompositeExplicitAutograd`` kernel (bitsandbytes' "default"
    backend: the PyTorch code AVX2-only machines run), and ``Linear4bit`` no longer repacks weights
    into the AVX512-BF16 layout. Idempotent. Returns the ops rerouted (empty on AVX2-only CPUs).
    """
    import bitsandbytes.nn.modules as bnb_modules

    rerouted = []
    fallback = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    for name in PORTABLE_OPS:
        qualified = f"bitsandbytes::{name}"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"):
            continue
        op = getattr(torch.ops.bitsandbytes, name).default
        if getattr(_PORTABLE, name, None) is op:
            continue  # already rerouted
        torch.library.register_kernel(qualified, "cpu", _redispatcher(op, fallback))
        setattr(_PORTABLE, name, op)
        rerouted.append(name)
    bnb_modules.has_avx512bf16 = lambda: False
    return rerouted


class _PORTABLE:
    """Which ops :func:`use_portable_cpu_kernels` has rerouted (attribute per op)."""


def _redispatcher(op, keys):
    def portable(*args, **kwargs):
        return op.redispatch(keys, *args, **kwargs)

    return portable


def save_nf4(dense: Path, out: Path, *, double_quant: bool = True, storage: torch.dtype = torch.uint8,
             max_shard_size: str | None = None) -> Path:
    """Quantize the bf16 model in ``dense`` to NF4 with bitsandbytes and save it as ``out``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                           bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=storage)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bitsandbytes' CPU-backend notices
            model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=q, dtype=torch.bfloat16)
            kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
            model.save_pretrained(out, **kw)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    for f in dense.iterdir():
        if f.is_file() and f.name not in _MODEL_FILES and not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    return out


def read_all(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors model directory."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def dequantize_all(nf4_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict with every NF4 weight dequantized by bitsandbytes."""
    from bitsandbytes.functional import QuantState, dequantize_4bit

    sd = read_all(nf4_dir)
    weights = [k[: -len(BLOB)] for k in sd if k.endswith(BLOB)]
    state_keys = {k for w in weights for k in sd if k.startswith(w + ".")}
    out = {k: v for k, v in sd.items() if k not in state_keys}
    for w in weights:
        qs = {k[len(w) + 1:]: v for k, v in sd.items() if k.startswith(w + ".")}
        state = QuantState.from_dict(qs, device=torch.device("cpu"))
        out[w] = dequantize_4bit(sd[w], state).contiguous()
    return out


def dequantized_dir(nf4_dir: Path, out: Path) -> Path:
    """:func:`dequantize_all` written as a dense model directory (the oracle model)."""
    out.mkdir(parents=True)
    save_file(dequantize_all(nf4_dir), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((nf4_dir / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in nf4_dir.iterdir():
        if f.is_file() and f.name not in _MODEL_FILES and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    return out


def peft_adapter(nf4_dir: Path, out: Path, *, seed: int = 1, rslora: bool = False, dora: bool = False) -> Path:
    """A PEFT LoRA adapter created on the 4-bit model itself (as QLoRA trains it), ``lora_B`` and
    the DoRA magnitude randomised so that the merge matters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(nf4_dir, dtype=torch.bfloat16)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=rslora, use_dora=dora,
                         rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 4})
        model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    return out
