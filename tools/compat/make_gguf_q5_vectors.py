"""Extra GGUF quantization reference vectors from ggml itself, for pyft-core's quantizer tests.

The shared vectors (``rust/pyft-core/tests/data/gguf/``, copied from ``shared/vectors/gguf``) cover
F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K. This script adds, for the same seven ``in_<case>.npy``
inputs in that folder:

* ``out_<case>_Q5_0.bin``, ``out_<case>_Q5_1.bin`` and ``out_<case>_Q4_1.bin``: ggml's bytes from
  ``ggml_quantize_chunk(type, src, dst, 0, rows, 512, imatrix=NULL)``, i.e. its
  ``quantize_row_q5_0_ref`` / ``quantize_row_q5_1_ref`` / ``quantize_row_q4_1_ref`` (Q5_0 and Q5_1
  are llama-quantize's fallbacks for Q4_K / Q5_K rows that are not a multiple of 256);
* ``manifest_extra.json``: those 21 files in the shared manifest's format (``input``, ``shape``,
  ``type``, ``expected``, ``sha256``), plus ``dequant``: for every one of the 70 ``out_*.bin`` files
  (shared and extra), the SHA-256 of ggml's ``dequantize_row_*`` output (f32 little-endian) for it;
* ``float_conversions``: SHA-256 over all 2^32 f32 bit patterns, in order, of ggml's
  ``ggml_fp32_to_fp16_row`` and ``ggml_fp32_to_bf16_row`` outputs (u16 little-endian), for the
  exhaustive (``--ignored``) Rust test of the scalar conversions.

How they were produced: libggml-base of llama-cpp-python 0.3.36 (vendored ggml
ggml-org/llama.cpp@0c1e57098), built from its source distribution on x86_64 into the project venv,
called through ctypes (same calls as ``shared/vectors/gguf/make_gguf_vectors.py``, whose ``--check``
passes against this build). Run from the repository root:

    /work/main/.venv/bin/python tools/compat/make_gguf_q5_vectors.py [--lib DIR] [--skip-exhaustive]

``rust/pyft-core/tests/gguf_quant_vectors.rs`` replays everything.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "rust" / "pyft-core" / "tests" / "data" / "gguf"
EXTRA_TYPES = {"Q5_0": 6, "Q5_1": 7, "Q4_1": 3}
# ggml's exported dequantizers per type name (F16/BF16 go through the row converters).
DEQUANT = {"Q8_0": "dequantize_row_q8_0", "Q4_0": "dequantize_row_q4_0", "Q4_1": "dequantize_row_q4_1",
           "Q5_0": "dequantize_row_q5_0", "Q5_1": "dequantize_row_q5_1", "Q4_K": "dequantize_row_q4_K",
           "Q5_K": "dequantize_row_q5_K", "Q6_K": "dequantize_row_q6_K",
           "F16": "ggml_fp16_to_fp32_row", "BF16": "ggml_bf16_to_fp32_row"}


def load_ggml(libdir: str | None) -> ctypes.CDLL:
    if libdir is None:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("llama_cpp not installed; pass --lib DIR")
        libdir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    cands = sorted(glob.glob(os.path.join(libdir, "libggml-base.so*")))
    if not cands:
        sys.exit(f"no libggml-base in {libdir}")
    lib = ctypes.CDLL(cands[0], mode=ctypes.RTLD_GLOBAL)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    for name in set(DEQUANT.values()) | {"ggml_fp32_to_fp16_row", "ggml_fp32_to_bf16_row"}:
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def quantize(lib: ctypes.CDLL, type_id: int, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n_per_row = x.shape
    out = np.zeros(lib.ggml_row_size(type_id, n_per_row) * rows, dtype=np.uint8)
    written = lib.ggml_quantize_chunk(type_id, x.ctypes.data, out.ctypes.data, 0, rows, n_per_row, None)
    assert written == out.size
    return out.tobytes()


def dequantize(lib: ctypes.CDLL, type_name: str, data: bytes, n: int) -> bytes:
    src = np.frombuffer(data, dtype=np.uint8).copy()
    out = np.zeros(n, dtype=np.float32)
    getattr(lib, DEQUANT[type_name])(src.ctypes.data, out.ctypes.data, n)
    return out.astype("<f4").tobytes()


def exhaustive(lib: ctypes.CDLL, fn_name: str) -> str:
    """SHA-256 of fn(all 2^32 f32 bit patterns in order) as little-endian u16."""
    h, chunk = hashlib.sha256(), 1 << 24
    out = np.zeros(chunk, dtype=np.uint16)
    fn = getattr(lib, fn_name)
    for start in range(0, 1 << 32, chunk):
        src = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        fn(src.ctypes.data, out.ctypes.data, chunk)
        h.update(out.astype("<u2").tobytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib")
    ap.add_argument("--skip-exhaustive", action="store_true", help="keep the existing float_conversions entry")
    args = ap.parse_args()
    lib = load_ggml(args.lib)
    shared = json.loads((DATA / "manifest.json").read_text())
    extra_path = DATA / "manifest_extra.json"
    previous = json.loads(extra_path.read_text()) if extra_path.exists() else {}

    entries = []
    for inp in sorted({e["input"] for e in shared}, key=[e["input"] for e in shared].index):
        x = np.load(DATA / inp)
        for tname, tid in EXTRA_TYPES.items():
            data = quantize(lib, tid, x)
            fn = f"out_{inp[3:-4]}_{tname}.bin"
            (DATA / fn).write_bytes(data)
            entries.append({"input": inp, "shape": list(x.shape), "type": tname, "expected": fn,
                            "sha256": hashlib.sha256(data).hexdigest()})
    dequant = {}
    for e in shared + entries:
        n = e["shape"][0] * e["shape"][1]
        dequant[e["expected"]] = hashlib.sha256(dequantize(lib, e["type"], (DATA / e["expected"]).read_bytes(), n)).hexdigest()
    if args.skip_exhaustive and "float_conversions" in previous:
        floats = previous["float_conversions"]
    else:
        floats = {"F16": exhaustive(lib, "ggml_fp32_to_fp16_row"), "BF16": exhaustive(lib, "ggml_fp32_to_bf16_row")}
    extra_path.write_text(json.dumps({"vectors": entries, "dequant": dequant, "float_conversions": floats}, indent=1) + "\n")
    print(f"wrote {len(entries)} vectors, {len(dequant)} dequant hashes to {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
