"""The Triton NF4 dequant kernel: bit-identical to the PyTorch reference and to bitsandbytes.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, so the kernel cases run in a child
pytest on this same file with ``TRITON_INTERPRET=1`` (the kernel executed by Triton's interpreter
on CPU tensors); the normal run collects only the launcher, the compile-time FMA check and the
dispatcher check. Run the cases directly with
``TRITON_INTERPRET=1 python -m pytest tests/test_quant_triton.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyft.quant.dequant import NestedAbsmax, dequantize_nf4, dequantize_nf4_torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "rust" / "pyft-core" / "tests" / "data" / "nf4" / "nf4_vectors.safetensors"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    diff = (a.view(BITS[a.dtype]) != b.view(BITS[b.dtype])).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} of {a.numel()} differ, first at {diff[0].tolist()}"


if not INTERPRETED:

    def test_kernel_cases_under_the_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider"]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
        assert " passed" in r.stdout and " skipped" not in r.stdout, r.stdout[-2000:]

    @pytest.mark.parametrize("arch", [80, 90])
    @pytest.mark.parametrize("nested", [False, True])
    @pytest.mark.parametrize("out", ["fp32", "bf16"])
    def test_compiled_kernel_has_no_fma(arch, nested, out):
        """Compiled for a real GPU (no GPU needed): the nested rebuild stays a separate multiply and
        add in the PTX and in the SASS. The same compile with fusion on does contract it."""
        import re
        import tempfile

        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from pyft.quant.triton_dequant import _nf4_dequant_kernel

        sig = {"packed_ptr": "*u8", "absmax_ptr": "*u8" if nested else "*fp32", "nested_absmax_ptr": "*fp32",
               "nested_code_ptr": "*fp32", "offset_ptr": "*fp32", "code_ptr": "*fp32",
               "out_ptr": "*i16" if out == "bf16" else "*fp32", "n": "i64", "nbytes": "i64", "half_block": "i32",
               "nested_blocksize": "i32", "NESTED": "constexpr", "BF16_BITS": "constexpr", "BYTES": "constexpr"}

        def compile_(fusion: bool):
            src = ASTSource(fn=_nf4_dequant_kernel, signature=sig,
                            constexprs={"NESTED": nested, "BF16_BITS": out == "bf16", "BYTES": 2048})
            try:
                return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"enable_fp_fusion": fusion})
            except Exception as e:  # e.g. a Triton build without the NVIDIA backend
                pytest.skip(f"cannot compile for sm_{arch} here: {e}")

        kernel = compile_(False)
        ptx = kernel.asm["ptx"]
        assert not re.search(r"\bfma\.", ptx)
        assert re.search(r"\bmul\.rn\.f32", ptx)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(kernel.asm["cubin"])
            sass = subprocess.run([knobs.nvidia.nvdisasm.path, str(cubin)], capture_output=True, text=True).stdout
        assert "FMUL" in sass and "FFMA" not in sass
        if nested:  # the control: Triton's default would fuse the rebuild
            assert re.search(r"\bfma\.", compile_(True).asm["ptx"])

    def test_dispatcher_uses_torch_on_cpu():
        import bitsandbytes.functional as bf

        w = torch.randn(37, 50) * 0.03
        packed, st = bf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        nested = NestedAbsmax(st.absmax, st.state2.absmax, st.state2.code, st.offset)
        got = dequantize_nf4(packed, nested, (37, 50), 64, torch.bfloat16)
        _assert_same_bits(got, dequantize_nf4_torch(packed, nested.absmax(), (37, 50), 64, torch.bfloat16))
        _assert_same_bits(got, bf.dequantize_4bit(packed, st).to(torch.bfloat16))

else:
    import bitsandbytes.functional as bf

    from pyft.quant.triton_dequant import dequantize_nf4_triton

    CASES = ["f32_64x64_bs64", "bf16_128x96_zero_row_bs64", "f32_7x9_tail_bs64", "bf16_3x5_odd_bs64",
             "f16_33x77_bs32", "f32_256x512_bs128", "bf16_1024x1024_bs64", "f32_threshold_probe_bs64",
             "f32_all_zero_bs64"]

    @pytest.fixture(scope="module")
    def vectors():
        from safetensors.torch import load_file

        return load_file(str(VECTORS))

    @pytest.mark.parametrize("case", CASES)
    def test_reference_vectors(case, vectors):
        """bitsandbytes' stored dequant results, with float32 and with double-quantized scales."""
        v = {k.removeprefix(f"{case}."): t for k, t in vectors.items() if k.startswith(f"{case}.")}
        shape, dtype = tuple(v["input"].shape), v["input"].dtype
        bs = int(case.rsplit("_bs", 1)[1])
        tile = 16384  # few programs: the interpreter runs them one after the other
        got = dequantize_nf4_triton(v["packed"], v["absmax"], shape, bs, dtype, bytes_per_program=tile)
        _assert_same_bits(got, v["dequant"])
        nested = NestedAbsmax(v["dq.absmax_u8"], v["dq.nested_absmax"], v["dq.nested_quant_map"], v["dq.offset"])
        got = dequantize_nf4_triton(v["dq.packed"], nested, shape, bs, dtype, bytes_per_program=tile)
        _assert_same_bits(got, v["dq.dequant"])

    # (shape, blocksize): odd n, n below one block, a partial tail block, exact multiples, several
    # nested blocks (> 256 blocks, the last one partial), every blocksize bitsandbytes allows.
    SHAPES = [((1, 1), 64), ((3, 5), 32), ((7, 9), 64), ((1, 63), 64), ((2, 64), 64), ((33, 77), 32),
              ((40, 256), 32), ((300, 97), 32), ((64, 130), 128), ((129, 131), 256), ((96, 513), 512),
              ((70, 100), 1024), ((33, 333), 2048), ((17, 1000), 4096), ((5, 4096), 4096)]

    # each shape in two of the three dtypes, in turn (the dtype only changes the final rounding)
    DTYPES = [torch.float32, torch.bfloat16, torch.float16]
    SHAPE_CASES = [(shape, bs, DTYPES[(i + k) % 3]) for i, (shape, bs) in enumerate(SHAPES) for k in (0, 1)]

    @pytest.mark.parametrize("shape,blocksize,dtype", SHAPE_CASES,
                             ids=[f"{s[0]}x{s[1]}-bs{b}-{str(d)[6:]}" for s, b, d in SHAPE_CASES])
    @pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "nested"])
    def test_matches_torch_and_bitsandbytes(shape, blocksize, dtype, double_quant):
        g = torch.Generator().manual_seed(blocksize + shape[0] * 7 + shape[1])
        w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        if shape[0] > 2:
            w[1] = 0  # a zero row: all-zero blocks when the rows are long enough
        packed, st = bf.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")
        expected = bf.dequantize_4bit(packed, st).reshape(shape)
        if double_quant:
            scales = NestedAbsmax(st.absmax, st.state2.absmax, st.state2.code, st.offset)
            reference = dequantize_nf4_torch(packed, scales.absmax(), shape, blocksize, dtype)
        else:
            scales = st.absmax
            reference = dequantize_nf4_torch(packed, scales, shape, blocksize, dtype)
        _assert_same_bits(reference, expected)
        nbytes = (w.numel() + 1) // 2
        # ~4 programs, the last one ragged; then the default tile (one or a few programs)
        for bytes_per_program in (max(16, 1 << max(nbytes // 4, 1).bit_length()), 2048):
            got = dequantize_nf4_triton(packed, scales, shape, blocksize, dtype, bytes_per_program=bytes_per_program)
            _assert_same_bits(got, reference)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
    def test_output_dtype_differs_from_weight_dtype(dtype):
        """One rounding from the float32 product straight to the output dtype, as the torch path."""
        w = torch.randn(31, 47, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
        packed, st = bf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        scales = NestedAbsmax(st.absmax, st.state2.absmax, st.state2.code, st.offset)
        _assert_same_bits(dequantize_nf4_triton(packed, scales, (31, 47), 64, dtype),
                          dequantize_nf4_torch(packed, scales.absmax(), (31, 47), 64, dtype))

    def test_float_storage_and_python_offset():
        """A non-uint8 quant_storage is read as bytes; a float offset works like the tensor."""
        w = torch.randn(16, 48, generator=torch.Generator().manual_seed(6))
        packed, st = bf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4",
                                      quant_storage=torch.bfloat16)
        assert packed.dtype == torch.bfloat16
        expected = bf.dequantize_4bit(packed, st)
        scales = NestedAbsmax(st.absmax, st.state2.absmax, st.state2.code, float(st.offset))
        _assert_same_bits(dequantize_nf4_triton(packed, scales, (16, 48), 64, torch.float32), expected)

    def test_bf16_rounding_ties_subnormals_and_nan():
        """The in-kernel bfloat16 rounding equals torch's cast on ties, carries and subnormals; NaN
        stays NaN (its bit pattern is not portable: torch's CPU cast gives 0xffff, CUDA 0x7fff)."""
        scales = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 - 2**-23, 2.0 - 2**-9, 1e-39, 2**-130,
                               float("nan"), 3.0e38], dtype=torch.float32)
        packed = torch.full((8 * 32,), 0xF7, dtype=torch.uint8)  # per block: code 15 (1.0) then code 7 (0.0)
        got = dequantize_nf4_triton(packed, scales, (8 * 64,), 64, torch.bfloat16)
        expected = dequantize_nf4_torch(packed, scales, (8 * 64,), 64, torch.bfloat16)
        nan = slice(6 * 64, 7 * 64)
        assert got[nan].isnan().all() and expected[nan].isnan().all()
        got[nan] = expected[nan] = 0
        _assert_same_bits(got, expected)
        assert got[::64].view(torch.int16).tolist()[:4] == [0x3F80, 0x3F82, 0x3F80, 0x4000]

    def test_errors():
        with pytest.raises(ValueError, match="`packed` holds 3 bytes but shape \\[3, 3\\] needs 5"):
            dequantize_nf4_triton(torch.zeros(3, dtype=torch.uint8), torch.ones(1), (3, 3), 64, torch.float32)
        with pytest.raises(ValueError, match="blocksize"):
            dequantize_nf4_triton(torch.zeros(5, dtype=torch.uint8), torch.ones(1), (3, 3), 63, torch.float32)
        assert dequantize_nf4_triton(torch.zeros(0, dtype=torch.uint8), torch.ones(0), (0, 4), 64,
                                     torch.float32).shape == (0, 4)
