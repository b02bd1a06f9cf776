"""Block-wise 8-bit dynamic quantization: the storage format of 8-bit optimizer states.

A tensor is cut into blocks of 256 consecutive elements (the last may be shorter); each block
keeps its largest magnitude ``absmax`` (float32) and one byte per element, the index of the
code nearest to ``x / absmax`` in a 256-entry *dynamic map* (Dettmers, "8-Bit Approximations
for Parallelism in Deep Learning", arXiv:1511.04561). The map spends its codes on powers of ten
from 1e-6 to 1, so small values keep their relative precision. bitsandbytes' 8-bit optimizers
store Adam's first moment with the signed map and the second moment with the unsigned one.

Rounding is to the nearest code: ``x / absmax`` is compared with the float32 midpoints between
neighbouring codes, as bitsandbytes' CUDA kernel does at the end of its binary search (a value
equal to a midpoint takes the lower code). bitsandbytes' pure-PyTorch reference takes the
``argmin`` of the distances instead, which can differ for a value within one ulp of a midpoint;
its CPU kernel (0.50) looks codes up in a 65,536-bin table, which sends normalised values below
about 3e-5 to a coarser code.

Finding the code is a table look-up rather than a binary search (8x faster on CPU): the top 17
bits of the float32 (sign, exponent, 8 mantissa bits) select an interval of floats that holds at
most one midpoint of the map, so the code is the number of midpoints below the interval plus one
comparison with that midpoint. This gives exactly ``bucketize(x, midpoints)``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

#: Elements per quantization block (bitsandbytes' 8-bit optimizers use 256).
BLOCK = 256


def dynamic_map(signed: bool) -> torch.Tensor:
    """The 256 codes of bitsandbytes' ``create_dynamic_map(signed)`` (7 exponent bits), sorted.

    For each exponent ``e`` in 10^-6 .. 10^0 the codes are ``e`` times the midpoints of a
    linear grid on [0.1, 1] with ``2^i + 1`` points (``2^(i+1) + 1`` unsigned: the sign bit
    is spent on precision instead), mirrored to negative values when ``signed``, plus 0 and 1.

    Returns:
        float32 tensor of shape ``(256,)``, bit-for-bit the bitsandbytes map.
    """
    values: list[float] = []
    for i in range(7):
        points = 2**i + 1 if signed else 2 ** (i + 1) + 1
        grid = torch.linspace(0.1, 1, points, dtype=torch.float32)
        # float32 midpoints, scaled in float32 (a Python scalar times a float32 tensor)
        scaled = 10 ** (i - 6) * ((grid[:-1] + grid[1:]) / 2.0)
        values += scaled.tolist()
        if signed:
            values += (-scaled).tolist()
    values += [0.0, 1.0]
    assert len(values) == 256
    return torch.tensor(sorted(values), dtype=torch.float32)


KEY_SHIFT = 15  # a float32's top 32 - 15 = 17 bits select its look-up interval


@cache
def _tables(signed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, below, midpoint)`` on ``device``, built once.

    For each 17-bit key: ``below`` (uint8) counts the map's midpoints under the key's interval of
    floats, ``midpoint`` (float32) is the next midpoint (+inf past the last). No interval holds
    two midpoints (checked), so ``below + (x > midpoint)`` counts the midpoints under ``x``.
    """
    code = dynamic_map(signed)
    mids = (code[:-1] + code[1:]) / 2
    keys = np.arange(1 << (32 - KEY_SHIFT), dtype=np.uint32) << KEY_SHIFT
    ends = torch.from_numpy(np.stack([keys, keys | ((1 << KEY_SHIFT) - 1)]).view(np.float32))
    low, high = ends.amin(dim=0), ends.amax(dim=0)  # negative floats order the other way
    below = torch.bucketize(low, mids)
    finite = low.isfinite() & high.isfinite()
    below[~finite] = 0
    assert (torch.bucketize(high, mids, right=True) - below)[finite].max() <= 1
    midpoint = torch.cat([mids, torch.tensor([float("inf")])])[below]
    return code.to(device), below.to(torch.uint8).to(device), midpoint.to(device)


def code_map(signed: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """The dynamic map on ``device`` (cached; do not modify it)."""
    return _tables(signed, torch.device(device))[0]


def _blocks(x: torch.Tensor) -> list[torch.Tensor]:
    """2-D views of the flat tensor ``x``: ``(n // 256, 256)`` full blocks, then ``(1, n % 256)``."""
    full = x.numel() - x.numel() % BLOCK
    parts = [x[:full].view(-1, BLOCK)] if full else []
    if full < x.numel():
        parts.append(x[full:].view(1, -1))
    return parts


def quantize_blockwise(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a flat float32 tensor block by block.

    Args:
        x: float32, shape ``(n,)``, contiguous.
        signed: the signed map (values of both signs) or the unsigned one (``x >= 0``).

    Returns:
        ``(codes, absmax)``: uint8 ``(n,)`` and float32 ``(ceil(n / 256),)``. An all-zero block
        has ``absmax`` 0 and the code of 0.
    """
    _, below, midpoint = _tables(signed, x.device)
    parts = _blocks(x)
    absmax = torch.cat([p.abs().amax(dim=1) for p in parts])
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = torch.empty_like(x)
    first = 0
    for part, out in zip(parts, _blocks(normed)):
        torch.div(part, scale[first : first + part.shape[0], None], out=out)
        first += part.shape[0]
    # the number of midpoints below each value: the nearest code, ties to the lower one
    key = (normed.view(torch.int32) >> KEY_SHIFT) & ((1 << (32 - KEY_SHIFT)) - 1)
    codes = below.index_select(0, key)
    codes += normed > midpoint.index_select(0, key)
    return codes, absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: ``map[codes] * absmax`` per block, float32 ``(n,)``."""
    out = code_map(signed, codes.device).index_select(0, codes.int())
    first = 0
    for part in _blocks(out):
        part.mul_(absmax[first : first + part.shape[0], None])
        first += part.shape[0]
    return out
