"""JSONL prompts in, JSONL completions out (``pyft generate --input``), with a progress bar and tokens/s.

Input: one JSON object per line with ``prompt`` (text, rendered through the chat template as one user
turn when the model has one) or ``messages`` (a chat); every other field is passed through. Output: the
same object plus ``completion``, ``prompt_tokens``, ``completion_tokens`` and ``finish_reason``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pyft._atomic import atomic_file, check_output_disjoint
from pyft.errors import DataError
from pyft.generate.engine import Completion, Generator
from pyft.generate.prompts import Prompt, check_messages
from pyft.generate.settings import SamplingSettings
from pyft.io.files import jsonl_records

PathLike = str | os.PathLike[str]


def prompt_of(record: Any, where: str, raw: bool = False) -> Prompt:
    """The prompt of one input record (``prompt`` text or ``messages``).

    Raises:
        DataError: neither field, or the wrong types; the message names ``where`` (file and line).
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    if "messages" in record:
        return Prompt(messages=check_messages(record["messages"], where))
    text = record.get("prompt")
    if not isinstance(text, str):
        raise DataError(f"{where}: needs a string `prompt` or a `messages` list")
    return Prompt(text=text) if raw else Prompt(messages=[{"role": "user", "content": text}])


def read_prompts(path: PathLike, raw: bool = False) -> tuple[list[dict[str, Any]], list[Prompt]]:
    """The records and prompts of a JSONL file (blank lines skipped).

    Raises:
        DataError: a line is not JSON or has no prompt (file and line named).
    """
    records, prompts = [], []
    for where, record in jsonl_records(path):
        prompts.append(prompt_of(record, where, raw))
        records.append(record)
    return records, prompts


@dataclass
class Throughput:
    """Totals of a generation run: prompts, generated tokens and generation seconds."""

    prompts: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per wall second of generation."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def generate_jsonl(generator: Generator, inp: PathLike, out: PathLike, settings: SamplingSettings, *,
                   batch_size: int = 8, system: str | None = None, raw: bool = False, overwrite: bool = False,
                   progress: TextIO | None = sys.stderr) -> Throughput:
    """Complete every prompt of ``inp`` and write ``out`` (staged, then renamed).

    Args:
        raw: ``prompt`` texts are continued as they are instead of as one user turn; also when the model
            has no chat template.

    Returns:
        The run's :class:`Throughput`.
    """
    check_output_disjoint(out, [inp])
    records, prompts = read_prompts(inp, raw=raw or generator.template is None)
    totals = Throughput()
    bar = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), file=progress, unit="prompt", dynamic_ncols=True)

    def on_batch(batch: list[Completion], seconds: float) -> None:
        totals.prompts += len(batch)
        totals.tokens += sum(c.completion_tokens for c in batch)
        totals.seconds += seconds
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix_str(f"{totals.tokens_per_second:.1f} tok/s")

    try:
        completions = generator.complete(prompts, settings, batch_size=batch_size, system=system, on_batch=on_batch)
    finally:
        if bar is not None:
            bar.close()
    with atomic_file(out, overwrite=overwrite) as tmp, Path(tmp).open("w", encoding="utf-8") as f:
        for record, c in zip(records, completions, strict=True):
            row = {**record, "completion": c.text, "prompt_tokens": c.prompt_tokens,
                   "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return totals
