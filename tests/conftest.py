"""Shared fixtures: tokenizers trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyft.testing import make_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One locally trained tokenizer directory per style: chatml, llama3, alpaca."""
    base = tmp_path_factory.mktemp("tokenizers")
    return {style: make_tokenizer(base / style, style=style) for style in ("chatml", "llama3", "alpaca")}


@pytest.fixture(scope="session")
def hf_tokenizers(tokenizer_dirs: dict[str, Path]):
    """The same tokenizers loaded by transformers (the reference)."""
    from transformers import AutoTokenizer

    return {style: AutoTokenizer.from_pretrained(d) for style, d in tokenizer_dirs.items()}


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: tiny models gain nothing from more, and lose a lot when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
