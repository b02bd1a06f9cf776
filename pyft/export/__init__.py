"""``pyft.export``: what serving a fine-tuned model needs beyond its weights.

- :mod:`pyft.export.chat` — chat template lookup, end-of-turn tokens, ``generation_config.json`` /
  ``tokenizer_config.json`` / ``chat_template.jinja`` for a merged model directory.
"""

from pyft.export.chat import (
    default_system_prompt,
    end_of_turn_tokens,
    load_chat_template,
    serving_files,
    special_tokens,
)

__all__ = [
    "load_chat_template",
    "end_of_turn_tokens",
    "default_system_prompt",
    "serving_files",
    "special_tokens",
]
