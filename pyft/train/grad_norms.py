"""Gradient norms per layer group, and warnings about exploding or vanishing gradients naming the group.

The groups of a causal LM, in model order: ``embeddings`` (input embeddings, and position
embeddings where the architecture has them), ``layers.<i>`` (decoder block ``i``: its weights under
full fine-tuning, its adapter weights under LoRA), ``norm`` (the final norm), ``head`` (``lm_head``,
or a reward model's ``score``; a head tied to the input embeddings is one parameter, counted once in
``embeddings``) and ``other`` (everything else). Only trainable parameters count, and only those
that have a gradient. The group norms are the global gradient norm split up: the sum of their
squares is the square of ``clip_grad_norm_``'s total norm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

#: Attribute names of the decoder's block list and final norm across transformers architectures.
BLOCK_LISTS = ("layers", "h", "blocks", "block")
FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


def _call(model: nn.Module, method: str) -> nn.Module | None:
    """``model.<method>()`` when the model has that method and it returns a module, else None."""
    fn = getattr(model, method, None)
    try:
        out = fn() if callable(fn) else None
    except (AttributeError, NotImplementedError):
        return None
    return out if isinstance(out, nn.Module) else None


def _decoder(model: nn.Module) -> nn.Module:
    decoder = _call(model, "get_decoder")
    return decoder if decoder is not None else model


def _blocks(decoder: nn.Module, model: nn.Module) -> nn.ModuleList | None:
    for name in BLOCK_LISTS:
        blocks = getattr(decoder, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return blocks
    # Fallback: the module list holding the most parameters.
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)


def decoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The decoder's list of blocks (``layers``, ``h``, ... as the architecture names it), or None."""
    return _blocks(_decoder(model), model)


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of ``model`` by group (see the module docstring), groups in model order.

    The grouping depends on module structure only: compute it once (after adapters are injected
    and parameters frozen) and pass it to :func:`grad_norms_by_group` at each step. Empty groups
    are left out.
    """
    group_of: dict[int, str] = {}

    def claim(module: nn.Module | None, group: str) -> None:
        if module is not None:
            for p in module.parameters():
                group_of.setdefault(id(p), group)  # first claim wins: a tied head stays in embeddings

    claim(_call(model, "get_input_embeddings"), "embeddings")
    decoder = _decoder(model)
    blocks = _blocks(decoder, model)
    for i, block in enumerate(blocks if blocks is not None else []):
        claim(block, f"layers.{i}")
    claim(next((getattr(decoder, n) for n in FINAL_NORMS if isinstance(getattr(decoder, n, None), nn.Module)),
               None), "norm")
    head = _call(model, "get_output_embeddings")
    claim(head if head is not None else getattr(model, "score", None), "head")
    for m in model.modules():  # position embeddings (GPT-2's wpe) and any other embedding table
        if isinstance(m, nn.Embedding):
            claim(m, "embeddings")
    order = ["embeddings", *(f"layers.{i}" for i in range(len(blocks) if blocks is not None else 0)), "norm",
             "head", "other"]
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in order}
    for p in model.parameters():
        if p.requires_grad:
            groups[group_of.get(id(p), "other")].append(p)
    return {name: ps for name, ps in groups.items() if ps}


@torch.no_grad()
def grad_norms_by_group(model: nn.Module,
                        groups: Mapping[str, list[nn.Parameter]] | None = None) -> dict[str, float]:
    """The L2 norm of the gradients of each layer group (groups without any gradient left out).

    Per-tensor norms in float32 (``torch._foreach_norm``, as ``clip_grad_norm_``, but returned in
    float32 whatever the gradients' dtype, where ``clip_grad_norm_`` rounds a bf16 tensor's norm to
    bf16), squared and summed per group with one ``index_add_``, read back with one device sync.
    Each per-tensor norm carries the float32 reduction error of torch's kernel, as the global norm does.
    Call it after gradients are complete (all-reduced, unscaled), before the optimizer step, on every
    rank: under FSDP the squares of the shards are summed over ranks. Metrics: ``grad_norm/<group>``.

    Args:
        model: the model whose ``.grad`` tensors are read.
        groups: from :func:`layer_groups` (computed here when not given).

    Returns:
        ``{group: norm}`` in group order; ``sqrt(Σ norm²)`` is the global gradient norm. Squares are
        float32: group norms beyond ~1e19 read as ``inf``, below ~1e-19 as 0 (both far past the
        exploding/vanishing thresholds).
    """
    groups = layer_groups(model) if groups is None else groups
    names = list(groups)
    grads: list[torch.Tensor] = []
    index: list[int] = []
    for g, name in enumerate(names):
        for p in groups[name]:
            if p.grad is not None:
                grads.append(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad)  # FSDP: this rank's shard
                index.append(g)
    sharded = any(hasattr(p.grad, "to_local") for ps in groups.values() for p in ps if p.grad is not None)
    if not grads:
        return {}
    device = grads[0].device
    squares = torch.empty(len(grads), dtype=torch.float32, device=device)
    by_device: dict[torch.device, list[int]] = {}
    for k, grad in enumerate(grads):
        by_device.setdefault(grad.device, []).append(k)
    for ks in by_device.values():  # foreach kernels take one device at a time
        norms = torch._foreach_norm([grads[k] for k in ks], 2.0, dtype=torch.float32)
        squares[torch.tensor(ks, device=device)] = torch.stack(norms).to(device).square()
    sums = torch.zeros(len(names), dtype=torch.float32, device=device)
    sums.index_add_(0, torch.tensor(index, device=device), squares)
    if sharded:  # FSDP: each rank holds a shard of every gradient; the squares add up over ranks
        import torch.distributed as dist

        dist.all_reduce(sums)
    present = set(index)
    values = sums.sqrt().tolist()
    return {name: values[g] for g, name in enumerate(names) if g in present}


class GradientHealth:
    """Per-group running averages of gradient norms, and the warning of a step when a group's
    gradients explode or vanish (the rules of the loop's global check, applied per group).

    A group explodes when its norm passes ``ratio`` (10) times its running average (an exponential
    average with weight 0.1 on the newest norm, before this step's norm joins it); it vanishes below
    ``floor`` (1e-8). Nothing is said in the first ``warmup`` (10) steps, and at most one warning is
    given per ``every`` (50) steps; it names the worst group (exploding before vanishing) and the
    other groups that crossed a threshold. Non-finite norms are left to the loop's own check and do not
    enter the averages.
    """

    def __init__(self, ratio: float = 10.0, floor: float = 1e-8, warmup: int = 10, every: int = 50) -> None:
        self.ratio, self.floor, self.warmup, self.every = ratio, floor, warmup, every
        self.averages: dict[str, float] = {}
        self.last_warning = -(10**9)

    def update(self, step: int, norms: Mapping[str, float]) -> str | None:
        """Fold this step's group norms into the averages; the warning text, or None.

        Args:
            step: optimizer updates completed before this one (the loop's ``self.step``).
            norms: ``{group: norm}``, e.g. from :func:`grad_norms_by_group`.
        """
        exploding: list[tuple[float, str, float]] = []
        vanishing: list[tuple[str, float]] = []
        for name, norm in norms.items():
            if not math.isfinite(norm):
                continue
            avg = self.averages.get(name)
            self.averages[name] = norm if avg is None else 0.9 * avg + 0.1 * norm
            if avg and norm > self.ratio * avg:
                exploding.append((norm / avg, name, norm))
            elif norm < self.floor:
                vanishing.append((name, norm))
        if step < self.warmup or step - self.last_warning < self.every or not (exploding or vanishing):
            return None
        self.last_warning = step
        exploding.sort(reverse=True)
        if exploding:
            factor, name, norm = exploding[0]
            message = f"exploding gradients in {name}: norm {norm:.3g} is {factor:.0f}x its recent average"
            if len(exploding) > 1:
                message += f" (also {', '.join(n for _, n, _ in exploding[1:])})"
            if vanishing:
                message += f"; vanishing in {', '.join(n for n, _ in vanishing)}"
        else:
            name, norm = vanishing[0]
            message = f"vanishing gradients in {name}: norm {norm:.3g}"
            if len(vanishing) > 1:
                message += f" (also {', '.join(n for n, _ in vanishing[1:])})"
            message += "; check the learning rate and the loss mask"
        return message
