"""pyft.quant.quantize_nf4 / dequantize_nf4 against bitsandbytes itself (CPU backend) and its
reference vectors (rust/pyft-core/tests/data/nf4): bytes, scales, nested codes, JSON blobs and
dequantized values must be identical, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pyft.errors import ConfigError
from pyft.quant.dequant import dequantize_nf4_torch, reconstruct_absmax
from pyft.quant.nf4 import BLOB_KEY, dequantize_nf4, parse_state_blob, quantize_nf4

bnb_functional = pytest.importorskip("bitsandbytes.functional")

VECTORS = Path(__file__).resolve().parents[1] / "rust/pyft-core/tests/data/nf4"
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bit patterns (so -0.0 != 0.0 and NaN payloads count)."""
    t = t.contiguous()
    return t.view({4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.dtype == theirs.dtype and tuple(ours.shape) == tuple(theirs.shape), \
        f"{what}: {ours.dtype}{tuple(ours.shape)} vs {theirs.dtype}{tuple(theirs.shape)}"
    diff = (bits(ours) != bits(theirs)).sum().item()
    assert diff == 0, f"{what}: {diff} of {ours.numel()} elements differ"


def bnb_quantize(t: torch.Tensor, blocksize: int, double_quant: bool):
    packed, qs = bnb_functional.quantize_4bit(t, blocksize=blocksize, compress_statistics=double_quant,
                                              quant_type="nf4")
    return packed, qs, qs.as_dict(packed=True)


def random_tensor(shape, dtype, seed, scale=0.02, zero_rows=()):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g) * scale
    for r in zero_rows:
        t[r] = 0
    return t.to(dtype)


@pytest.fixture(scope="module")
def vectors():
    from safetensors.torch import load_file

    return load_file(str(VECTORS / "nf4_vectors.safetensors")), json.loads((VECTORS / "manifest.json").read_text())


def test_reference_vectors(vectors):
    tensors, manifest = vectors
    for case, meta in manifest["cases"].items():
        x = tensors[f"{case}.input"]
        packed, state = quantize_nf4(x, meta["blocksize"], double_quant=False)
        assert_same(packed, tensors[f"{case}.packed"], f"{case} packed")
        assert_same(state["absmax"], tensors[f"{case}.absmax"], f"{case} absmax")
        assert bytes(state[BLOB_KEY].tolist()).decode() == meta["quant_state_json"]
        assert_same(dequantize_nf4(packed, state), tensors[f"{case}.dequant"], f"{case} dequant")
        packed, state = quantize_nf4(x, meta["blocksize"], double_quant=True)
        assert_same(packed, tensors[f"{case}.dq.packed"], f"{case} dq.packed")
        assert_same(state["absmax"], tensors[f"{case}.dq.absmax_u8"], f"{case} dq codes")
        assert_same(state["nested_absmax"], tensors[f"{case}.dq.nested_absmax"], f"{case} nested_absmax")
        assert_same(state["nested_quant_map"], tensors[f"{case}.dq.nested_quant_map"], f"{case} CODE8")
        assert bytes(state[BLOB_KEY].tolist()).decode() == meta["quant_state_json_dq"]
        assert_same(dequantize_nf4(packed, state), tensors[f"{case}.dq.dequant"], f"{case} dq.dequant")


def test_torch_dequant_matches_vectors_directly(vectors):
    tensors, manifest = vectors
    for case, meta in manifest["cases"].items():
        dtype = tensors[f"{case}.input"].dtype
        out = dequantize_nf4_torch(tensors[f"{case}.packed"], tensors[f"{case}.absmax"], meta["shape"],
                                   meta["blocksize"], dtype)
        assert_same(out, tensors[f"{case}.dequant"], case)
        absmax = reconstruct_absmax(tensors[f"{case}.dq.absmax_u8"], tensors[f"{case}.dq.nested_absmax"],
                                    tensors[f"{case}.dq.nested_quant_map"], tensors[f"{case}.dq.offset"][0])
        assert_same(absmax, tensors[f"{case}.dq.absmax_dequant"], f"{case} rebuilt absmax")


SHAPES = [(1, 1), (3, 5), (7, 9), (64, 64), (33, 77), (1, 4097), (128, 96), (300, 301), (2, 8192), (17,), (4, 3, 50)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
def test_identical_to_bitsandbytes(dtype, double_quant):
    """Random tensors of many shapes (odd sizes, partial blocks, zero rows) at every blocksize."""
    seed = 0
    for shape in SHAPES:
        for blocksize in BLOCKSIZES:
            seed += 1
            zero_rows = (0,) if len(shape) > 1 and shape[0] > 2 else ()
            x = random_tensor(shape, dtype, seed, scale=[0.02, 1.0, 30.0][seed % 3], zero_rows=zero_rows)
            what = f"{dtype} {shape} bs{blocksize}"
            packed, state = quantize_nf4(x, blocksize, double_quant)
            b_packed, b_qs, b_state = bnb_quantize(x, blocksize, double_quant)
            assert_same(packed, b_packed, f"{what} packed")
            assert list(state) == list(b_state), what
            for key in state:
                assert_same(state[key], b_state[key], f"{what} {key}")
            ours = dequantize_nf4(packed, state)
            theirs = bnb_functional.dequantize_4bit(b_packed, b_qs)
            assert_same(ours, theirs.reshape(shape), f"{what} dequant")


def test_many_scales_use_the_cpu_table_rule():
    """Large enough for thousands of nested blocks, where bitsandbytes' CPU lookup table and the
    nearest-value rule disagree (spec: 0.1–0.2 % of codes)."""
    x = random_tensor((1024, 4096), torch.bfloat16, 7)
    packed, state = quantize_nf4(x, 64, True)
    _, _, b_state = bnb_quantize(x, 64, True)
    for key in state:
        assert_same(state[key], b_state[key], key)
    _, cuda_state = quantize_nf4(x, 64, True, compat="cuda")
    differ = (cuda_state["absmax"] != state["absmax"]).sum().item()
    assert 0 < differ < 0.01 * state["absmax"].numel()
    rebuilt = [dequantize_nf4(packed, s).float() for s in (state, cuda_state)]
    assert (rebuilt[0] - rebuilt[1]).abs().max() <= 0.01 * x.float().abs().max()


def test_cuda_mode_packs_zero_blocks_as_zero_bytes():
    x = torch.zeros(3, 64)
    x[1, 5] = 0.25
    packed, state = quantize_nf4(x, 64, False, compat="cuda")
    assert packed[:32].eq(0).all() and packed[64:].eq(0).all()
    cpu_packed, _ = quantize_nf4(x, 64, False)
    assert cpu_packed[:32].eq(0x77).all()
    assert torch.equal(dequantize_nf4(packed, state), dequantize_nf4(cpu_packed, quantize_nf4(x, 64, False)[1]))


def test_blob_and_state_round_trip():
    x = random_tensor((5, 40), torch.bfloat16, 3)
    packed, state = quantize_nf4(x, 32, True)
    meta = parse_state_blob(state[BLOB_KEY])
    assert (meta.blocksize, meta.dtype, meta.shape) == (32, torch.bfloat16, (5, 40))
    assert meta.nested_offset == float(quantize_nf4(x, 32, False)[1]["absmax"].mean())
    out = dequantize_nf4(packed, state)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 40)
    assert (out.float() - x.float()).abs().max() <= 0.2 * x.float().abs().max()


def test_bad_input_is_named():
    x = torch.randn(4, 64)
    x[2, 10] = float("nan")
    with pytest.raises(ValueError, match="element 138"):
        quantize_nf4(x)
    x[2, 10] = float("inf")
    with pytest.raises(ValueError, match="element 138"):
        quantize_nf4(x)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        quantize_nf4(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ConfigError, match="blocksize 48"):
        quantize_nf4(torch.ones(4, 64), blocksize=48)
    with pytest.raises(ConfigError, match="compatibility"):
        quantize_nf4(torch.ones(4, 64), compat="tpu")
    with pytest.raises(ValueError, match="quant_type"):
        parse_state_blob(torch.tensor(list(b'{"quant_type": "fp4"}'), dtype=torch.uint8), "w")
