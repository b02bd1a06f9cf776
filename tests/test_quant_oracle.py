"""The bitsandbytes oracle against the NF4 definition, on cases with known answers.

Every NF4 parity test trusts bitsandbytes. Its CPU kernels are chosen by the CPU's features, and on
AVX-512 machines they are wrong (see ``tests/bnb_nf4.py``); the test session reroutes them to its
portable implementation. These tests pin that oracle to the definition itself (spec ``nf4.md`` §1:
``w[i] = NF4[code[i]] * absmax[i // blocksize]`` in float32, then rounded to the output dtype), with
the table typed in from the spec's float32 bit patterns, so an oracle that goes wrong on some CPU
(or a future bitsandbytes) fails here instead of silently moving every other NF4 test.
"""

from __future__ import annotations

import struct

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
bnb_f = pytest.importorskip("bitsandbytes.functional")

#: The 16 NF4 values as float32 bit patterns (spec nf4.md §1.1), independent of bitsandbytes and pyft.
NF4_BITS = (0xBF800000, 0xBF3239B1, 0xBF066B30, 0xBECA32A0, 0xBE91A24D, 0xBE3D353F, 0xBDBA7871, 0x00000000,
            0x3DA2FAFF, 0x3E24CAE3, 0x3E7C04DD, 0x3EAD033A, 0x3EE1A4B8, 0x3F1007AB, 0x3F3913B3, 0x3F800000)
NF4 = torch.tensor([struct.unpack("<f", struct.pack("<I", b))[0] for b in NF4_BITS], dtype=torch.float32)


def _known_case(shape: tuple[int, ...], blocksize: int, seed: int = 0):
    """Codes and power-of-two scales chosen directly (no quantizer involved), the packed bytes
    bitsandbytes stores for them (high nibble first), and the exact dequantized float32 values:
    a power of two times a float32 table entry is exact, so the expected values carry no rounding."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    codes = torch.randint(0, 16, (n,), generator=g)
    blocks = -(-n // blocksize)
    absmax = torch.pow(2.0, torch.randint(-6, 4, (blocks,), generator=g).float())
    padded = torch.cat([codes, codes.new_full((n % 2,), 7)])
    packed = ((padded[0::2] << 4) | padded[1::2]).to(torch.uint8).view(-1, 1)
    expected = (NF4[codes] * absmax.repeat_interleave(blocksize)[:n]).view(shape)
    return packed, absmax, expected


def _state(shape, absmax, blocksize, dtype):
    return bnb_f.QuantState(absmax=absmax, shape=torch.Size(shape), code=NF4.clone(), blocksize=blocksize,
                            quant_type="nf4", dtype=dtype)


# (48, 96) with blocksize 64 has blocks that span two rows: the case bitsandbytes' AVX-512 C kernel
# gets wrong. (5, 7) has an odd row length and a partial last block; (4096,) is 1-D.
@pytest.mark.parametrize("shape", [(48, 96), (64, 128), (5, 7), (3, 2, 40), (4096,)])
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitsandbytes_dequantize_is_the_nf4_definition(shape, blocksize, dtype):
    packed, absmax, expected = _known_case(shape, blocksize)
    got = bnb_f.dequantize_4bit(packed, _state(shape, absmax, blocksize, dtype))
    assert got.dtype == dtype
    want = expected.to(dtype)
    assert torch.equal(got.reshape(shape).view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.parametrize("shape", [(48, 96), (33, 64)])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_bitsandbytes_quantize_recovers_exact_codes(shape, blocksize):
    """Weights that are exactly NF4 values times their block's absmax (each block holding a +-1 code so
    its absmax is that scale) quantize to exactly those codes and scales."""
    g = torch.Generator().manual_seed(1)
    packed, absmax, x = _known_case(shape, blocksize, seed=1)
    flat = x.flatten().clone()
    for b in range(absmax.numel()):  # pin each block's max |w| to its scale
        flat[b * blocksize] = absmax[b] * (1 if torch.rand((), generator=g) < 0.5 else -1)
    q, st = bnb_f.quantize_4bit(flat.view(shape), blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    assert torch.equal(st.absmax, absmax)
    back = bnb_f.dequantize_4bit(q, st)
    assert torch.equal(back.reshape(shape), flat.view(shape))


@pytest.mark.parametrize("training", [False, True])
def test_bitsandbytes_linear4bit_is_dense_linear_on_the_definition(training):
    """``Linear4bit`` (inference and training forward) equals ``F.linear`` on the definition's
    dequantized weight, bit for bit: both dequantize to the compute dtype and call the same matmul."""
    shape, blocksize = (96, 48), 64
    packed, absmax, w = _known_case(shape, blocksize, seed=3)
    layer = bnb.nn.Linear4bit(shape[1], shape[0], bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=_state(shape, absmax, blocksize,
                                                                                      torch.float32),
                                     quant_type="nf4", bnb_quantized=True, module=layer)
    layer.train(training)
    x = torch.randn(5, shape[1], generator=torch.Generator().manual_seed(4), requires_grad=training)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, w))
