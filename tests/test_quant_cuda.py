"""NF4 on CUDA: pyft's quantizer and Triton dequant kernel against bitsandbytes' CUDA kernels and the
NF4 definition, and ``NF4Linear`` forward/backward against a dense layer.

A test that takes a ``device`` runs its ``cpu`` case in the normal suite (bitsandbytes' CPU backend,
pyft's PyTorch dequant path) and its ``cuda`` case in the GPU lane (``pytest -m gpu``; bitsandbytes'
CUDA kernels, pyft's Triton kernel); the others need CUDA. The NF4 definition is computed here in NumPy float32 from the
raw bytes and bitsandbytes' stored tables: ``w = to_dtype(fp32(NF4[code] * absmax[block]))``, with
double-quantized scales ``absmax = fp32(fp32(CODE8[q8] * nested_absmax[block // 256]) + offset)``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyft.quant import NestedAbsmax, NF4Linear, dequantize_nf4_torch, quantize_nf4
from pyft.quant.dequant import dequantize_nf4

from devices import DEVICES, matmul_error_bound, requires_cuda

bnb = pytest.importorskip("bitsandbytes")
bnb_f = pytest.importorskip("bitsandbytes.functional")

BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (what, a.dtype, b.dtype, a.shape, b.shape)
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    bits_a = a.view(BITS[a.dtype]) if a.dtype in BITS else a
    bits_b = b.view(BITS[b.dtype]) if b.dtype in BITS else b
    diff = (bits_a != bits_b).nonzero()
    assert diff.numel() == 0, f"{what}: {diff.shape[0]} of {a.numel()} differ, first at {diff[0].tolist()}"


def _weight(shape, dtype, device, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * scale).to(dtype)
    if shape[0] > 2:
        w[1] = 0  # a zero row: all-zero blocks when rows are long enough
    return w.to(device)


def nf4_definition(packed: torch.Tensor, qs, dtype: torch.dtype) -> torch.Tensor:
    """The NF4 definition in NumPy float32 (one rounding per operation, no fused multiply-add),
    from the raw packed bytes and bitsandbytes' own stored tables (``qs.code``, ``qs.state2.code``);
    returns a CPU tensor of ``qs.shape`` in ``dtype`` (torch's round-to-nearest-even cast)."""
    raw = packed.detach().cpu().contiguous().reshape(-1)
    raw = raw if raw.dtype == torch.uint8 else raw.view(torch.uint8)
    data = raw.numpy()
    n = math.prod(qs.shape)
    codes = np.empty(2 * data.size, dtype=np.int64)
    codes[0::2], codes[1::2] = data >> 4, data & 15  # first element in the high nibble
    codes = codes[:n]
    table = qs.code.detach().cpu().float().numpy()
    if qs.nested:
        q8 = qs.absmax.detach().cpu().numpy().astype(np.int64)
        code8 = qs.state2.code.detach().cpu().float().numpy()
        nested = qs.state2.absmax.detach().cpu().float().numpy()
        scaled = np.multiply(code8[q8], nested[np.arange(q8.size) // qs.state2.blocksize], dtype=np.float32)
        absmax = np.add(scaled, np.float32(qs.offset.item()), dtype=np.float32)
    else:
        absmax = qs.absmax.detach().cpu().float().numpy()
    w = np.multiply(table[codes], absmax[np.arange(n) // qs.blocksize], dtype=np.float32)
    return torch.from_numpy(w).to(dtype).reshape(tuple(qs.shape))


def _scales(qs) -> torch.Tensor | NestedAbsmax:
    if qs.nested:
        return NestedAbsmax(qs.absmax, qs.state2.absmax, qs.state2.code, qs.offset)
    return qs.absmax


# (shape, blocksize): one element, odd n with a partial tail block, several nested blocks with the last
# one partial (29100 / 32 = 910 blocks), 256 full nested blocks (the CPU-table / nearest-value split of
# the nested codes shows there), the largest blocksizes.
SHAPES = [((1, 1), 64), ((7, 9), 64), ((300, 97), 32), ((1024, 4096), 64), ((33, 333), 2048), ((17, 1000), 4096)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "nested"])
@pytest.mark.parametrize("shape,blocksize", SHAPES, ids=[f"{s[0]}x{s[1]}-bs{b}" for s, b in SHAPES])
def test_dequant_equals_bitsandbytes_and_the_nf4_definition(device, shape, blocksize, double_quant):
    """pyft's dequant on the device (Triton on CUDA, PyTorch on CPU) == bitsandbytes'
    ``dequantize_4bit`` on the device == the NF4 definition, bit for bit, for every output dtype
    (the dtype only changes the final rounding)."""
    for i, dtype in enumerate(DTYPES):
        w = _weight(shape, dtype, device, seed=blocksize + shape[0] + i)
        packed, qs = bnb_f.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")
        assert packed.device.type == device
        what = f"{dtype} {shape} bs{blocksize}"
        expected = nf4_definition(packed, qs, dtype)
        _assert_same_bits(bnb_f.dequantize_4bit(packed, qs).reshape(shape), expected, f"{what} bitsandbytes")
        ours = dequantize_nf4(packed, _scales(qs), shape, blocksize, dtype)
        assert ours.device.type == device
        _assert_same_bits(ours, expected, f"{what} pyft")
        if device == "cuda":  # the PyTorch path on the GPU too
            absmax = _scales(qs).absmax() if double_quant else qs.absmax
            _assert_same_bits(dequantize_nf4_torch(packed, absmax, shape, blocksize, dtype), expected, f"{what} torch")


@requires_cuda
def test_cuda_tensors_go_through_the_triton_kernel(monkeypatch):
    """The dispatcher picks Triton exactly for CUDA tensors (so the CUDA cases above test the kernel)."""
    pytest.importorskip("triton")
    import pyft.quant.triton_dequant as td

    calls = []
    real = td.dequantize_nf4_triton
    monkeypatch.setattr(td, "dequantize_nf4_triton", lambda *a, **k: calls.append(a[0].device) or real(*a, **k))
    packed, qs = bnb_f.quantize_4bit(_weight((64, 64), torch.bfloat16, "cuda", 0), blocksize=64, quant_type="nf4")
    dequantize_nf4(packed, _scales(qs), (64, 64), 64, torch.bfloat16)
    dequantize_nf4(packed.cpu(), qs.absmax.cpu(), (64, 64), 64, torch.bfloat16)
    assert [d.type for d in calls] == ["cuda"]


QUANT_CASES = [((64, 64), 64, torch.float32), ((7, 9), 32, torch.bfloat16), ((300, 97), 32, torch.float16),
               ((1024, 4096), 64, torch.bfloat16), ((96, 513), 512, torch.float32), ((17, 1000), 4096, torch.bfloat16)]


@requires_cuda
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "nested"])
@pytest.mark.parametrize("shape,blocksize,dtype", QUANT_CASES,
                         ids=[f"{s[0]}x{s[1]}-bs{b}-{str(d)[6:]}" for s, b, d in QUANT_CASES])
def test_quantize_cuda_compat_equals_bitsandbytes_cuda(shape, blocksize, dtype, double_quant):
    """``quantize_nf4(compat="cuda")`` of a CUDA tensor writes the bytes bitsandbytes' CUDA
    ``quantize_4bit`` writes (all-zero blocks pack to 0x00, nested codes by nearest value): packed
    codes and every quant-state tensor. (The CPU counterpart is ``tests/test_quant_nf4.py``.)"""
    device = "cuda"
    w = _weight(shape, dtype, device, seed=blocksize * 3 + shape[1])
    packed, state = quantize_nf4(w, blocksize, double_quant, compat="cuda")
    b_packed, qs = bnb_f.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")
    theirs = qs.as_dict(packed=True)
    assert packed.device.type == device and list(state) == list(theirs)
    _assert_same_bits(packed, b_packed, "packed")
    for key in theirs:
        _assert_same_bits(state[key], theirs[key], key)


LINEAR_CASES = [((256, 512), 64, True), ((96, 130), 32, False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compute_dtype", DTYPES, ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "nested"])
@pytest.mark.parametrize("shape,blocksize,bias", LINEAR_CASES, ids=["256x512-bias", "96x130"])
def test_nf4_linear_forward_backward_equal_a_dense_layer(device, compute_dtype, double_quant, shape, blocksize,
                                                         bias):
    """``NF4Linear`` == ``F.linear`` on the weight the NF4 definition gives, bit for bit (the same
    GEMM on the same operands), forward and input gradient; both within the GEMM's rounding bound
    of the float64 product (see ``devices.matmul_error_bound``: float32 accumulation over the
    reduction length, one output rounding and one split-K rounding in the compute dtype). The
    bitsandbytes ``Linear4bit`` output (its own fused kernels on CUDA) is within the two bounds."""
    out_f, in_f = shape
    g = torch.Generator().manual_seed(out_f + in_f)
    ref = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=compute_dtype, compress_statistics=double_quant,
                            quant_type="nf4")
    ref.weight = bnb.nn.Params4bit((torch.randn(shape, generator=g) * 0.05).to(torch.bfloat16), requires_grad=False,
                                   quant_type="nf4", compress_statistics=double_quant, blocksize=blocksize)
    if bias:
        ref.bias = torch.nn.Parameter((torch.randn(out_f, generator=g) * 0.1).to(torch.bfloat16), requires_grad=False)
    ref = ref.to(device)  # quantizes with bitsandbytes' kernels for the device
    packed, qs = ref.weight.data, ref.weight.quant_state
    layer = NF4Linear.from_bnb_state_dict(ref.state_dict(), compute_dtype=compute_dtype)
    assert layer.weight.device.type == device and not any(p.requires_grad for p in layer.parameters())
    b = None if ref.bias is None else ref.bias.detach()
    dense_w = nf4_definition(packed, qs, compute_dtype).to(device)
    _assert_same_bits(layer.dequantized_weight(compute_dtype), dense_w, "weight")
    dense_b = None if b is None else b.to(compute_dtype)

    x = torch.randn(3, 17, in_f, generator=g).to(compute_dtype).to(device)
    grad = torch.randn(3, 17, out_f, generator=g).to(compute_dtype).to(device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(xa)
    y_dense = F.linear(xb, dense_w, dense_b)
    assert y.dtype == compute_dtype
    _assert_same_bits(y, y_dense, "forward")
    y.backward(grad)
    y_dense.backward(grad)
    _assert_same_bits(xa.grad, xb.grad, "input gradient")

    exact = x.double() @ dense_w.double().T + (0 if b is None else dense_b.double())
    bound = matmul_error_bound(x, dense_w.T, compute_dtype, dense_b)
    err = (y.double() - exact).abs()
    assert (err <= bound).all(), f"forward error {err.max().item():.3g} > bound {bound[err > bound].min().item():.3g}"
    exact_gx = grad.double() @ dense_w.double()
    bound_gx = matmul_error_bound(grad, dense_w, compute_dtype)
    assert ((xa.grad.double() - exact_gx).abs() <= bound_gx).all()

    if device == "cpu":
        ref.support_avx512bf16_for_cpu = False  # the same default path on every CPU (as test_quant_linear)
    with torch.no_grad(), warnings.catch_warnings():
        # bitsandbytes' CUDA backend notes that K = 130 is not a multiple of the blocksize (slower path)
        warnings.filterwarnings("ignore", "inner dimension", UserWarning)
        y_ref = ref(x)
    assert y_ref.dtype == compute_dtype
    assert ((y_ref.double() - exact).abs() <= 2 * bound).all()
