"""``pyft estimate``: training memory before launch, and which method to use.

Counts come from the model's ``config.json`` (the model is built on the meta device: nothing is
loaded). Assumptions, per GPU, for the way pyft trains:

- ``full``: fp32 weights (4 B/param), fp32 gradients (4 B), AdamW moments (8 B); bf16 autocast.
- ``lora``: bf16 base weights (2 B/param) + fp32 adapter (4 B), its gradients (4 B) and moments (8 B).
- ``qlora``: NF4 with double-quantised scales for the decoder's linear weights (4.127 bits/param),
  bf16 for embeddings and the output layer, plus the fp32 adapter as for LoRA.
- activations (bf16, SDPA/FlashAttention, no attention matrix kept): per layer and token about
  ``2·(10·h + 3·i)`` bytes (attention and MLP inputs/outputs kept for backward, ``h`` hidden,
  ``i`` MLP width); with gradient checkpointing only each layer's input (``2·h``) plus one layer
  recomputed at a time. The loss adds ``chunk × vocab × 4`` bytes (pyft never builds full logits).
These are estimates: allocator fragmentation and CUDA context (~0.5–1 GiB) come on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
NF4_BITS = 4.127


@dataclass
class MemoryEstimate:
    """Bytes per component for one method."""

    method: str
    params: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        """Sum of the components (bytes)."""
        return self.weights + self.gradients + self.optimizer + self.activations


def _shapes(model_dir: str | os.PathLike[str]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


def estimate(model_dir: str | os.PathLike[str], method: str, seq_len: int, batch: int, r: int = 16,
             gradient_checkpointing: bool = False, chunk_tokens: int = 4096) -> MemoryEstimate:
    """Estimate training memory of ``method`` (``full``, ``lora``, ``qlora``) for ``batch`` rows of ``seq_len`` tokens."""
    from torch import nn

    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"unknown method {method!r} (expected full, lora or qlora)")
    config, model = _shapes(model_dir)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    output = model.get_output_embeddings()
    decoder_linear = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not output]
    linear_params = sum(m.weight.numel() for m in decoder_linear)
    adapter = sum(r * (m.in_features + m.out_features) for m in decoder_linear)
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    layers = config.num_hidden_layers
    tokens = seq_len * batch
    if gradient_checkpointing:
        act = layers * tokens * 2 * h + tokens * 2 * (10 * h + 3 * i)
    else:
        act = layers * tokens * 2 * (10 * h + 3 * i)
    act += min(chunk_tokens, tokens) * config.vocab_size * 4 * 2
    if method == "full":
        return MemoryEstimate(method, params, params, 4 * params, 4 * params, 8 * params, act)
    base = 2 * params if method == "lora" else int(linear_params * NF4_BITS / 8) + 2 * (params - linear_params)
    return MemoryEstimate(method, params, adapter, base + 4 * adapter, 4 * adapter, 8 * adapter, act)


def recommend(estimates: dict[str, MemoryEstimate], gpu_gib: float | None, examples: int | None,
              checkpointed: dict[str, MemoryEstimate] | None = None) -> str:
    """The usual guidance: full fine-tuning for large data sets (>100k examples) when it fits;
    LoRA when memory is limited; QLoRA when only 4-bit weights fit (typically 8–16 GB GPUs).

    ``checkpointed`` (the same estimates with gradient checkpointing) lets a method qualify when it
    fits only with checkpointing; the advice then says so.
    """
    def fit(m: str) -> str | None:
        budget = None if gpu_gib is None else gpu_gib * 0.9 * GIB
        if budget is None or estimates[m].total <= budget:
            return ""
        if checkpointed is not None and checkpointed[m].total <= budget:
            return " with gradient checkpointing"
        return None

    full, lora, qlora = fit("full"), fit("lora"), fit("qlora")
    if examples is not None and examples > 100_000 and full is not None:
        return f"full{full}: a large data set and memory for every weight, gradient and optimizer state"
    if lora is not None:
        why = "" if examples is None or examples > 100_000 else f", {examples:,} examples: adapters suffice"
        return f"lora{lora}: the bf16 base fits{why}; use rslora for ranks above 64"
    if qlora is not None:
        return f"qlora{qlora}: only 4-bit base weights fit; LoRA on an NF4 base"
    return "nothing fits: shorten --seq-len or lower --batch"


def format_report(model_dir: str | os.PathLike[str], seq_len: int, batch: int, methods: list[str], r: int,
                  gradient_checkpointing: bool, gpu_gib: float | None, examples: int | None) -> str:
    """The table ``pyft estimate`` prints."""
    est = {m: estimate(model_dir, m, seq_len, batch, r, gradient_checkpointing) for m in ("full", "lora", "qlora")}
    ckpt = {m: estimate(model_dir, m, seq_len, batch, r, True) for m in ("full", "lora", "qlora")}
    lines = [f"model {Path(model_dir)}: {est['full'].params / 1e6:,.1f}M parameters; batch {batch} x {seq_len} tokens; "
             f"LoRA r={r}; gradient checkpointing {'on' if gradient_checkpointing else 'off'}",
             f"{'method':<8}{'trainable':>12}{'weights':>10}{'grads':>10}{'optim':>10}{'activ.':>10}{'total':>10}  (GiB)"]
    for m in methods:
        e = est[m]
        lines.append(f"{m:<8}{e.trainable / 1e6:>11.2f}M" + "".join(
            f"{v / GIB:>10.2f}" for v in (e.weights, e.gradients, e.optimizer, e.activations, e.total)))
    lines.append("recommendation: " + recommend(est, gpu_gib, examples, ckpt))
    return "\n".join(lines)
