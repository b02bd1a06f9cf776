"""pyft.io.dtypes: the one dtype table, checked against torch, numpy and the safetensors package."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pyft.io.dtypes import DTYPES, FLOATS, by_safetensors, float_of_torch, parse_float, torch_dtype
from pyft.io.safetensors import read_header


def test_names_and_sizes_agree_with_torch_numpy_and_safetensors(tmp_path):
    """The safetensors package writes each torch dtype under the table's safetensors name, with
    the table's bytes per element; numpy agrees where it has the type."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {d.torch: torch.zeros(3, dtype=getattr(torch, d.torch)) for d in DTYPES}
    save_file(tensors, str(tmp_path / "all.safetensors"))
    header = read_header(tmp_path / "all.safetensors")
    for d in DTYPES:
        t = header[d.torch]
        assert t.dtype == d.safetensors, d
        assert by_safetensors(t.dtype) is d
        assert t.nbytes == 3 * d.itemsize == tensors[d.torch].element_size() * 3, d
        assert torch_dtype(d) is getattr(torch, d.torch)
        if d.numpy is not None:
            assert np.dtype(d.numpy).itemsize == d.itemsize, d
    assert by_safetensors("F8_E4M3") is None  # a type pyft does not read


def test_float_names():
    torch = pytest.importorskip("torch")
    assert [d.short for d in FLOATS] == ["fp32", "fp16", "bf16"]
    for d in FLOATS:
        for name in (d.short, d.torch, f"torch.{d.torch}"):
            assert parse_float(name) is d
        assert float_of_torch(getattr(torch, d.torch)) is d
    for bad in ("int8", "float64", "BF16", "", None, ["bf16"], 16):
        assert parse_float(bad) is None, bad
    assert float_of_torch(torch.int8) is None and float_of_torch("bfloat16") is None


def test_merge_export_and_inspect_do_not_import_torch():
    code = ("import sys; import pyft.io.dtypes, pyft.io.safetensors, pyft.io.merge, pyft.inspect, pyft.export, "
            "pyft.cli.merge, pyft.cli.export, pyft.data.dataset; "
            "sys.exit('torch imported' if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
