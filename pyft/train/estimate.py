"""``pyft estimate``: training memory before launch, and which method to use.

Counts come from the model's ``config.json`` (the model is built on the meta device: nothing is
loaded). Assumptions, per GPU, for the way pyft trains:

- ``full``: fp32 weights (4 B/param), fp32 gradients (4 B), AdamW moments (8 B); bf16 autocast.
- ``lora``: bf16 base weights (2 B/param) + fp32 adapter (4 B), its gradients (4 B) and moments (8 B).
- ``qlora``: NF4 with double-quantised scales for the decoder's linear weights: 4-bit codes, an
  8-bit scale per 64 weights and a float32 scale per 256 of those, 4 + 8/64 + 32/(64·256) ≈ 4.127
  bits/param (QLoRA, arXiv:2305.14314); bf16 embeddings and output layer; the fp32 adapter as for LoRA.
- optimizer (``--optim``, as ``train.optim``): ``adamw`` 8 B per trained parameter;
  ``adamw_8bit`` 2 B plus two float32 scales per 256 for tensors of at least 4096 elements (8 B
  below); the ``paged_*`` variants keep the states of tensors of at least 1e5 elements in pinned
  CPU memory (shown apart, not in the GPU total).
- activations (bf16, SDPA/FlashAttention, no attention matrix kept): per layer and token about
  ``2·(10·h + 3·i)`` bytes (attention and MLP inputs/outputs kept for backward, ``h`` hidden,
  ``i`` MLP width); with gradient checkpointing only each layer's input (``2·h``) plus one layer
  recomputed at a time. The loss adds ``chunk × vocab × 4`` bytes (pyft never builds full logits).
- the method (``method``, :data:`pyft.train.methods.METHODS`): a data row of a paired method
  (``dpo``, ``orpo``, ``simpo``, ``cpo``, ``rm``) is two sequences run together, so ``batch`` pairs
  keep the activations of ``2·batch`` sequences (:attr:`Method.sequences_per_row`); KTO's KL
  sequences run without gradient (no activations kept). A reference model (DPO, KTO) costs nothing
  under LoRA/QLoRA (the base with adapters off) and a frozen copy of the fp32 weights (4 B/param)
  under full fine-tuning, unless ``precompute_ref``. (``rm`` is counted with the causal LM's output
  layer; its one-output score head is smaller.)
These are estimates: allocator fragmentation and CUDA context (~0.5–1 GiB) come on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyft.methods import OPTIMIZERS, SFT, TUNINGS, Tuning, get_method, get_tuning

GIB = 2**30
#: NF4 codes + double-quantised scales (8-bit per block of 64, float32 per 256 of those).
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
MIN_8BIT_SIZE = 4096  # smaller tensors keep float32 states (pyft.train.optim8bit, as bitsandbytes)
PAGE_MIN_SIZE = 100_000  # smaller tensors keep their states on the GPU when paged


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
    optimizer_cpu: int = 0  # paged optimizer states in pinned CPU memory (not in ``total``)
    reference: int = 0  # DPO/KTO reference model weights (a frozen copy under full fine-tuning)

    @property
    def total(self) -> int:
        """Sum of the components (bytes)."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.reference


def optimizer_bytes(sizes: list[int], optim: str = "adamw") -> tuple[int, int]:
    """AdamW state bytes for trained tensors of ``sizes`` elements: ``(on the GPU, in pinned CPU memory)``."""
    if optim not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optim!r} (expected one of {', '.join(OPTIMIZERS)})")
    gpu = cpu = 0
    for n in sizes:
        eight = optim.endswith("8bit") and n >= MIN_8BIT_SIZE
        nbytes = 2 * n + 2 * 4 * -(-n // 256) if eight else 8 * n
        if optim.startswith("paged") and n >= PAGE_MIN_SIZE:
            cpu += nbytes
        else:
            gpu += nbytes
    return gpu, cpu


def _shapes(model_dir: str | os.PathLike[str]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


def _applied_adapter(model: Any, tuning: Tuning) -> tuple[list[int], int]:
    """``(sizes of the trained tensors, virtual tokens per sequence)`` of ``tuning`` with its default
    settings, found by applying it to the (meta-device) model: nothing is allocated."""
    from pyft.train.config import TrainConfig
    from pyft.train.tunings import apply_adapters

    config = TrainConfig(method=tuning.name)
    parts = apply_adapters(config, model)
    section = getattr(config, tuning.section) if tuning.section else None
    return [p.numel() for ps in parts.values() for p in ps], getattr(section, "num_virtual_tokens", 0)


def estimate(model_dir: str | os.PathLike[str], tuning: str, seq_len: int, batch: int, r: int = 16,
             gradient_checkpointing: bool = False, chunk_tokens: int = 4096, optim: str = "adamw",
             method: str = SFT, precompute_ref: bool = False) -> MemoryEstimate:
    """Estimate training memory of ``tuning`` (a :data:`~pyft.methods.TUNINGS` name) for ``batch`` rows of
    ``seq_len`` tokens, with the optimizer ``optim`` (one of :data:`OPTIMIZERS`), for the training
    ``method`` (a ``method:`` value of the config: ``sft``, ``dpo``, ...; a row is then a pair or a
    KTO example).

    Raises:
        ValueError: an unknown tuning or optimizer; ConfigError: an unknown method.
    """
    from torch import nn

    if tuning not in TUNINGS:
        raise ValueError(f"unknown tuning {tuning!r} (expected one of {', '.join(TUNINGS)})")
    spec = get_method(method)
    per_row, has_reference = spec.sequences_per_row, spec.needs_reference
    config, model = _shapes(model_dir)
    sizes = [p.numel() for p in {id(p): p for p in model.parameters()}.values()]
    params = sum(sizes)
    output = model.get_output_embeddings()
    decoder_linear = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not output]
    linear_params = sum(m.weight.numel() for m in decoder_linear)
    kind = get_tuning(tuning)
    virtual = 0
    if kind.section == "lora":
        adapter_sizes = [n for m in decoder_linear for n in (r * m.in_features, m.out_features * r)]  # A, B
    elif kind.adapter:
        adapter_sizes, virtual = _applied_adapter(model, kind)
    else:
        adapter_sizes = []
    adapter = sum(adapter_sizes)
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    layers = config.num_hidden_layers
    tokens = (seq_len + virtual) * batch * per_row
    if gradient_checkpointing:
        act = layers * tokens * 2 * h + tokens * 2 * (10 * h + 3 * i)
    else:
        act = layers * tokens * 2 * (10 * h + 3 * i)
    act += min(chunk_tokens, tokens) * config.vocab_size * 4 * 2
    if tuning == "full":
        opt_gpu, opt_cpu = optimizer_bytes(sizes, optim)
        reference = 4 * params if has_reference and not precompute_ref else 0
        return MemoryEstimate(tuning, params, params, 4 * params, 4 * params, opt_gpu, act, opt_cpu, reference)
    opt_gpu, opt_cpu = optimizer_bytes(adapter_sizes, optim)
    base = int(linear_params * NF4_BITS / 8) + 2 * (params - linear_params) if kind.nf4_base else 2 * params
    return MemoryEstimate(tuning, params, adapter, base + 4 * adapter, 4 * adapter, opt_gpu, act, opt_cpu)


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


def format_report(model_dir: str | os.PathLike[str], seq_len: int, batch: int, tunings: list[str], r: int,
                  gradient_checkpointing: bool, gpu_gib: float | None, examples: int | None,
                  optim: str = "adamw", method: str = SFT, precompute_ref: bool = False) -> str:
    """The table ``pyft estimate`` prints, one row per tuning of ``tunings``; with an ``optim`` other
    than ``adamw`` a line says how much optimizer memory it saves; methods with a reference model add
    a reference column."""
    kw = {"optim": optim, "method": method, "precompute_ref": precompute_ref}
    est = {m: estimate(model_dir, m, seq_len, batch, r, gradient_checkpointing, **kw) for m in TUNINGS}
    ckpt = {m: estimate(model_dir, m, seq_len, batch, r, True, **kw) for m in TUNINGS}
    spec = get_method(method)
    per_row, has_reference = spec.sequences_per_row, spec.needs_reference
    rows = {1: f"batch {batch} x {seq_len} tokens", 2: f"batch {batch} pairs (chosen + rejected: {2 * batch} "
            f"sequences) x {seq_len} tokens"}[per_row]
    what = f"{spec.name}: "
    lines = [(f"model {Path(model_dir)}: {est['full'].params / 1e6:,.1f}M parameters; {what}{rows}; LoRA r={r}; "
              f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}; optimizer {optim}"),
             f"{'tuning':<14}{'trainable':>12}{'weights':>10}{'grads':>10}{'optim':>10}{'activ.':>10}"
             + (f"{'ref.':>10}" if has_reference else "") + f"{'total':>10}  (GiB)"]
    for m in tunings:
        e = est[m]
        values = (e.weights, e.gradients, e.optimizer, e.activations) + ((e.reference,) if has_reference else ())
        lines.append(f"{m:<14}{e.trainable / 1e6:>11.2f}M" + "".join(f"{v / GIB:>10.2f}" for v in (*values, e.total)))
    if has_reference:
        lines.append("reference model: lora/qlora use the base with adapters off (no copy); full keeps a frozen "
                     + ("copy (align.precompute_ref: true removes it)" if not precompute_ref
                        else "copy, removed here by precomputed reference log-probs"))
    if optim != "adamw":
        plain = {m: estimate(model_dir, m, seq_len, batch, r, gradient_checkpointing, method=method,
                             precompute_ref=precompute_ref) for m in tunings}
        lines.append(f"{optim} vs adamw, GPU optimizer memory saved: " + ", ".join(
            f"{m} {(plain[m].optimizer - est[m].optimizer) / GIB:.2f} GiB" for m in tunings)
            + ("; in pinned CPU memory: " + ", ".join(f"{m} {est[m].optimizer_cpu / GIB:.2f} GiB" for m in tunings)
               if optim.startswith("paged") else ""))
    lines.append("recommendation: " + recommend(est, gpu_gib, examples, ckpt))
    return "\n".join(lines)
