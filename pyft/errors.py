"""pyft's exceptions. Every error pyft raises on purpose derives from :class:`PyftError`.

- :class:`DataError` — invalid input data; ``.file``, ``.line`` (1-based line, array element or
  Parquet row; ``None`` for whole-file problems) and ``.field`` (e.g. ``messages[2].role``) name
  the culprit, and so does the message (``data.jsonl:12: field `messages[1].role`: ...``).
- :class:`TemplateError` — a chat template failed to compile or render.
- :class:`TokenizerError` — a tokenizer could not be loaded or used.
- :class:`ConfigError` — an invalid option value.
- :class:`ShapeError` — tensor shapes or buffer sizes that do not fit together (a tensor that
  disagrees with ``config.json``, rows that are not whole quantization blocks); names the tensor.
- :class:`InternalError` — pyft broke one of its own invariants: a bug in pyft, never bad input;
  the message asks for a report.
- :class:`TrainingError` — training cannot go on (e.g. a non-finite loss or gradient).

File-system failures are raised as :class:`OSError`.
"""

from pyft._core import (
    ConfigError,
    DataError,
    InternalError,
    PyftError,
    ShapeError,
    TemplateError,
    TokenizerError,
)



class TrainingError(PyftError):
    """Training stopped: the message says why and where the last good checkpoint is."""


__all__ = ["PyftError", "DataError", "TemplateError", "TokenizerError", "ConfigError", "ShapeError", "InternalError",
           "TrainingError"]
