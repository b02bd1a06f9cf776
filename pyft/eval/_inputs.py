"""Checks of the inputs every metric takes: strings, reference lists, equal-length columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyft.errors import DataError


def data_error(message: str, field: str | None = None) -> DataError:
    """A :class:`DataError` about in-memory data: ``.field`` names the culprit (``references[3]``)."""
    err = DataError(message)
    err.file, err.line, err.field = None, None, field
    return err


def check_text(value: Any, field: str) -> str:
    """``value`` if it is a ``str``.

    Raises:
        DataError: it is not (``None``, a number, a list...); the message names ``field``.
    """
    if not isinstance(value, str):
        raise data_error(f"`{field}` must be a string, got {type(value).__name__}: {value!r:.80}", field)
    return value


def reference_list(value: Any, field: str) -> list[str]:
    """One example's references as a non-empty list: a ``str`` is one reference, a sequence of ``str``
    several (scores take the best one).

    Raises:
        DataError: an empty list, or an element that is not a string.
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise data_error(f"`{field}` must be a string or a list of strings, got {type(value).__name__}: "
                         f"{value!r:.80}", field)
    if not value:
        raise data_error(f"`{field}` is an empty list: every example needs at least one reference", field)
    return [check_text(ref, f"{field}[{i}]") for i, ref in enumerate(value)]


def check_column(values: Any, name: str) -> Sequence[Any]:
    """``values`` if it is a list-like column (not a single string).

    Raises:
        DataError: a ``str``, ``bytes`` or a non-sequence.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise data_error(f"`{name}` must be a list (one entry per example), got {type(values).__name__}", name)
    return values


def check_same_length(predictions: Sequence[Any], references: Sequence[Any],
                      names: tuple[str, str] = ("predictions", "references")) -> None:
    """Raises DataError unless there is exactly one prediction per reference entry, and at least one."""
    if len(predictions) != len(references):
        raise data_error(f"{len(predictions)} {names[0]} but {len(references)} {names[1]}: there must be "
                         f"exactly one entry of `{names[0]}` per entry of `{names[1]}`", names[0])
    if not predictions:
        raise data_error(f"no examples: `{names[0]}` and `{names[1]}` are empty", names[0])


def text_pairs(predictions: Any, references: Any,
               names: tuple[str, str] = ("predictions", "references")) -> tuple[list[str], list[list[str]]]:
    """Predictions (``str`` each) and references (``str`` or list of ``str`` each), checked; ``names`` are
    the argument names the error messages use.

    Returns:
        The predictions and, per example, its non-empty list of references.

    Raises:
        DataError: columns of different lengths or empty, a prediction or reference that is not a string,
            an example with an empty reference list.
    """
    predictions = check_column(predictions, names[0])
    references = check_column(references, names[1])
    check_same_length(predictions, references, names)
    preds = [check_text(p, f"{names[0]}[{i}]") for i, p in enumerate(predictions)]
    refs = [reference_list(r, f"{names[1]}[{i}]") for i, r in enumerate(references)]
    return preds, refs
