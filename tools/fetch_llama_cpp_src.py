#!/usr/bin/env python3
"""Fetch llama.cpp's Python converters and real vocabularies (test oracles) from the llama-cpp-python 0.3.36 sdist.

pyft's GGUF tests compare our files with what llama.cpp's own `convert_hf_to_gguf.py` and
`convert_lora_to_gguf.py` write. Those scripts (with their `conversion/` package and the in-tree
`gguf-py`) ship inside the llama-cpp-python source distribution, pinned here by SHA-256
(ggml-org/llama.cpp@0c1e57098). The same sdist carries real vocabularies of published models
(`models/ggml-vocab-*.gguf`, with `.inp`/`.out` edge-case texts and their token ids) and about 70
real chat templates (`models/templates/*.jinja`), which the tokenizer and template tests use.
This downloads the sdist from PyPI once, checks its hash and extracts only those files into
`.cache/llama.cpp/` (git-ignored). Idempotent.

Usage: python tools/fetch_llama_cpp_src.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
       f"llama_cpp_python-{VERSION}.tar.gz")
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".cache" / "llama.cpp"
#: What the tests need, relative to `vendor/llama.cpp/` in the sdist.
MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "models/")
# Bumped when MEMBERS grows, so an older cache is refreshed.
STAMP = f"llama-cpp-python-{VERSION}-models.ok"


def fetch(dest: Path = DEFAULT_DEST) -> Path:
    """Make sure `dest` holds the pinned converters; return `dest`."""
    if (dest / STAMP).is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "sdist.tar.gz"
        print(f"[llama.cpp] downloading llama-cpp-python {VERSION} sdist (76 MB) for the converter oracle")
        with urllib.request.urlopen(URL, timeout=300) as r, open(archive, "wb") as f:
            shutil.copyfileobj(r, f)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SHA256:
            sys.exit(f"[llama.cpp] {URL}: sha256 {digest} != pinned {SHA256}")
        staging = Path(tmp) / "out"
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and any(rel == p or rel.startswith(p) for p in MEMBERS) and (m.isfile() or m.isdir()):
                    m.name = rel
                    tar.extract(m, staging, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
        (dest / STAMP).write_text(SHA256 + "\n")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    print(fetch(ap.parse_args().dest))


if __name__ == "__main__":
    main()
