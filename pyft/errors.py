"""pyft's exceptions. Every error pyft raises on purpose derives from :class:`PyftError`.

- :class:`DataError` — invalid input data; ``.file``, ``.line`` (1-based line, array element or
  Parquet row; ``None`` for whole-file problems) and ``.field`` (e.g. ``messages[2].role``) name
  the culprit, and so does the message (``data.jsonl:12: field `messages[1].role`: ...``).
- :class:`TemplateError` — a chat template failed to compile or render.
- :class:`TokenizerError` — a tokenizer could not be loaded or used.
- :class:`ConfigError` — an invalid option value.

File-system failures are raised as :class:`OSError`.
"""

from pyft._core import ConfigError, DataError, PyftError, TemplateError, TokenizerError

__all__ = ["PyftError", "DataError", "TemplateError", "TokenizerError", "ConfigError"]
