"""llama.cpp as a test oracle: its Python converters and its C library (via llama-cpp-python).

* `convert_hf_to_gguf` / `convert_lora_to_gguf` run llama.cpp's own converters (pinned: the copy
  vendored in the llama-cpp-python 0.3.36 sdist, fetched by `tools/fetch_llama_cpp_src.py` into
  `.cache/llama.cpp`, or `PYFT_LLAMA_CPP_SRC`). Custom test tokenizers have no entry in the
  converter's pre-tokenizer hash table (it raises "BPE pre-tokenizer was not recognized"), so
  `pre=` forces the name the converter would otherwise refuse to pick.
* `llama_quantize` runs llama.cpp's quantizer (`llama_model_quantize`) through llama-cpp-python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_RUNNER = r"""
import runpy, sys
src, script, pre = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
if pre:
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [script] + sys.argv[4:]
runpy.run_path(script, run_name="__main__")
"""


def llama_cpp_src() -> Path:
    """Directory holding llama.cpp's `convert_hf_to_gguf.py`, `conversion/` and `gguf-py/`."""
    src = Path(os.environ.get("PYFT_LLAMA_CPP_SRC", ROOT / ".cache" / "llama.cpp"))
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise RuntimeError(f"llama.cpp converters not found in {src}: run tools/test, or "
                           "python tools/fetch_llama_cpp_src.py")
    return src


def _run(script: str, args: list[str], pre: str | None) -> None:
    src = llama_cpp_src()
    cmd = [sys.executable, "-c", _RUNNER, str(src), str(src / script), pre or "", *args]
    env = dict(os.environ, NO_LOCAL_GGUF="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"{script} failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")


def convert_hf_to_gguf(model_dir: Path, outfile: Path, outtype: str = "f16", pre: str | None = None) -> Path:
    """Run llama.cpp's `convert_hf_to_gguf.py MODEL --outfile OUT --outtype TYPE`."""
    _run("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(outfile), "--outtype", outtype], pre)
    return Path(outfile)


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str = "f32") -> Path:
    """Run llama.cpp's `convert_lora_to_gguf.py ADAPTER --base BASE --outfile OUT --outtype TYPE`."""
    _run("convert_lora_to_gguf.py",
         [str(adapter_dir), "--base", str(base_dir), "--outfile", str(outfile), "--outtype", outtype], None)
    return Path(outfile)


#: llama_ftype values (include/llama.h) for llama.cpp's quantizer.
LLAMA_FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "bf16": 32}


def llama_quantize(src: Path, dst: Path, ftype: str, nthread: int = 2) -> Path:
    """llama.cpp's `llama-quantize SRC DST FTYPE` (no imatrix) through llama-cpp-python."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[ftype]
    params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, {ftype}) failed with {rc}")
    return Path(dst)
