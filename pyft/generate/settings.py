"""Sampling settings for generation, and their ``transformers.GenerationConfig`` form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyft.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are chosen.

    Attributes:
        max_new_tokens: most tokens generated per prompt (the end-of-turn token counts).
        temperature: 0 means greedy decoding; > 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: keep the smallest set of tokens whose probability sums to ≥ top_p (1 = off).
        top_k: keep the k most likely tokens (0 = off).
        min_p: keep tokens whose probability is ≥ min_p × the top token's (0 = off).
        repetition_penalty: CTRL's penalty on tokens already in the prompt or output (1 = off).
        seed: seeds torch's generator before generating, so sampled output is reproducible for the same
            prompts, batch size and device.
        stop: strings that end a completion; the completion is cut before the first one.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature >= 0, "temperature must be ≥ 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be ≥ 0 (0 = off)"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 = off)"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"sampling: {message}")

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0)."""
        return self.temperature == 0

    def generate_kwargs(self, eos_token_ids: list[int], pad_token_id: int) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling options left at transformers' "off" values
        when greedy, so no warning about unused flags is raised)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens, "do_sample": not self.greedy,
            "eos_token_id": eos_token_ids, "pad_token_id": pad_token_id,
            "repetition_penalty": self.repetition_penalty,
            # transformers would otherwise fill these from the model's generation_config.json
            "temperature": 1.0, "top_p": 1.0, "top_k": None, "min_p": None,
        }
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None,
                          min_p=self.min_p or None)
        return kwargs
