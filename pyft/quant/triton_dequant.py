"""NF4 dequantization as one Triton kernel, bit-for-bit like :func:`pyft.quant.dequantize_nf4_torch`.

One program turns ``BYTES`` packed bytes into ``2 * BYTES`` contiguous output elements. Both
nibbles of a byte lie in the same block (block sizes are even), so each byte needs one scale:

- float32 scales: ``scale = absmax[byte // (blocksize / 2)]``;
- double-quantized scales, rebuilt in the kernel from the compressed state (no float32 ``[nb]``
  temporary): ``scale = fp32(fp32(code8[q8[b]] * nested_absmax[b // nested_blocksize]) + offset)``.

then ``out = to_dtype(fp32(NF4[nibble] * scale))``, the bfloat16 rounding (to nearest even) done
in integer ops (see :func:`_bf16_bits_rne`). The spec (``nf4.md`` §3.3) requires the
rebuild's multiply and add to round separately: the kernel is always launched with
``enable_fp_fusion=False``, which turns off LLVM's contraction and passes ``--fmad=false`` to
ptxas, so no FMA can appear (a test compiles the kernel for sm_80 and sm_90 without a GPU and
checks the PTX and SASS; with fusion on, the rebuild does become an FMA).

Not measured on a GPU yet: correctness is tested with Triton's interpreter on CPU (the same
arithmetic, see ``tests/test_quant_triton.py``), speed not at all.

Import this module only where Triton is installed; :func:`pyft.quant.dequant.dequantize_nf4` picks this
kernel for CUDA tensors and the PyTorch path otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from pyft.quant.dequant import NestedAbsmax, nf4_code

#: Packed bytes per program (4096 output elements): 16 bytes per thread with 4 warps (one
#: vectorised load each); a 4096 x 4096 weight still spreads over 2048 programs. Not tuned.
BYTES_PER_PROGRAM = 2048

_CODES: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _nf4_dequant_kernel(
    packed_ptr,  # uint8 [nbytes]
    absmax_ptr,  # float32 [nb], or uint8 q8 [nb] when NESTED
    nested_absmax_ptr,  # float32 [ceil(nb / nested_blocksize)] (NESTED only)
    nested_code_ptr,  # float32 [256] (NESTED only)
    offset_ptr,  # float32 [1] (NESTED only)
    code_ptr,  # float32 [16], the NF4 values
    out_ptr,  # float32 / float16 [n], or the int16 view of a bfloat16 [n] when BF16_BITS
    n,
    nbytes,
    half_block,  # blocksize // 2: packed bytes per block
    nested_blocksize,
    NESTED: tl.constexpr,
    BF16_BITS: tl.constexpr,
    BYTES: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BYTES + tl.arange(0, BYTES)
    live = byte < nbytes
    packed = tl.load(packed_ptr + byte, mask=live, other=0).to(tl.int32)
    hi = tl.load(code_ptr + (packed >> 4))
    lo = tl.load(code_ptr + (packed & 15))
    block = byte // half_block
    if NESTED:
        q8 = tl.load(absmax_ptr + block, mask=live, other=0).to(tl.int32)
        value = tl.load(nested_code_ptr + q8)
        nested = tl.load(nested_absmax_ptr + block // nested_blocksize, mask=live, other=0.0)
        offset = tl.load(offset_ptr)
        scaled = value * nested
        scale = scaled + offset  # a separate rounding: launched with enable_fp_fusion=False
    else:
        scale = tl.load(absmax_ptr + block, mask=live, other=0.0)
    values = tl.interleave(hi * scale, lo * scale)  # element 2k from the high nibble, 2k + 1 from the low
    element = pid * (2 * BYTES) + tl.arange(0, 2 * BYTES)
    if BF16_BITS:
        values = _bf16_bits_rne(values)
    tl.store(out_ptr + element, values.to(out_ptr.dtype.element_ty), mask=element < n)


@triton.jit
def _bf16_bits_rne(x):
    """float32 -> bfloat16 bit pattern (int16), round to nearest even; NaN -> 0x7fc0 (a quiet NaN:
    NaN payloads differ between torch's CPU and CUDA casts anyway; NF4 weights never hold NaN).

    Written out in integer ops because Triton's interpreter truncates in ``.to(tl.bfloat16)``
    (the GPU rounds to nearest even): this way both execute the same arithmetic.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.int16)


def _code(device: torch.device) -> torch.Tensor:
    code = _CODES.get(device)
    if code is None:
        code = _CODES[device] = nf4_code(device)
    return code


def dequantize_nf4_triton(packed: torch.Tensor, absmax: torch.Tensor | NestedAbsmax, shape: Sequence[int],
                          blocksize: int, dtype: torch.dtype, *, bytes_per_program: int = BYTES_PER_PROGRAM
                          ) -> torch.Tensor:
    """Dequantize NF4 codes with the Triton kernel (same arguments and result as
    :func:`pyft.quant.dequant.dequantize_nf4`).

    Args:
        packed: packed codes, ``(n + 1) // 2`` bytes, any shape and storage dtype (viewed as bytes).
        absmax: float32 ``[nb]`` block scales, or the double-quantized :class:`NestedAbsmax`.
        shape: the original shape (``n = prod(shape)``).
        blocksize: elements per block (even; bitsandbytes uses 32 to 4096).
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.
        bytes_per_program: packed bytes per Triton program (a power of two).

    Returns:
        ``dtype`` tensor of ``shape`` on ``packed``'s device.
    """
    if blocksize <= 0 or blocksize % 2:
        raise ValueError(f"`blocksize` must be a positive even number, got {blocksize}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"`dtype` must be float32, bfloat16 or float16, got {dtype}")
    n = 1
    for d in shape:
        n *= int(d)
    data = packed.reshape(-1)
    if data.dtype != torch.uint8:
        data = data.view(torch.uint8)
    nbytes = (n + 1) // 2
    if data.numel() < nbytes:
        raise ValueError(f"`packed` holds {data.numel()} bytes but shape {list(shape)} needs {nbytes}")
    device = data.device
    out = torch.empty(n, dtype=dtype, device=device)
    target = out.view(torch.int16) if dtype == torch.bfloat16 else out
    if n == 0:
        return out.reshape(tuple(shape))
    data = data.contiguous()
    if isinstance(absmax, NestedAbsmax):
        offset = absmax.offset
        if not isinstance(offset, torch.Tensor):
            offset = torch.tensor(float(offset), dtype=torch.float32)
        args = (absmax.q8.reshape(-1).contiguous(), absmax.nested_absmax.reshape(-1).float().contiguous(),
                absmax.nested_code.reshape(-1).float().contiguous(),
                offset.reshape(1).to(device=device, dtype=torch.float32))
        nested_blocksize, nested = absmax.nested_blocksize, True
    else:
        scales = absmax.reshape(-1).float().contiguous()
        args = (scales, scales, scales, scales)  # the nested pointers are unused
        nested_blocksize, nested = 1, False
    grid = (triton.cdiv(nbytes, bytes_per_program),)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # the tensors' GPU
        _nf4_dequant_kernel[grid](data, *args, _code(device), target, n, nbytes, blocksize // 2, nested_blocksize,
                                  NESTED=nested, BF16_BITS=dtype == torch.bfloat16, BYTES=bytes_per_program,
                                  enable_fp_fusion=False)
    return out.reshape(tuple(shape))
