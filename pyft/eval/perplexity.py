"""Perplexity of a model on text, and on the general-domain corpus shipped with pyft (for forgetting).

The shipped corpus (``pyft/eval/corpus/general.jsonl``) holds 27 short encyclopedic and everyday
paragraphs in 11 languages (English, German, French, Spanish, Italian, Portuguese, Chinese, Japanese,
Russian, Arabic, Hindi), written for pyft. It is small on purpose: it measures how much a fine-tune moved
the model's general language modelling, quickly, before and after training.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pyft.errors import DataError
from pyft.io.files import jsonl_records, read_bytes

PathLike = str | os.PathLike[str]

GENERAL_CORPUS = Path(__file__).with_name("corpus") / "general.jsonl"


def read_texts(path: PathLike | None = None) -> list[dict[str, str]]:
    """Records ``{"text", "lang"?}`` of a JSONL file (``text`` required), or of plain text (one record per
    blank-line-separated paragraph); the shipped general corpus when ``path`` is None.

    Raises:
        DataError: a JSONL line that is not an object with a string ``text`` (file and line named).
    """
    p = Path(path) if path is not None else GENERAL_CORPUS
    if p.suffix != ".jsonl":
        try:
            raw = read_bytes(p).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
        return [{"text": t.strip()} for t in raw.split("\n\n") if t.strip()]
    out = []
    for where, rec in jsonl_records(p):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{where}: needs a string `text`")
        out.append({"text": rec["text"], **({"lang": str(rec["lang"])} if "lang" in rec else {})})
    return out


def text_perplexity(model: Any, tokenizer: Any, records: list[dict[str, str]], *, window: int = 512) -> dict[str, Any]:
    """Token-weighted perplexity of ``model`` on the texts of ``records``.

    Each text is tokenized with the tokenizer's special tokens (e.g. BOS) and scored in non-overlapping
    windows of at most ``window`` tokens (the first token of a window is context only).

    Returns:
        ``{"ppl", "nll" (mean per predicted token, nats), "tokens", "by_lang": {lang: ppl}}``.
    """
    import torch

    device = next(model.parameters()).device
    sums: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    try:
        for rec in records:
            ids = tokenizer(rec["text"])["input_ids"]
            for start in range(0, max(len(ids) - 1, 0), window):
                chunk = torch.tensor([ids[start:start + window + 1]], device=device)
                if chunk.shape[1] < 2:
                    continue
                with torch.no_grad():
                    logits = model(input_ids=chunk[:, :-1]).logits.float()
                nll = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
                s = sums.setdefault(rec.get("lang", "all"), [0.0, 0])
                s[0] += float(nll)
                s[1] += chunk.shape[1] - 1
    finally:
        model.train(was_training)
    total, count = sum(s[0] for s in sums.values()), sum(int(s[1]) for s in sums.values())
    if count == 0:
        raise DataError("no tokens to score: the texts are empty")
    mean = total / count
    return {"ppl": math.exp(min(mean, 50.0)), "nll": mean, "tokens": count,
            "by_lang": {k: math.exp(min(v[0] / v[1], 50.0)) for k, v in sorted(sums.items())}}
