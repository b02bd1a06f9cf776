"""Shared fixtures: tokenizers trained once per session; the session's environment."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from pyft.testing import make_tokenizer

# Tests never download: transformers, huggingface_hub and `kernels` (which bitsandbytes asks for a
# CPU kernel on AVX512-BF16 machines) stay off the network, here and in every subprocess.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    """bitsandbytes, where installed, computes with its portable kernels on every CPU (see
    ``tests/bnb_nf4.py``: its AVX-512 CPU kernels are wrong oracles)."""
    if importlib.util.find_spec("bitsandbytes") is not None:
        import logging
        import warnings

        from bnb_nf4 import use_portable_cpu_kernels

        for name in ("bitsandbytes", "kernels"):  # "failed to load ... from kernels-community" (offline)
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its import-time notices
            use_portable_cpu_kernels()


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
