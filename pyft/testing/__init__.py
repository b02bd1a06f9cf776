"""Deterministic fixtures for tests, benchmarks and the demo. Nothing downloads from a hub.

- :func:`make_tokenizer` — a byte-level BPE tokenizer trained locally on the bundled corpus,
  saved as an HF tokenizer directory with a chat template (``chatml``, ``llama3`` or ``alpaca``
  style, each with the special tokens of that family).
- :func:`make_tiny_model` — a tiny random-init causal LM (``llama`` shape, or ``qwen2`` with
  GQA and tied embeddings) saved as an HF model directory together with its tokenizer.
- :data:`TEMPLATES` — the Jinja sources of pyft's built-in chat templates.

Needs the ``train`` extra (``tokenizers``, ``transformers``, ``torch``).
"""

from pyft.testing.models import TINY_SHAPES, make_tiny_model
from pyft.testing.tokenizers import CORPUS_PATH, TEMPLATES, TOKENIZER_STYLES, make_tokenizer

__all__ = ["make_tokenizer", "make_tiny_model", "TEMPLATES", "TOKENIZER_STYLES", "TINY_SHAPES", "CORPUS_PATH"]
