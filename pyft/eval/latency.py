"""Latency of generation: time to first token and decode speed, one prompt at a time (batch 1, as a chat
user sees it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pyft.generate.engine import Generator
from pyft.generate.prompts import Prompt
from pyft.generate.settings import SamplingSettings


class _Clock:
    """A transformers streamer that only notes when each generated token arrives (the first ``put`` is the
    prompt)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.calls: list[float] = []

    def put(self, value: Any) -> None:
        self.calls.append(time.perf_counter())

    def end(self) -> None:
        self.calls.append(time.perf_counter())


def measure_latency(generator: Generator, prompts: Sequence[Prompt], settings: SamplingSettings, *,
                    system: str | None = None) -> dict[str, float]:
    """Time to first token (seconds, median over ``prompts``) and decode tokens/s (tokens after the first
    over the time after it, summed over prompts), batch 1.

    Returns:
        ``{"ttft_s", "decode_tokens_per_s", "prompts"}``; zeros when nothing was generated.
    """
    ttfts: list[float] = []
    tokens, seconds = 0, 0.0
    for p in prompts:
        clock = _Clock()
        c = generator.complete([p], settings, batch_size=1, system=system, streamer=clock)[0]
        # calls: [prompt, token 1, token 2, ..., end]
        if len(clock.calls) >= 3:
            ttfts.append(clock.calls[1] - clock.start)
            tokens += c.completion_tokens - 1
            seconds += clock.calls[-1] - clock.calls[1]
    ttfts.sort()
    median = ttfts[len(ttfts) // 2] if ttfts else 0.0
    return {"ttft_s": median, "decode_tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "prompts": float(len(ttfts))}
