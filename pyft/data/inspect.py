"""``pyft data inspect``: statistics of a prepared directory and one example rendered with its
trainable tokens highlighted."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyft import _core
from pyft.data.dataset import PreparedDataset
from pyft.data.prepare import PreparedInfo
from pyft.errors import ConfigError
from pyft.io.files import data_error

_ON, _OFF = "\x1b[1;32m", "\x1b[0m"


def _tokenizer(info: PreparedInfo) -> _core.Tokenizer:
    path = info.out_dir / "tokenizer" / "tokenizer.json"
    return _core.Tokenizer.from_file(str(path))


def render_example(out_dir: str | os.PathLike[str], index: int = 0, split: str = "train", color: bool | None = None) -> str:
    """Decode one row of a prepared directory, marking the tokens that carry loss.

    Trainable runs are shown in green when ``color`` (default: stdout is a terminal), else
    wrapped in ``[[`` ``]]``. Documents of a packed row are separated by a ``── document N ──``
    line. Preference/KTO rows show the prompt and the completion(s).

    Raises:
        ConfigError: ``index`` is not a row of the split (``--index``).
        DataError: a damaged prepared directory (named by :class:`~pyft.data.PreparedDataset`).
    """
    ds = PreparedDataset(out_dir, split)
    if not -len(ds) <= index < len(ds):
        raise ConfigError(f"--index {index}: the {split} split of {out_dir} has {len(ds)} rows"
                          + (" (every record was dropped when it was prepared)" if not len(ds) else ""))
    tok = _tokenizer(ds.info)
    if color is None:
        color = os.isatty(1)
    on, off = (_ON, _OFF) if color else ("[[", "]]")
    item = ds[index]
    for name, ids in item.items():
        if name not in ("labels", "position_ids", "seq_lengths", "label") and len(ids):
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= tok.vocab_size:
                raise data_error(ds.info.out_dir, f"row {index} of the {split} split holds token id "
                                                  f"{low if low < 0 else high} in `{name}`, outside the tokenizer's "
                                                  f"{tok.vocab_size} ids", name)
    if ds.kind in ("chat", "text"):
        parts: list[str] = []
        start = 0
        for d, n in enumerate(item["seq_lengths"].tolist()):
            if len(item["seq_lengths"]) > 1:
                parts.append(f"\n── document {d + 1} ({n} tokens) ──\n")
            ids = item["input_ids"][start : start + n].tolist()
            trainable = (item["labels"][start : start + n] != -100).tolist()
            run: list[int] = []
            state = trainable[0] if trainable else False
            for tid, t in zip(ids + [None], trainable + [not state]):
                if tid is None or t != state:
                    text = tok.decode(run)
                    parts.append(f"{on}{text}{off}" if state and text else text)
                    run, state = [], t
                if tid is not None:
                    run.append(tid)
            start += n
        return "".join(parts)
    if ds.kind == "preference":
        return (
            f"PROMPT:\n{tok.decode(item['prompt'].tolist())}\n"
            f"CHOSEN:\n{on}{tok.decode(item['chosen'].tolist())}{off}\n"
            f"REJECTED:\n{on}{tok.decode(item['rejected'].tolist())}{off}"
        )
    if ds.kind == "classify":
        value = ds.info.classes["values"][int(item["label"])]
        return f"CLASS {value!r}:\n{tok.decode(item['input_ids'].tolist())}"
    label = "desirable" if int(item["label"]) else "undesirable"
    return (
        f"PROMPT:\n{tok.decode(item['prompt_ids'].tolist())}\n"
        f"COMPLETION ({label}):\n{on}{tok.decode(item['completion_ids'].tolist())}{off}"
    )


def inspect(out_dir: str | os.PathLike[str], index: int = 0, split: str = "train", color: bool | None = None) -> str:
    """The statistics summary plus one rendered example (what ``pyft data inspect`` prints)."""
    info = PreparedInfo.read(out_dir)
    ds = PreparedDataset(out_dir, split)
    lengths = ds.lengths()
    stats = ""
    if len(lengths):
        stats = (
            f"\nrow tokens ({split}): mean {lengths.mean():.1f}  median {int(np.median(lengths))}  "
            f"p95 {int(np.percentile(lengths, 95))}  max {int(lengths.max())}"
        )
    header = f"\nexample {index} of {split} ({len(ds)} rows)" + (", trainable tokens in [[ ]]" if not (color or (color is None and os.isatty(1))) else "") + ":\n"
    return info.summary() + stats + header + render_example(Path(out_dir), index, split, color)
