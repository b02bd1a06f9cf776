"""How the loop runs a micro-batch across processes: one process, PyTorch's DistributedDataParallel,
or FSDP2 (``torch.distributed.fsdp.fully_shard``).

The objective's loss is computed inside the ``forward`` of :class:`ObjectiveStep`, a module that
holds the model, so both engines see one forward per micro-batch: DDP prepares its bucketed,
backward-overlapped all-reduce there; FSDP2's root gathers the parameters it manages (embeddings,
final norm, output layer) for the whole loss, since the objectives call the decoder and the output
layer separately (:func:`pyft.losses.forward.forward_hidden`).

Gradients are **summed** over ranks, not averaged: each rank's loss is already divided by the
step's global normalisers (target tokens or pairs over all micro-batches and ranks), so the sum is
exactly the gradient of the global batch. DDP gets a sum comm hook, FSDP2 a gradient divide factor
of 1. Inner micro-steps of gradient accumulation neither communicate nor reshard
(:meth:`Parallel.micro_step`).

Under FSDP2 each decoder layer is its own unit and the rest of the model the root's; parameters
become ``DTensor`` shards (dim 0) of which each rank stores ``1/world``; gradients and optimizer
states follow them. ``precision: bf16`` gathers parameters in bf16 and reduces gradients in fp32
(``MixedPrecisionPolicy``); ``train.fsdp_cpu_offload`` keeps shards, gradients and optimizer states
in CPU memory (``CPUOffloadPolicy``).

QLoRA under FSDP: FSDP2 shards parameters, not buffers, and an :class:`~pyft.quant.NF4Linear` keeps
its packed 4-bit codes in a uint8 buffer, which every rank would hold whole. Before sharding, the
codes become a frozen parameter of a float dtype holding the same bytes (bitsandbytes'
``quant_storage``, as in Answer.AI's FSDP-QLoRA), so each rank stores ``1/world`` of them. The dtype
is the one the unit's other parameters are gathered in (:func:`nf4_storage_dtype`): FSDP skips the
mixed-precision cast of a parameter already in ``param_dtype``, so the all-gather moves the exact
bytes. The block scales (1/32 of the codes' bytes with double quantization, 1/8 without) stay
buffers on every rank.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pyft.errors import ConfigError
from pyft.quant.linear import NF4Linear, set_nf4_storage
from pyft.train.distributed import DistInfo

#: ``train.parallel`` values: how a multi-process run splits the work.
PARALLEL_MODES = ("ddp", "fsdp")


class ObjectiveStep(nn.Module):
    """``forward(batch, totals) -> (loss, metrics)``: the objective's loss of one micro-batch.

    Args:
        model: the model (its parameters are this module's, under ``model.``).
        objective: a :class:`pyft.objectives.Objective`; kept outside the module tree, so a reference
            model it may hold is neither wrapped nor sharded.
    """

    def __init__(self, model: nn.Module, objective: Any) -> None:
        super().__init__()
        self.model = model
        self.__dict__["objective"] = objective

    def forward(self, batch: dict[str, Any], totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective.loss(self.model, batch, totals)


def _sum_hook(_state, bucket):  # type: ignore[no-untyped-def]
    """DDP comm hook: all-reduce a gradient bucket (``dist.GradBucket``) as a sum (DDP's default
    averages); returns a ``Future[Tensor]``. Unannotated: DDP checks annotations against the classes
    themselves, and this module's are strings."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder's blocks (``model.get_decoder().layers`` or the architecture's equivalent), in order.

    Raises:
        ConfigError: the model has no list of blocks FSDP could shard by layer.
    """
    from pyft.train.grad_norms import decoder_blocks

    blocks = decoder_blocks(model)
    if not blocks:
        raise ConfigError(f"train.parallel: fsdp shards a model by decoder layer; {type(model).__name__} has no "
                          "list of decoder layers pyft recognises (use train.parallel: ddp)")
    return list(blocks)


def nf4_storage_dtype(model: nn.Module, param_dtype: torch.dtype | None) -> torch.dtype:
    """The float dtype to store NF4 codes in under FSDP: the one FSDP gathers the other parameters in.

    That is mixed precision's ``param_dtype`` when there is one: FSDP then casts every parameter to
    it for the all-gather except those already in it (a cast of the codes would convert values,
    destroying the bytes). Without one, each parameter is gathered in its own dtype, none is cast,
    and the model's main floating-point dtype (by element count; float32 if it has none) keeps the
    unit's all-gather in one dtype.
    """
    if param_dtype is not None:
        return param_dtype
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def nf4_bytes(model: nn.Module) -> tuple[int, int, int]:
    """Bytes of the NF4 base: ``(codes this rank holds, codes in the whole model, block scales)``.

    The codes are counted in their storage (a float parameter's local FSDP shard, unpadded, or the
    whole tensor); the scales (``absmax`` and the double-quantization tensors) are whole on every rank.
    """
    held = whole = scales = 0
    for m in model.modules():
        if not isinstance(m, NF4Linear):
            continue
        w = m.weight
        local = w.to_local() if hasattr(w, "to_local") else w
        held += local.numel() * local.element_size()
        whole += w.numel() * w.element_size()
        scales += sum(t.numel() * t.element_size() for name, t in m.named_buffers(recurse=False) if name != "weight")
    return held, whole, scales


def _report_nf4_shards(model: nn.Module, dist_info: DistInfo, device: torch.device, dtype: torch.dtype) -> None:
    """Print (rank 0, stderr) the NF4 code bytes each rank holds after sharding; call on every rank."""
    held, whole, scales = nf4_bytes(model)
    mine = torch.tensor([held], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(dist_info.world)]
    dist.all_gather(every, mine)
    if dist_info.is_main:
        per_rank = ", ".join(str(int(t.item())) for t in every)
        print(f"[train] fsdp: NF4 base codes stored as {str(dtype).removeprefix('torch.')}, held per rank: "
              f"{per_rank} of {whole} bytes; block scales: {scales} bytes on every rank", file=sys.stderr)


@dataclass
class Parallel:
    """The engine a run uses, and the module its micro-batches go through.

    Attributes:
        mode: ``single`` (one process), ``ddp`` or ``fsdp``.
        runner: call ``runner(batch, totals)`` for the loss (DDP wrapper, FSDP root or the plain step).
        step_module: the :class:`ObjectiveStep` (FSDP root under fsdp); its ``model`` is the run's model.
    """

    mode: str
    runner: nn.Module
    step_module: ObjectiveStep

    @property
    def sharded(self) -> bool:
        """Whether parameters are FSDP shards (``DTensor``), not whole tensors."""
        return self.mode == "fsdp"

    def fsdp_modules(self) -> list[nn.Module]:
        from torch.distributed.fsdp import FSDPModule

        return [m for m in self.step_module.modules() if isinstance(m, FSDPModule)]

    @contextlib.contextmanager
    def micro_step(self, last: bool) -> Iterator[None]:
        """Run one micro-batch's forward and backward inside this; only the ``last`` of a step
        reduces gradients across ranks (and, under FSDP, reshards after its backward)."""
        if self.mode == "ddp" and not last:
            with self.runner.no_sync():  # type: ignore[operator]
                yield
            return
        if self.mode == "fsdp":
            for m in self.fsdp_modules():
                m.set_requires_gradient_sync(last, recurse=False)  # type: ignore[operator]
                m.set_reshard_after_backward(last, recurse=False)  # type: ignore[operator]
        yield

    def reshard(self) -> None:
        """Free gathered parameters after forward passes without a backward (evaluation): the root
        keeps its parameters gathered after forward, for the backward, until this."""
        for m in self.fsdp_modules():
            m.reshard()  # type: ignore[operator]

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip the gradients of ``params`` to global L2 norm ``max_norm``; returns the norm before
        clipping (over all shards under FSDP)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)


def build_parallel(model: nn.Module, objective: Any, mode: str, dist_info: DistInfo, device: torch.device,
                   precision: str, cpu_offload: bool = False, find_unused: bool = False,
                   cast_to: torch.dtype | None = None) -> Parallel:
    """Wrap ``model`` for ``mode`` (``ddp`` or ``fsdp``; one process is always ``single``).

    Args:
        model: the model with its trainable parameters set (``requires_grad``); FSDP shards it in
            place, so build the optimizer from it afterwards. Under FSDP its NF4 layers' codes
            become float parameters first (:func:`nf4_storage_dtype`; same bytes, same outputs).
        objective: the run's objective.
        dist_info: the process group (world 1: no wrapping).
        device: where parameters live.
        precision: the resolved precision (``bf16`` selects FSDP's bf16 gathers, fp32 reductions).
        cpu_offload: FSDP only, keep shards, gradients and optimizer states on the CPU.
        find_unused: DDP only, for runs whose trainable set changes (stages, progressive unfreezing).
        cast_to: FSDP only, the dtype the floating-point parameters train in, when the model was
            loaded in its checkpoint's dtype (memory-mapped, shared by the processes of a machine):
            each unit is cast just before it is sharded, so a process never holds more than one
            converted layer whole.
    """
    step = ObjectiveStep(model, objective)
    if not dist_info.enabled:
        return Parallel("single", step, step)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(step, device_ids=ids, broadcast_buffers=False,
                                      find_unused_parameters=find_unused, gradient_as_bucket_view=True)
        ddp.register_comm_hook(None, _sum_hook)
        return Parallel("ddp", ddp, step)
    if mode != "fsdp":
        raise ConfigError(f"train.parallel: expected {' or '.join(PARALLEL_MODES)}, got {mode!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist_info.world,))
    mixed = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16"
             else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    storage = nf4_storage_dtype(model, mixed.param_dtype)
    quantized = set_nf4_storage(model, storage)
    for layer in decoder_layers(model):
        _cast_parameters(layer, cast_to)
        fully_shard(layer, mesh=mesh, mp_policy=mixed, offload_policy=offload)
    _cast_parameters(step, cast_to)  # the root's own: embeddings, final norm, output layer
    if cast_to is not None and hasattr(model, "config"):
        model.config.dtype = cast_to  # what the saved config.json says the weights are
    fully_shard(step, mesh=mesh, mp_policy=mixed, offload_policy=offload, reshard_after_forward=False)
    parallel = Parallel("fsdp", step, step)
    for m in parallel.fsdp_modules():
        m.set_gradient_divide_factor(1.0)  # type: ignore[operator]
        m.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]  # a plain SUM (gloo has no PREMUL_SUM)
    if quantized:
        _report_nf4_shards(model, dist_info, device, storage)
    return parallel


def _cast_parameters(module: nn.Module, dtype: torch.dtype | None) -> None:
    """Cast ``module``'s floating-point parameters not yet sharded to ``dtype`` (new storage; tied
    parameters stay one tensor). Already sharded ones (``DTensor``) and buffers are left alone."""
    if dtype is None:
        return
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype and not hasattr(p, "to_local"):
            p.data = p.data.to(dtype)


def gather_to_main(parallel: Parallel, dist_info: DistInfo, trainable_only: bool) -> None:
    """Put whole parameters back into the model on rank 0 after FSDP training, for writing the outputs.

    Every rank takes part (each parameter is all-gathered in turn, so at most one whole parameter is
    in flight per rank). On rank 0 each gathered parameter replaces its shard in every module that
    holds it (tied weights stay tied), on the CPU; other ranks keep their shards. Afterwards the model
    is for saving only: no more forward passes through FSDP. A no-op unless ``parallel`` is sharded.

    Args:
        trainable_only: gather just the trained parameters (adapters, ``modules_to_save``): the base
            weights an adapter run saves nothing of stay sharded.
    """
    if not parallel.sharded:
        return
    model = parallel.step_module.model
    whole: dict[int, nn.Parameter] = {}
    for _, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        if dist_info.is_main:
            whole[id(p)] = nn.Parameter(full.detach().to("cpu"), requires_grad=p.requires_grad)
    if not dist_info.is_main:
        return
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in whole:
                module._parameters[name] = whole[id(p)]
