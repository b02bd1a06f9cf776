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
- several processes (``nproc``, ``parallel``; per GPU, the batch is each process's own): ``ddp``
  keeps everything above whole on every process. ``fsdp`` (FSDP2 as :mod:`pyft.train.parallel`
  builds it: one unit per decoder layer, the rest of the model the root's) stores ``1/nproc`` of
  each parameter, its gradient and optimizer states (dim 0 split in ``ceil(rows/nproc)``-row
  chunks, as FSDP2 pads them: the figures are rank 0's, the largest), and holds a gathered working
  set of whole tensors on top (``gathered``): the root's weights and gradients (embeddings, final
  norm, output layer: gathered for the whole forward and backward, their gradients reduced at the
  end of the backward), two decoder layers' weights (the one running and the one prefetched) and
  one layer's gradients with its float32 reduce-scatter buffer. Gathered weights and gradients are
  bf16 under ``precision: bf16`` (FSDP's ``MixedPrecisionPolicy``), else as stored.
  ``cpu_offload`` (``train.fsdp_cpu_offload``) moves the shards, gradients and optimizer states to
  CPU memory (``offloaded``, per process, not in ``total``). Every process reads the whole model into
  CPU memory before sharding it (``loading``, CPU bytes per process, not in ``total``); sharding
  then moves it to the GPU one decoder layer at a time, so the GPU never holds it whole.
- ``precision``: ``bf16`` (the default, a GPU's), ``fp16`` or ``fp32`` (a CPU's): activations in
  2 bytes under bf16/fp16 autocast, else 4; adapter runs keep their frozen base in bf16 only under
  ``bf16`` (as ``pyft train`` loads it).
These are estimates: allocator fragmentation, transient buffers (an optimizer step's temporaries,
communication buckets) and CUDA context (~0.5–1 GiB) come on top.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pyft.errors import ConfigError
from pyft.methods import OPTIMIZERS, SFT, TUNINGS, get_method, get_tuning
from pyft.train.parallel import PARALLEL_MODES

GIB = 2**30
#: NF4 codes + double-quantised scales (8-bit per block of 64, float32 per 256 of those).
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
MIN_8BIT_SIZE = 4096  # smaller tensors keep float32 states (pyft.train.optim8bit, as bitsandbytes)
PAGE_MIN_SIZE = 100_000  # smaller tensors keep their states on the GPU when paged
#: ``precision`` values (``train.precision`` once resolved).
PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class MemoryEstimate:
    """Bytes per component for one method, per GPU (per process).

    ``parallel`` is ``single`` (one process), ``ddp`` or ``fsdp`` over ``nproc`` processes; under
    ``fsdp`` ``weights``, ``gradients`` and ``optimizer`` are one process's shards and ``gathered``
    the whole tensors it holds for the running layers (see the module docstring).
    """

    method: str
    params: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    optimizer_cpu: int = 0  # paged optimizer states in pinned CPU memory (not in ``total``)
    reference: int = 0  # DPO/KTO reference model weights (a frozen copy under full fine-tuning)
    gathered: int = 0  # FSDP: whole weights and gradients of the root and running layers
    offloaded: int = 0  # FSDP CPU offload: shards, gradients and optimizer states in CPU memory (not in ``total``)
    loading: int = 0  # FSDP: CPU memory per process while loading (the whole model, before sharding)
    parallel: str = "single"
    nproc: int = 1

    @property
    def total(self) -> int:
        """Sum of the GPU components while training (bytes)."""
        return (self.weights + self.gradients + self.optimizer + self.activations + self.reference
                + self.gathered)



@dataclass(frozen=True)
class _Tensor:
    """One parameter as FSDP sees it: ``shape``, stored bytes per element (NF4 codes and scales for
    ``nf4``), trained or frozen, and the decoder layer holding it (``None``: the FSDP root's)."""

    shape: tuple[int, ...]
    bytes_per: int
    trainable: bool
    layer: int | None
    nf4: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def shard(self, nproc: int) -> int:
        """Elements of rank 0's shard: FSDP2 splits dim 0 into ``nproc`` chunks of ``ceil(rows/nproc)``."""
        if nproc == 1 or not self.shape:
            return self.numel
        return -(-self.shape[0] // nproc) * (self.numel // self.shape[0])


@dataclass(frozen=True)
class _Inventory:
    """The parameters of a model with a tuning applied, and the sizes activations depend on."""

    tensors: tuple[_Tensor, ...]
    params: int  # of the base model (adapters not counted)
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    virtual: int  # virtual tokens per sequence (prompt-style adapters)


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


def _layer_of(model: Any) -> dict[int, int]:
    """``id(parameter) -> decoder layer index`` (the FSDP units :func:`pyft.train.parallel.build_parallel`
    makes); parameters not listed belong to the root."""
    from pyft.train.parallel import decoder_layers

    return {id(p): i for i, layer in enumerate(decoder_layers(model)) for p in layer.parameters()}


def _applied_adapter(model: Any, tuning: str) -> tuple[list[_Tensor], int]:
    """``(the trained tensors, virtual tokens per sequence)`` of ``tuning`` with its default settings,
    found by applying it to the (meta-device) model: nothing is allocated."""
    from pyft.train.config import TrainConfig
    from pyft.train.tunings import apply_adapters

    config = TrainConfig(method=tuning)
    parts = apply_adapters(config, model)
    layer_of = _layer_of(model)
    section = getattr(config, get_tuning(tuning).section) if get_tuning(tuning).section else None
    trained = [_Tensor(tuple(p.shape), 4, True, layer_of.get(id(p))) for ps in parts.values() for p in ps]
    return trained, getattr(section, "num_virtual_tokens", 0)


@lru_cache(maxsize=32)
def _inventory_cached(model_dir: str, mtime: float, tuning: str, r: int, base_bytes: int) -> _Inventory:
    """:func:`_inventory` for one version (``mtime``) of the config, the frozen base stored in
    ``base_bytes`` per element: the meta-device model with ``tuning`` (LoRA rank ``r``) applied."""
    from torch import nn

    config, model = _shapes(model_dir)
    unique = list({id(p): p for p in model.parameters()}.values())
    output = model.get_output_embeddings()
    decoder_linear = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not output]
    kind = get_tuning(tuning)
    virtual = 0
    if kind.section == "lora":
        layer_of = _layer_of(model)
        adapters = [_Tensor(shape, 4, True, layer_of.get(id(m.weight)))
                    for m in decoder_linear for shape in ((r, m.in_features), (m.out_features, r))]  # A, B
    elif kind.adapter:
        adapters, virtual = _applied_adapter(model, tuning)  # the base's parameters stay the same objects
        layer_of = _layer_of(model)
    else:
        adapters, layer_of = [], _layer_of(model)
    nf4 = {id(m.weight) for m in decoder_linear} if kind.nf4_base else set()
    full = tuning == "full"
    base = [_Tensor(tuple(p.shape), 4 if full else base_bytes, full, layer_of.get(id(p)), id(p) in nf4)
            for p in unique]
    h = config.hidden_size
    return _Inventory(tuple(base + adapters), sum(t.numel for t in base), h,
                      getattr(config, "intermediate_size", 4 * h), config.num_hidden_layers, config.vocab_size,
                      virtual)


def _inventory(model_dir: str | os.PathLike[str], tuning: str, r: int, precision: str) -> _Inventory:
    """The parameters of the model in ``model_dir`` under ``tuning`` (cached per config file)."""
    path = Path(model_dir)
    mtime = (path / "config.json").stat().st_mtime if (path / "config.json").is_file() else 0.0
    # pyft train keeps an adapter run's frozen base in bf16 under bf16 precision, else in float32.
    return _inventory_cached(str(path), mtime, tuning, r, 2 if precision == "bf16" else 4)


def _weight_bytes(tensors: list[_Tensor], nproc: int) -> int:
    """Stored bytes of rank 0's shards of ``tensors`` (whole tensors for ``nproc`` 1)."""
    nf4 = sum(t.shard(nproc) for t in tensors if t.nf4)
    return int(nf4 * NF4_BITS / 8) + sum(t.shard(nproc) * t.bytes_per for t in tensors if not t.nf4)


def _gathered_bytes(tensors: tuple[_Tensor, ...], nproc: int, precision: str) -> int:
    """FSDP's working set of whole tensors on one process (bytes): the root's weights and gradients,
    the two largest decoder layers' weights, the largest layer's gradients plus its float32
    reduce-scatter buffer (``nproc`` padded shards). Gathered in bf16 under ``bf16``, else as stored."""
    def gathered(t: _Tensor) -> float:
        if t.nf4:
            return t.numel * NF4_BITS / 8
        return t.numel * (2 if precision == "bf16" else t.bytes_per)

    root_w = sum(gathered(t) for t in tensors if t.layer is None)
    root_g = sum(gathered(t) for t in tensors if t.layer is None and t.trainable)
    layers = sorted({t.layer for t in tensors if t.layer is not None})
    weights = sorted((sum(gathered(t) for t in tensors if t.layer == i) for i in layers), reverse=True)
    grads = [sum(gathered(t) + 4 * t.shard(nproc) * nproc for t in tensors if t.layer == i and t.trainable)
             for i in layers]
    return int(root_w + root_g + sum(weights[:2]) + max(grads, default=0))


def check_parallel(nproc: int, parallel: str | None, cpu_offload: bool, optim: str = "adamw") -> None:
    """Check the multi-process options of :func:`estimate` (named as ``pyft estimate``'s flags).

    Raises:
        ConfigError: ``nproc`` below 1, an unknown ``parallel``, ``parallel`` with one process,
            ``cpu_offload`` without ``fsdp``, or an optimizer FSDP does not shard.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc: expected 1 or more processes, got {nproc}")
    if parallel is not None and parallel not in PARALLEL_MODES:
        raise ConfigError(f"--parallel: expected {' or '.join(PARALLEL_MODES)}, got {parallel!r}")
    if parallel is not None and nproc == 1:
        raise ConfigError(f"--parallel {parallel}: needs --nproc 2 or more (one process trains the whole model "
                          "unwrapped)")
    if cpu_offload and parallel != "fsdp":
        raise ConfigError("--cpu-offload: needs --parallel fsdp (as train.fsdp_cpu_offload needs train.parallel: "
                          "fsdp)")
    if parallel == "fsdp" and optim != "adamw":
        raise ConfigError(f"--optim {optim}: not available with --parallel fsdp (FSDP does not shard 8-bit or "
                          "paged states); use adamw, with --cpu-offload to keep its states in CPU memory")


def estimate(model_dir: str | os.PathLike[str], tuning: str, seq_len: int, batch: int, r: int = 16,
             gradient_checkpointing: bool = False, chunk_tokens: int = 4096, optim: str = "adamw",
             method: str = SFT, precompute_ref: bool = False, *, precision: str = "bf16", nproc: int = 1,
             parallel: str | None = None, cpu_offload: bool = False) -> MemoryEstimate:
    """Estimate training memory per GPU of ``tuning`` (a :data:`~pyft.methods.TUNINGS` name) for
    ``batch`` rows of ``seq_len`` tokens per process, with the optimizer ``optim`` (one of
    :data:`OPTIMIZERS`), for the training ``method`` (a ``method:`` value of the config: ``sft``,
    ``dpo``, ...; a row is then a pair or a KTO example), at ``precision`` (one of
    :data:`PRECISIONS`), on ``nproc`` processes under ``parallel`` (``ddp``, the default with
    several, or ``fsdp``, optionally with ``cpu_offload``).

    Raises:
        ValueError: an unknown tuning, optimizer or precision; ConfigError: an unknown method, or
            multi-process options that do not go together (:func:`check_parallel`).
    """
    if tuning not in TUNINGS:
        raise ValueError(f"unknown tuning {tuning!r} (expected one of {', '.join(TUNINGS)})")
    if optim not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optim!r} (expected one of {', '.join(OPTIMIZERS)})")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    check_parallel(nproc, parallel, cpu_offload, optim)
    spec = get_method(method)
    per_row, has_reference = spec.sequences_per_row, spec.needs_reference
    inv = _inventory(model_dir, tuning, r, precision)
    tokens = (seq_len + inv.virtual) * batch * per_row
    elem = 2 if precision in ("bf16", "fp16") else 4  # activation bytes (autocast under bf16/fp16)
    h, i = inv.hidden, inv.intermediate
    if gradient_checkpointing:
        act = inv.layers * tokens * elem * h + tokens * elem * (10 * h + 3 * i)
    else:
        act = inv.layers * tokens * elem * (10 * h + 3 * i)
    act += min(chunk_tokens, tokens) * inv.vocab * 4 * 2
    mode = "single" if nproc == 1 else parallel or "ddp"
    shards = nproc if mode == "fsdp" else 1
    tensors = list(inv.tensors)
    trained = [t for t in tensors if t.trainable]
    whole = _weight_bytes(tensors, 1)
    weights = _weight_bytes(tensors, shards)
    grads = 4 * sum(t.shard(shards) for t in trained)
    opt_gpu, opt_cpu = optimizer_bytes([t.shard(shards) for t in trained], optim)
    reference = 4 * inv.params if tuning == "full" and has_reference and not precompute_ref else 0
    gathered = _gathered_bytes(inv.tensors, nproc, precision) if mode == "fsdp" else 0
    offloaded = 0
    if cpu_offload:
        offloaded, weights, grads, opt_gpu = weights + grads + opt_gpu, 0, 0, 0
    return MemoryEstimate(tuning, inv.params, sum(t.numel for t in trained), weights, grads, opt_gpu, act, opt_cpu,
                          reference, gathered, offloaded, whole, mode, nproc)


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


#: Tunings from the heaviest to the lightest, as the multi-GPU advice falls back through them.
LADDER = ("full", "lora", "qlora")


def ladder(first: str) -> list[str]:
    """``first`` (a tuning), then the lighter tunings of :data:`LADDER` after it (all of them after a
    tuning outside the ladder): the order :func:`recommend_parallel` tries them in."""
    after = LADDER.index(first) + 1 if first in LADDER else 1
    return [first] + [t for t in LADDER[after:] if t != first]


def recommend_parallel(estimates: dict[tuple[str, str], MemoryEstimate], gpu_gib: float | None, nproc: int,
                       first: str, checkpointed: dict[tuple[str, str], MemoryEstimate] | None = None) -> str:
    """Advice for ``nproc`` GPUs of ``gpu_gib`` GiB each (90 % usable, as :func:`recommend`): the first
    that fits (:attr:`MemoryEstimate.total`) of ``first`` (a tuning) under ``ddp``, then under
    ``fsdp``, then the lighter tunings of :data:`LADDER` after it (lora, then qlora) the same way;
    each as estimated, else with gradient checkpointing (``checkpointed``). DDP comes first: it
    communicates less (FSDP moves the whole weights twice a step, DDP only the gradients), and a
    recomputed forward (checkpointing) usually costs less than that.

    Args:
        estimates: ``(tuning, engine) -> estimate`` for ``engine`` ``ddp`` and (when FSDP is
            possible) ``fsdp``; missing pairs are skipped.
    """
    if gpu_gib is None:
        return "give --gpu-memory GIB to choose between ddp and fsdp"
    budget = gpu_gib * 0.9 * GIB
    for tuning in ladder(first):
        for engine in ("ddp", "fsdp"):
            for table, how in ((estimates, ""), (checkpointed or {}, " with gradient checkpointing")):
                e = table.get((tuning, engine))
                if e is None or e.total > budget:
                    continue
                gib = f"{e.total / GIB:.1f} GiB per GPU"
                if engine == "ddp":
                    return f"ddp with {tuning}{how}: {gib}, the whole model on each of the {nproc} GPUs"
                ddp = table.get((tuning, "ddp"))
                return (f"fsdp with {tuning}{how}: {gib}, each GPU holding 1/{nproc} of the weights, gradients and "
                        f"optimizer states" + (f" (ddp would need {ddp.total / GIB:.1f})" if ddp else ""))
    offload = any(e.offloaded for e in estimates.values())
    return (f"does not fit on {nproc} GPUs of {gpu_gib:g} GiB: add GPUs, shorten --seq-len or lower --batch"
            + ("" if offload else ", or try --parallel fsdp --cpu-offload"))


def format_report(model_dir: str | os.PathLike[str], seq_len: int, batch: int, tunings: list[str], r: int,
                  gradient_checkpointing: bool, gpu_gib: float | None, examples: int | None,
                  optim: str = "adamw", method: str = SFT, precompute_ref: bool = False, *, precision: str = "bf16",
                  nproc: int = 1, parallel: str | None = None, cpu_offload: bool = False) -> str:
    """The table ``pyft estimate`` prints, one row per tuning of ``tunings``; with an ``optim`` other
    than ``adamw`` a line says how much optimizer memory it saves; methods with a reference model add
    a reference column. With ``nproc`` above 1: one row per tuning and engine (``parallel``, or both
    ``ddp`` and ``fsdp``), per GPU, and the multi-GPU advice (:func:`recommend_parallel`).

    Raises:
        ConfigError: multi-process options that do not go together (:func:`check_parallel`).
    """
    check_parallel(nproc, parallel, cpu_offload, optim)
    kw = {"optim": optim, "method": method, "precompute_ref": precompute_ref, "precision": precision}
    needed = [m for m in TUNINGS if m in tunings or m in LADDER]  # the rows, and what the advice compares
    est = {m: estimate(model_dir, m, seq_len, batch, r, gradient_checkpointing, **kw) for m in needed}
    ckpt = {m: estimate(model_dir, m, seq_len, batch, r, True, **kw) for m in needed}
    spec = get_method(method)
    per_row, has_reference = spec.sequences_per_row, spec.needs_reference
    rows = {1: f"batch {batch} x {seq_len} tokens", 2: f"batch {batch} pairs (chosen + rejected: {2 * batch} "
            f"sequences) x {seq_len} tokens"}[per_row]
    what = f"{spec.name}: "
    lines = [(f"model {Path(model_dir)}: {est['full'].params / 1e6:,.1f}M parameters; {what}{rows}"
              f"{' per process' if nproc > 1 else ''}; LoRA r={r}; "
              f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}; optimizer {optim}"
              + (f"; precision {precision}" if precision != "bf16" else "")
              + (f"; {nproc} processes, one GPU each" if nproc > 1 else ""))]
    if nproc > 1:
        lines += _parallel_table(model_dir, seq_len, batch, tunings, r, gradient_checkpointing, gpu_gib, examples,
                                 kw, nproc, parallel, cpu_offload)
    else:
        lines.append(f"{'tuning':<14}{'trainable':>12}{'weights':>10}{'grads':>10}{'optim':>10}{'activ.':>10}"
                     + (f"{'ref.':>10}" if has_reference else "") + f"{'total':>10}  (GiB)")
        for m in tunings:
            e = est[m]
            values = (e.weights, e.gradients, e.optimizer, e.activations) + ((e.reference,) if has_reference else ())
            lines.append(f"{m:<14}{e.trainable / 1e6:>11.2f}M"
                         + "".join(f"{v / GIB:>10.2f}" for v in (*values, e.total)))
    if has_reference:
        lines.append("reference model: lora/qlora use the base with adapters off (no copy); full keeps a frozen "
                     + ("copy (align.precompute_ref: true removes it)" if not precompute_ref
                        else "copy, removed here by precomputed reference log-probs")
                     + ("; whole on every process" if nproc > 1 else ""))
    if optim != "adamw":
        plain = {m: estimate(model_dir, m, seq_len, batch, r, gradient_checkpointing, method=method,
                             precompute_ref=precompute_ref, precision=precision) for m in tunings}
        lines.append(f"{optim} vs adamw, GPU optimizer memory saved: " + ", ".join(
            f"{m} {(plain[m].optimizer - est[m].optimizer) / GIB:.2f} GiB" for m in tunings)
            + ("; in pinned CPU memory: " + ", ".join(f"{m} {est[m].optimizer_cpu / GIB:.2f} GiB" for m in tunings)
               if optim.startswith("paged") else ""))
    if nproc == 1:
        lines.append("recommendation: " + recommend(est, gpu_gib, examples, ckpt))
    return "\n".join(lines)


def _parallel_table(model_dir: str | os.PathLike[str], seq_len: int, batch: int, tunings: list[str], r: int,
                    gradient_checkpointing: bool, gpu_gib: float | None, examples: int | None, kw: dict[str, Any],
                    nproc: int, parallel: str | None, cpu_offload: bool) -> list[str]:
    """The per-GPU rows of :func:`format_report` for ``nproc`` processes, its notes and advice."""
    fsdp_ok = kw["optim"] == "adamw"
    engines = [parallel] if parallel else ["ddp", "fsdp"] if fsdp_ok else ["ddp"]
    first = tunings[0] if len(tunings) == 1 else ("full" if examples is not None and examples > 100_000 else "lora")
    first = first if first in tunings else tunings[0]
    wanted = {(t, e) for t in tunings for e in engines}
    supported = get_method(kw["method"]).tunings
    wanted |= {(t, e) for t in ladder(first) if t in supported for e in ("ddp", "fsdp") if e == "ddp" or fsdp_ok}

    def one(tuning: str, engine: str, checkpointing: bool) -> MemoryEstimate:
        return estimate(model_dir, tuning, seq_len, batch, r, checkpointing, **kw, nproc=nproc, parallel=engine,
                        cpu_offload=cpu_offload and engine == "fsdp")

    est = {k: one(*k, gradient_checkpointing) for k in sorted(wanted)}
    ckpt = {k: one(*k, True) for k in sorted(wanted)}
    has_reference = get_method(kw["method"]).needs_reference
    lines = [f"{'tuning':<14}{'engine':>7}{'trainable':>12}{'weights':>10}{'grads':>10}{'optim':>10}{'activ.':>10}"
             f"{'gathered':>10}" + (f"{'ref.':>10}" if has_reference else "") + f"{'total':>10}"
             + (f"{'CPU':>10}" if cpu_offload else "") + "  (GiB per GPU)"]
    for t in tunings:
        for engine in engines:
            e = est[(t, engine)]
            values = (e.weights, e.gradients, e.optimizer, e.activations, e.gathered)
            values += ((e.reference,) if has_reference else ()) + (e.total,) + ((e.offloaded,) if cpu_offload else ())
            lines.append(f"{t:<14}{engine:>7}{e.trainable / 1e6:>11.2f}M" + "".join(f"{v / GIB:>10.2f}" for v in values))
    if "fsdp" in engines:
        lines.append(f"fsdp: each GPU keeps 1/{nproc} of the weights, gradients and optimizer states, and gathers "
                     "whole: the embeddings, final norm and output layer (with their gradients) for the whole step, "
                     "two decoder layers' weights and one layer's gradients at a time")
        if cpu_offload:
            lines.append(f"--cpu-offload: the shards, gradients and optimizer states (CPU column) live in CPU memory, "
                         f"per process ({nproc} processes on one machine need {nproc} times that)")
        loads = [(t, est[(t, "fsdp")].loading) for t in tunings if (t, "fsdp") in est]
        if loads:
            lines.append("loading (fsdp): each process reads the whole model into CPU memory, then moves it to its "
                         "GPU layer by layer as shards: " + ", ".join(f"{t} {b / GIB:.2f} GiB" for t, b in loads)
                         + " of CPU memory per process, memory-mapped and so shared by the processes of a machine "
                           "(a copy per process only when an adapter's base changes dtype before sharding)")
    elif not fsdp_ok:
        lines.append(f"fsdp: not with --optim {kw['optim']} (FSDP does not shard 8-bit or paged states)")
    label = f" ({nproc} GPUs of {gpu_gib:g} GiB)" if gpu_gib is not None else ""
    lines.append(f"recommendation{label}: " + recommend_parallel(est, gpu_gib, nproc, first, ckpt))
    return lines
