"""pyft: a Rust-accelerated toolkit from raw conversation data to fine-tuned, servable causal LMs.

Import what you need from the subpackages:

- :mod:`pyft.data` — prepare conversation files into token shards, load them for training;
- :mod:`pyft.peft` — LoRA, rsLoRA and DoRA; adapters in PEFT's on-disk format;
- :func:`load_model` — a transformers causal LM from a local directory, optionally with an adapter;
- :mod:`pyft.testing` — deterministic tiny tokenizers and models for tests and the demo.
"""

from pyft._core import __version__
from pyft.errors import ConfigError, DataError, PyftError, TemplateError, TokenizerError
from pyft.models import load_model

__all__ = ["__version__", "load_model", "PyftError", "DataError", "TemplateError", "TokenizerError", "ConfigError"]
