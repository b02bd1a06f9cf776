"""The classes of a classifier: the data's labels (``meta.json``'s ``classes``) mapped onto the model's
ids, and class weights.

Prepared classify data stores each row's class as an index into its sorted class list
(:attr:`pyft.data.PreparedInfo.classes`); a :class:`LabelMap` turns those into model ids, as
``classify.labels`` (or the data alone) says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pyft.data.prepare import PreparedInfo
from pyft.errors import ConfigError, DataError


@dataclass(frozen=True)
class LabelMap:
    """Model ids and names of the classes, and where the data's classes go.

    Attributes:
        names: the class names in id order (``id2label``).
        data_to_id: ``int64 [len(data classes)]``: the model id of each class in the data's class list.
    """

    names: tuple[str, ...]
    data_to_id: np.ndarray

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def model_config(self) -> dict[str, Any]:
        """The fields transformers keeps in a classifier's ``config.json``."""
        return {"num_labels": self.num_labels, "id2label": self.id2label, "label2id": self.label2id,
                "problem_type": "single_label_classification"}


def resolve_labels(info: PreparedInfo, labels: list[str] | None = None) -> LabelMap:
    """The :class:`LabelMap` of prepared classify data under ``classify.labels``.

    Raises:
        ConfigError: the data is not classify data, or names fewer than 2 classes without ``labels``.
        DataError: a class of the data is not in ``labels`` (a name) or out of its range (an index),
            naming the file, line and field where that class first occurs.
    """
    classes = info.classes
    if info.kind != "classify" or classes is None:
        raise ConfigError(f"data: {info.out_dir} holds {info.kind} data; classification needs classify data "
                          f"(records with `text` or `messages` and a `label`)")
    values, first = classes["values"], classes["first"]
    if classes["type"] == "name":
        names = tuple(labels) if labels is not None else tuple(values)
        index = {n: i for i, n in enumerate(names)}
        for v, at in zip(values, first):
            if v not in index:
                raise DataError(f"{at}: field `label`: {v!r} is not one of classify.labels "
                                f"({', '.join(names)})")
        ids = [index[v] for v in values]
    else:
        names = tuple(labels) if labels is not None else tuple(f"LABEL_{i}" for i in range(max(values) + 1))
        for v, at in zip(values, first):
            if v >= len(names):
                raise DataError(f"{at}: field `label`: class index {v} is out of range for the {len(names)} "
                                f"classes of classify.labels ({', '.join(names)})")
        ids = list(values)
    if len(names) < 2:
        raise ConfigError(f"classify.labels: the data of {info.out_dir} holds one class ({names[0]!r}); a "
                          f"classifier needs at least 2 (list them in classify.labels)")
    return LabelMap(names, np.asarray(ids, dtype=np.int64))


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency class weights ``n / (n_classes · counts)``, as scikit-learn's
    ``compute_class_weight("balanced")``.

    Raises:
        ConfigError: a class has no example (its weight would be infinite).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ConfigError(f"classify.class_weights: auto weighs classes by their training examples, but class "
                          f"{missing} has none; give the weights as a list")
    return counts.sum() / (len(counts) * counts)


def class_weights(setting: str | list[float] | None, label_map: LabelMap, train_ids: np.ndarray) -> np.ndarray | None:
    """The weights ``classify.class_weights`` asks for (None: unweighted).

    Args:
        setting: ``auto``, a list (one weight per class, in id order) or None.
        label_map: the classes.
        train_ids: the model ids of the training examples (for ``auto``).
    """
    if setting is None:
        return None
    if setting == "auto":
        return balanced_class_weights(np.bincount(train_ids, minlength=label_map.num_labels))
    if len(setting) != label_map.num_labels:
        raise ConfigError(f"classify.class_weights: {len(setting)} weights for {label_map.num_labels} classes "
                          f"({', '.join(label_map.names)})")
    return np.asarray(setting, dtype=np.float64)
