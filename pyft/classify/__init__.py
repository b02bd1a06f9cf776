"""Sequence classification (``method: classify``): options, label maps, the training objective and
prediction.

- :mod:`pyft.classify.config` — the ``classify:`` section of a training config;
- :mod:`pyft.classify.labels` — the data's classes mapped onto model ids, class weights;
- :mod:`pyft.classify.objective` — cross-entropy with label smoothing and class weights (torch);
- :mod:`pyft.classify.predict` — :func:`load_classifier`, :meth:`Classifier.predict`,
  :func:`evaluate_classifier`.

Importing this package is cheap: torch and transformers load when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyft.classify.config import ClassifySection

if TYPE_CHECKING:
    from pyft.classify.predict import Classifier, evaluate_classifier, load_classifier

__all__ = ["Classifier", "ClassifySection", "evaluate_classifier", "load_classifier"]


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "evaluate_classifier", "load_classifier"):
        from pyft.classify import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'pyft.classify' has no attribute {name!r}")
