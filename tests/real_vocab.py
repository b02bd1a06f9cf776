"""Real tokenizers for the tests, rebuilt offline from llama.cpp's vocabulary files.

The llama-cpp-python sdist that ``tools/fetch_llama_cpp_src.py`` fetches (pinned by hash) ships the
vocabularies of published models as ``models/ggml-vocab-<name>.gguf`` (``llama-bpe`` is Llama 3,
``llama-spm`` Llama 2, ``qwen2``, ``phi-3``, ``gpt-2``, ``starcoder``, ...), most with
``.inp``/``.out`` files of edge-case texts, and about 70 real chat templates as
``models/templates/*.jinja``. transformers rebuilds a ``tokenizer.json`` from such a GGUF
(``AutoTokenizer.from_pretrained(dir, gguf_file=...)``); :func:`real_tokenizer_dir` does that once
and caches the saved tokenizer under ``.cache/real-tokenizers/`` (keyed by the transformers
version, which does the conversion).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from llamacpp import llama_cpp_src

ROOT = Path(__file__).resolve().parent.parent
#: Separates the texts of a ``ggml-vocab-*.gguf.inp`` file.
_INP_SEPARATOR = "\n__ggml_vocab_test__\n"


def models_dir() -> Path:
    """llama.cpp's ``models/`` folder (vocabulary GGUFs and ``templates/``)."""
    d = llama_cpp_src() / "models"
    if not d.is_dir():
        raise RuntimeError(f"{d} is missing: run python tools/fetch_llama_cpp_src.py (it extracts models/)")
    return d


def vocab_names() -> list[str]:
    """Names of the vocabularies shipped, e.g. ``llama-bpe`` for ``ggml-vocab-llama-bpe.gguf``."""
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in models_dir().glob("ggml-vocab-*.gguf"))


def template_names() -> list[str]:
    """File names of the real chat templates shipped (``*.jinja``)."""
    return sorted(p.name for p in (models_dir() / "templates").glob("*.jinja"))


def template_source(name: str) -> str:
    """The Jinja source of the chat template ``models/templates/<name>``."""
    return (models_dir() / "templates" / name).read_text(encoding="utf-8")


def edge_texts(name: str) -> list[str]:
    """The edge-case texts of vocabulary ``name`` (its ``.inp`` file), or ``[]`` if it has none."""
    inp = models_dir() / f"ggml-vocab-{name}.gguf.inp"
    if not inp.is_file():
        return []
    text = inp.read_text(encoding="utf-8")
    parts = text.split(_INP_SEPARATOR)
    if parts and parts[-1].endswith("\n__ggml_vocab_test__"):
        parts[-1] = parts[-1][: -len("\n__ggml_vocab_test__")]
    return parts


def real_tokenizer_dir(name: str, template: str | None = None) -> Path:
    """An HF tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json``) rebuilt by
    transformers from ``ggml-vocab-<name>.gguf``; with ``template`` (a file name from
    :func:`template_names`) its chat template is that file. Cached; safe against concurrent callers
    (each builds in a private folder and renames it into place).

    Raises whatever transformers raises for a vocabulary it cannot convert.
    """
    import transformers

    key = name + (f"+{Path(template).stem}" if template else "")
    cache = ROOT / ".cache" / "real-tokenizers" / f"transformers-{transformers.__version__}" / key
    if (cache / "tokenizer.json").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache.parent))
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(str(models_dir()), gguf_file=f"ggml-vocab-{name}.gguf")
        finally:
            hf_logging.set_verbosity(level)
        if template:
            tok.chat_template = template_source(template)
        tok.save_pretrained(str(staging))
        try:
            os.rename(staging, cache)
        except OSError:  # another process won the race: use its copy
            if not (cache / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache
