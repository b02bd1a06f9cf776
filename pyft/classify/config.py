"""Options of ``method: classify`` (``classify:`` in a training config).

Defined here, beside the objective that reads them, so :mod:`pyft.classify` needs nothing from
:mod:`pyft.train`; the training config (:mod:`pyft.train.config`) embeds it as its ``classify`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ClassifySection:
    """Options of sequence classification.

    - ``labels``: the class names in id order (``[neg, pos]``: id 0 is ``neg``). The data's labels
      must be among them (class names), or index them (class indices). ``null`` (default): the
      data's class names sorted by code point, or for class indices ``LABEL_0`` .. ``LABEL_<max>``
      (transformers' default names).
    - ``label_smoothing``: ε of the cross-entropy, in ``[0, 1)``: each example's loss is
      ``(1 - ε)·(-log p(label)) + ε·mean over the classes of -log p`` (torch's
      ``cross_entropy(label_smoothing=ε)``). 0 = off.
    - ``class_weights``: per-class loss weights against imbalance: ``auto`` (inverse class frequency
      in the training split, ``n_examples / (n_classes · n_class)``, as scikit-learn's
      ``compute_class_weight("balanced")``), a list of one positive number per class (in id order),
      or ``null`` (default: all 1). The step loss is then the weighted mean
      ``Σ w[y_i]·loss_i / Σ w[y_i]`` (torch's ``cross_entropy(weight=w)``).
    """

    labels: list[str] | None = None
    label_smoothing: float = 0.0
    class_weights: str | list[float] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError(f"labels: a classifier needs at least 2 classes, got {self.labels!r}")
            for i, name in enumerate(self.labels):
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"labels[{i}]: expected a class name (a non-empty string), got {name!r}")
            dup = next((n for i, n in enumerate(self.labels) if n in self.labels[:i]), None)
            if dup is not None:
                raise ValueError(f"labels: {dup!r} is listed more than once")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing!r}")
        w = self.class_weights
        if isinstance(w, str) and w != "auto":
            raise ValueError(f"class_weights: expected auto, a list of numbers or null, got {w!r}")
        if isinstance(w, list):
            if self.labels is not None and len(w) != len(self.labels):
                raise ValueError(f"class_weights: {len(w)} weights for {len(self.labels)} labels")
            for i, x in enumerate(w):
                if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                    raise ValueError(f"class_weights[{i}]: must be a positive number, got {x!r}")
