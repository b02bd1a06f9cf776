"""Generation from a base model, a base + adapter, a merged directory or an NF4 base.

- :mod:`pyft.generate.settings` — :class:`SamplingSettings` (greedy, temperature, top-p/k, min-p,
  repetition penalty, max new tokens, seed, stop strings) and their ``transformers`` form.
- :mod:`pyft.generate.prompts` — prompts as text or chat messages, rendered with the model's chat
  template by pyft's Rust renderer (the one data preparation uses).
- :mod:`pyft.generate.engine` — :class:`Generator`: loads the model once, generates batches
  (left-padded, KV cache, transformers' ``generate``), stops on every end-of-turn id and stop string.
- :mod:`pyft.generate.jsonl` — JSONL in, JSONL out, with a progress bar and tokens/s.
- :mod:`pyft.generate.chat` — the interactive ``pyft chat`` loop.
"""

from pyft.generate.engine import Completion, Generator
from pyft.generate.settings import SamplingSettings

__all__ = ["Completion", "Generator", "SamplingSettings"]
