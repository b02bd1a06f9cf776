"""pyft: a Rust-accelerated toolkit from raw conversation data to fine-tuned, servable causal LMs.

Import what you need from the subpackages:

- :mod:`pyft.data` — prepare conversation files into token shards, load them for training;
- :mod:`pyft.testing` — deterministic tiny tokenizers and models for tests and the demo.
"""

from pyft._core import __version__
from pyft.errors import ConfigError, DataError, PyftError, TemplateError, TokenizerError

__all__ = ["__version__", "PyftError", "DataError", "TemplateError", "TokenizerError", "ConfigError"]
