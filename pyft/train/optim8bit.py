"""AdamW with 8-bit block-wise states, and paged states that live in pinned CPU memory.

:class:`AdamW8bit` keeps Adam's moments ``m`` and ``v`` as one byte per parameter plus one
float32 ``absmax`` per block of 256 (:mod:`pyft.train.blockwise8`; signed map for ``m``,
unsigned for ``v``): 2.03 bytes per parameter instead of 8. Tensors below ``min_8bit_size``
(4096) elements keep float32 states, as in bitsandbytes. Each step dequantizes a tensor's
states, updates them and the parameter in float32, then quantizes them again with new
``absmax``:

    m = b1·m + (1 - b1)·g               v = b2·v + (1 - b2)·g²
    p = p·(1 - lr·wd)                   p = p - lr/(1 - b1^t) · m / (sqrt(v)/sqrt(1 - b2^t) + eps)

(decoupled weight decay before the update; bias corrections at step ``t``). The arithmetic is
bitsandbytes' pure-PyTorch and CPU 8-bit update, operation for operation, and its 32-bit update
for the float32 states; its CUDA kernel applies the weight decay after the update instead, which
differs by ``lr²·wd`` times the update.

:class:`PagedAdamW` / :class:`PagedAdamW8bit` put the states of CUDA parameters with at least
``page_min_size`` (1e5) elements in pinned CPU memory. A step streams them to the GPU in slices
of at most 4M elements on a side stream (the next slice uploads while the current one updates),
and back, so the GPU holds at most two slices of optimizer state instead of all of it: the
point of bitsandbytes' paged optimizers (which use CUDA unified memory and page on demand)
without their spikes. On CPU parameters paging does nothing (with a warning, as bitsandbytes).

The states are ``state1``, ``state2`` (and ``absmax1``, ``absmax2`` for 8-bit ones) and ``step``
per parameter: bitsandbytes' names and layout, so ``state_dict()`` can be compared with it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from pyft.train.blockwise8 import BLOCK, dequantize_blockwise, quantize_blockwise

#: Elements updated at a time (a multiple of the block size): bounds the float32 temporaries
#: of a big tensor, and the GPU memory of a paged slice.
CHUNK = 1 << 22


class BlockwiseAdamW(torch.optim.Optimizer):
    """AdamW with float32 or 8-bit block-wise states, optionally paged to pinned CPU memory.

    Use :class:`AdamW8bit`, :class:`PagedAdamW` or :class:`PagedAdamW8bit`.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Default: 1e-3.
        betas: ``(b1, b2)``, the moments' decay rates. Default: (0.9, 0.999).
        eps: added to ``sqrt(v)`` (bias corrected). Default: 1e-8.
        weight_decay: decoupled weight decay. Default: 1e-2.
        optim_bits: 8 (block-wise quantized states) or 32. Default: 8.
        min_8bit_size: tensors with fewer elements keep float32 states. Default: 4096.
        paged: keep the states of large CUDA tensors in pinned CPU memory. Default: False.
        page_min_size: smaller tensors keep their states on the GPU. Default: 100000.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, optim_bits: int = 8, min_8bit_size: int = 4096, paged: bool = False,
                 page_min_size: int = 100_000) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32, got {optim_bits}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.optim_bits = optim_bits
        self.min_8bit_size = min_8bit_size
        self.paged = paged
        self.page_min_size = page_min_size
        self._warned_cpu_paging = False
        self._copy_streams: dict[torch.device, Any] = {}

    # -- where the states live -------------------------------------------------------------
    def _state_device(self, p: torch.Tensor) -> torch.device:
        """Pinned CPU memory for a paged CUDA tensor, else the parameter's device."""
        if self.paged and p.is_cuda and p.numel() >= self.page_min_size:
            return torch.device("cpu")
        if self.paged and not p.is_cuda and not self._warned_cpu_paging:
            warnings.warn("paged optimizer states need CUDA parameters; on CPU they stay in ordinary memory",
                          stacklevel=3)
            self._warned_cpu_paging = True
        return p.device

    def _new(self, p: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        device = self._state_device(p)
        pin = device.type == "cpu" and p.is_cuda
        return torch.zeros(shape, dtype=dtype, device=device, pin_memory=pin)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        eight = self.optim_bits == 8 and p.numel() >= self.min_8bit_size
        dtype = torch.uint8 if eight else torch.float32
        state = {"step": 0, "state1": self._new(p, p.shape, dtype), "state2": self._new(p, p.shape, dtype)}
        if eight:
            blocks = -(-p.numel() // BLOCK)
            state["absmax1"] = self._new(p, (blocks,), torch.float32)
            state["absmax2"] = self._new(p, (blocks,), torch.float32)
        self.state[p] = state
        return state

    # -- the update ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One AdamW update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        streamed: dict[torch.device, list] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                if not p.is_contiguous():
                    p.data = p.data.contiguous()
                if not p.grad.is_contiguous():
                    p.grad = p.grad.contiguous()
                state = self.state[p] or self._init_state(p)
                state["step"] += 1
                for lo in range(0, p.numel(), CHUNK):
                    work = (group, p, state, lo, min(lo + CHUNK, p.numel()))
                    if state["state1"].device == p.device:
                        _update_slice(*work, _slices(state, work[3], work[4]))
                    else:
                        streamed.setdefault(p.device, []).append(work)
        for device, work in streamed.items():
            self._stream(device, work)
        return loss

    def _stream(self, device: torch.device, work: list) -> None:
        """Update slices whose states are in pinned CPU memory: upload each on a side stream
        (the next one while the current one updates), update it on the current stream, copy it
        back on the side stream; wait for the copies before returning."""
        compute = torch.cuda.current_stream(device)
        copy = self._copy_streams.get(device)
        if copy is None:
            copy = self._copy_streams[device] = torch.cuda.Stream(device)

        def upload(item: tuple) -> tuple[dict[str, torch.Tensor], Any]:
            with torch.cuda.stream(copy):
                on_gpu = {k: v.to(device, non_blocking=True) for k, v in _slices(item[2], item[3], item[4]).items()}
                ready = torch.cuda.Event()
                ready.record(copy)
            return on_gpu, ready

        pending = upload(work[0])
        returned = None  # the previous slice's copy back to the host
        for i, item in enumerate(work):
            on_gpu, ready = pending
            if returned is not None:
                # Keep the host at most one slice ahead of the GPU: without this wait it would queue
                # every upload at once and the GPU would hold all the slices, not two.
                returned.synchronize()
            if i + 1 < len(work):
                pending = upload(work[i + 1])
            compute.wait_event(ready)
            for t in on_gpu.values():
                t.record_stream(compute)  # allocated on the copy stream, used on this one
            _update_slice(*item, on_gpu)
            done = torch.cuda.Event()
            done.record(compute)
            copy.wait_event(done)
            with torch.cuda.stream(copy):
                for k, host in _slices(item[2], item[3], item[4]).items():
                    host.copy_(on_gpu[k], non_blocking=True)
                returned = torch.cuda.Event()
                returned.record(copy)
        copy.synchronize()

    # -- checkpoints -----------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, keeping each state's dtype (torch's default
        would cast the uint8 codes and float32 scales to the parameter's dtype) and putting it
        where this optimizer keeps it (pinned CPU memory for paged tensors)."""
        super().load_state_dict(state_dict)  # checks the groups, restores their hyper-parameters
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            saved = state_dict["state"].get(i)
            if saved is None:
                continue
            placed = {}
            for k, v in saved.items():
                if torch.is_tensor(v):
                    placed[k] = self._new(p, tuple(v.shape), v.dtype)
                    placed[k].copy_(v)
                else:
                    placed[k] = v
            self.state[p] = placed

    def state_bytes(self) -> int:
        """Bytes of all optimizer state tensors (wherever they live)."""
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values() if torch.is_tensor(v))


class AdamW8bit(BlockwiseAdamW):
    """AdamW with 8-bit block-wise states (bitsandbytes' ``AdamW8bit``); see :class:`BlockwiseAdamW`."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, min_8bit_size: int = 4096, paged: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, optim_bits=8, min_8bit_size=min_8bit_size, paged=paged)


class PagedAdamW8bit(BlockwiseAdamW):
    """:class:`AdamW8bit` with large CUDA tensors' states in pinned CPU memory (``paged_adamw_8bit``)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, min_8bit_size: int = 4096, page_min_size: int = 100_000) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, optim_bits=8, min_8bit_size=min_8bit_size, paged=True,
                         page_min_size=page_min_size)


class PagedAdamW(BlockwiseAdamW):
    """AdamW with float32 states, large CUDA tensors' in pinned CPU memory (``paged_adamw_32bit``)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, page_min_size: int = 100_000) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, optim_bits=32, paged=True, page_min_size=page_min_size)


def _slices(state: dict[str, Any], lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Views of a parameter's states for its flat elements ``[lo, hi)`` (``lo`` a multiple of 256)."""
    out = {k: state[k].view(-1)[lo:hi] for k in ("state1", "state2")}
    for k in ("absmax1", "absmax2"):
        if k in state:
            out[k] = state[k][lo // BLOCK : -(-hi // BLOCK)]
    return out


def _update_slice(group: dict[str, Any], p: torch.Tensor, state: dict[str, Any], lo: int, hi: int,
                  s: dict[str, torch.Tensor]) -> None:
    """AdamW on the flat elements ``[lo, hi)`` of ``p``; ``s`` are the matching state views on
    ``p``'s device, updated in place."""
    beta1, beta2 = group["betas"]
    lr, eps, wd, step = group["lr"], group["eps"], group["weight_decay"], state["step"]
    param = p.detach().view(-1)[lo:hi]
    grad = p.grad.detach().view(-1)[lo:hi].float()
    p32 = param.float()  # the parameter itself when it is float32
    eight = s["state1"].dtype == torch.uint8
    if eight:
        m = dequantize_blockwise(s["state1"], s["absmax1"], signed=True)
        v = dequantize_blockwise(s["state2"], s["absmax2"], signed=False)
    else:
        m, v = s["state1"], s["state2"]
    m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    correction1 = 1.0 - beta1**step
    correction2 = math.sqrt(1.0 - beta2**step)
    if wd > 0.0:
        p32.mul_(1.0 - lr * wd)
    if eight:
        p32.addcdiv_(m, (v.sqrt() / correction2).add_(eps), value=-lr / correction1)
        for codes, absmax, x, signed in ((s["state1"], s["absmax1"], m, True), (s["state2"], s["absmax2"], v, False)):
            q, a = quantize_blockwise(x, signed)
            codes.copy_(q)
            absmax.copy_(a)
    else:  # the same value, in the order of bitsandbytes' 32-bit kernel: eps scaled by sqrt(1 - b2^t)
        p32.add_(m / (v.sqrt() + eps * correction2), alpha=-lr * correction2 / correction1)
    if p32.data_ptr() != param.data_ptr():
        param.copy_(p32)
