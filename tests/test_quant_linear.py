"""NF4Linear against bitsandbytes' Linear4bit (the oracle) and a dense reference.

Outputs are bit-identical to ``bnb.nn.Linear4bit`` on CPU: both dequantize into the compute dtype
with the same float32 arithmetic and call ``F.linear`` on the same tensors. Input gradients are
bit-identical to a dense ``F.linear`` on the dequantized weight, and to bitsandbytes except when
the weight dtype is narrower than the compute dtype (bitsandbytes' backward then dequantizes to the
weight dtype first, its forward does not).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyft.quant import NestedAbsmax, NF4Linear

bnb = pytest.importorskip("bitsandbytes")

BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def _bnb_layer(out_f: int, in_f: int, *, dtype: torch.dtype, compute_dtype: torch.dtype, double_quant: bool,
               blocksize: int = 64, bias: bool = True, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(out_f, in_f, generator=g) * 0.05).to(dtype)
    layer = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=compute_dtype, compress_statistics=double_quant,
                              quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=double_quant,
                                     blocksize=blocksize)
    if bias:
        layer.bias = nn.Parameter((torch.randn(out_f, generator=g) * 0.1).to(dtype), requires_grad=False)
    layer = layer.to("cpu")  # quantizes
    layer.support_avx512bf16_for_cpu = False  # the same default path on every CPU (no repacked bf16 kernel)
    return layer


CONFIGS = [  # (weight dtype, compute dtype)
    (torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize("dtype,compute_dtype", CONFIGS, ids=[f"{str(a)[6:]}-{str(b)[6:]}" for a, b in CONFIGS])
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "nested"])
@pytest.mark.parametrize("shape,blocksize,bias", [((48, 96), 64, True), ((77, 33), 128, False), ((40, 520), 32, True)])
def test_matches_linear4bit(dtype, compute_dtype, double_quant, shape, blocksize, bias):
    ref = _bnb_layer(*shape, dtype=dtype, compute_dtype=compute_dtype, double_quant=double_quant,
                     blocksize=blocksize, bias=bias)
    ours = NF4Linear.from_bnb_state_dict(ref.state_dict(), compute_dtype=compute_dtype)
    assert ours.is_double_quantized == double_quant and ours.weight_dtype == dtype
    x = torch.randn(3, 5, shape[1], generator=torch.Generator().manual_seed(1)).to(compute_dtype)
    # the weight itself: bitsandbytes' dequantize_4bit, bit for bit
    expected_weight = bnb.functional.dequantize_4bit(ref.weight.data, ref.weight.quant_state)
    assert _same_bits(ours.dequantized_weight(), expected_weight)
    # inference and training forward (bitsandbytes takes two code paths)
    with torch.no_grad():
        assert _same_bits(ours(x), ref(x))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    assert yb.dtype == compute_dtype and _same_bits(yb, ya)
    grad = torch.randn(ya.shape, generator=torch.Generator().manual_seed(2)).to(ya.dtype)
    ya.backward(grad)
    yb.backward(grad)
    # the input gradient equals a dense layer on the dequantized weight, bit for bit
    xd = x.clone().requires_grad_()
    dense_bias = None if ours.bias is None else ours.bias.to(compute_dtype)
    F.linear(xd, ours.dequantized_weight(compute_dtype), dense_bias).backward(grad)
    assert _same_bits(xb.grad, xd.grad)
    if dtype in (compute_dtype, torch.float32):
        assert _same_bits(xb.grad, xa.grad)
    else:  # bitsandbytes' backward rounds W to the weight dtype first: within that rounding
        rel = (xb.grad - xa.grad).abs().max() / xa.grad.abs().max()
        assert 0 < rel < 2 * torch.finfo(dtype).eps


def test_backward_keeps_only_the_quantized_weight():
    """The graph saves the input, never a dense copy of the weight (a dense layer saves both)."""
    ours = NF4Linear.from_bnb_state_dict(_bnb_layer(256, 128, dtype=torch.float32, compute_dtype=torch.float32,
                                                    double_quant=True).state_dict())
    dense_weight = ours.dequantized_weight().requires_grad_(False)

    def saved_numels(fn) -> list[int]:
        sizes: list[int] = []

        def pack(t):
            sizes.append(t.numel())
            return t

        x = torch.randn(4, 128, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x).sum().backward()
        assert x.grad is not None
        return sizes

    assert 256 * 128 in saved_numels(lambda x: F.linear(x, dense_weight * 1.0))  # the dense reference does
    assert 256 * 128 not in saved_numels(ours)
    assert all(not b.requires_grad for b in ours.buffers()) and not ours.bias.requires_grad
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == []


def test_unfrozen_bias_gets_its_gradient():
    ours = NF4Linear.from_bnb_state_dict(_bnb_layer(24, 64, dtype=torch.float32, compute_dtype=torch.float32,
                                                    double_quant=False).state_dict())
    ours.bias.requires_grad_(True)
    x = torch.randn(2, 3, 64)
    ours(x).square().sum().backward()
    bias = ours.bias.detach().clone().requires_grad_(True)
    F.linear(x, ours.dequantized_weight(), bias).square().sum().backward()
    torch.testing.assert_close(ours.bias.grad, bias.grad, rtol=0, atol=0)


@pytest.mark.parametrize("double_quant", [False, True])
def test_bnb_state_dict_round_trip(double_quant):
    """Reading bitsandbytes' tensors and writing them back gives the same keys, dtypes and bytes
    (the JSON blob included); from_quant_state reads QuantState.as_dict in both forms."""
    ref = _bnb_layer(64, 96, dtype=torch.bfloat16, compute_dtype=torch.bfloat16, double_quant=double_quant)
    saved = ref.state_dict()
    ours = NF4Linear.from_bnb_state_dict({f"m.{k}": v for k, v in saved.items()}, prefix="m.")
    back = ours.bnb_state_dict()
    assert list(back) == list(saved)
    for key, value in saved.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    meta = json.loads(bytes(back["weight.quant_state.bitsandbytes__nf4"].tolist()))
    assert meta["shape"] == [64, 96] and meta["dtype"] == "bfloat16"
    for packed_form in (True, False):
        state = ref.weight.quant_state.as_dict(packed=packed_form)
        again = NF4Linear.from_quant_state(ref.weight.data, state, bias=ref.bias)
        assert _same_bits(again.dequantized_weight(), ours.dequantized_weight())


def test_module_to_keeps_the_quantized_buffers():
    ours = NF4Linear.from_bnb_state_dict(_bnb_layer(32, 64, dtype=torch.float32, compute_dtype=torch.float32,
                                                    double_quant=True).state_dict())
    before = ours.dequantized_weight()
    dtypes = {n: b.dtype for n, b in ours.named_buffers()}
    ours.to(torch.bfloat16)
    assert {n: b.dtype for n, b in ours.named_buffers()} == dtypes
    assert ours.bias.dtype == torch.bfloat16
    assert _same_bits(ours.dequantized_weight(), before)


def test_autocast_computes_in_the_autocast_dtype():
    ours = NF4Linear.from_bnb_state_dict(_bnb_layer(32, 64, dtype=torch.float32, compute_dtype=torch.float32,
                                                    double_quant=True).state_dict())
    x = torch.randn(3, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.bfloat16
    expected = F.linear(x.detach().bfloat16(), ours.dequantized_weight(torch.bfloat16), ours.bias.bfloat16())
    assert _same_bits(y.detach(), expected)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32


def test_constructor_from_parts_and_errors():
    w = torch.randn(10, 7) * 0.1
    packed, st = bnb.functional.quantize_4bit(w, blocksize=32, compress_statistics=True, quant_type="nf4")
    nested = NestedAbsmax(st.absmax, st.state2.absmax, st.state2.code, st.offset)
    layer = NF4Linear(packed, nested, (10, 7), blocksize=32, dtype=torch.float32)
    assert (layer.in_features, layer.out_features, layer.bias) == (7, 10, None)
    assert _same_bits(layer.dequantized_weight(), bnb.functional.dequantize_4bit(packed, st))
    assert "scales=double-quantized" in repr(layer)
    with pytest.raises(ValueError, match="`packed` holds 35 bytes; shape \\[10, 8\\] needs 40"):
        NF4Linear(packed, nested, (10, 8), blocksize=32)
    with pytest.raises(ValueError, match="`absmax` has 3 values; 70 weights in blocks of 64 need 2"):
        NF4Linear(packed, st.absmax.float(), (10, 7), blocksize=64)
    with pytest.raises(ValueError, match="`bias` must have shape \\[10\\]"):
        NF4Linear(packed, nested, (10, 7), blocksize=32, bias=torch.zeros(7))
    packed4, st4 = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="fp4")
    with pytest.raises(ValueError, match="not NF4"):
        NF4Linear.from_quant_state(packed4, st4.as_dict(packed=True))
    state = st.as_dict(packed=True)
    del state["nested_quant_map"]
    with pytest.raises(ValueError, match="no `nested_quant_map`"):
        NF4Linear.from_quant_state(packed, state)
    with pytest.raises(ValueError, match="no `up.weight`"):
        NF4Linear.from_bnb_state_dict({"weight": packed}, prefix="up.")
