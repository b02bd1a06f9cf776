"""Batched generation with transformers' ``generate``: left padding, KV cache, every end-of-turn id of
the chat template as a stop token, stop strings, and per-prompt token counts.

What pyft adds to ``generate``: loading any pyft target (base, base + adapter, merged, NF4), prompt
rendering with pyft's template renderer, the end-of-turn ids read off the template (not only the
tokenizer's eos), stop strings cut from the text, and batching with counts and timings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyft.generate.prompts import Prompt, render_prompt
from pyft.generate.settings import SamplingSettings
from pyft.io.serving import end_of_turn_tokens, load_chat_template, special_tokens

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Completion:
    """One generated completion.

    Attributes:
        text: the generated text, without the end-of-turn token and cut before any stop string.
        prompt_tokens: tokens in the rendered prompt.
        completion_tokens: tokens generated, the end-of-turn token included.
        finish_reason: ``stop`` (an end-of-turn token or stop string) or ``length`` (max_new_tokens).
        token_ids: the generated ids (end-of-turn included, padding excluded).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    token_ids: list[int]


def _tokenizer_dir(dirs: Sequence[Path]) -> Path:
    for d in dirs:
        if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            return d
    raise FileNotFoundError(f"no tokenizer (tokenizer.json / tokenizer_config.json) in {', '.join(map(str, dirs))}")


class Generator:
    """A loaded model with its tokenizer, chat template and stop ids.

    Args:
        model: the model directory or Hub id (base, merged or NF4 checkpoint).
        adapter: a pyft/PEFT LoRA adapter directory applied on top (its chat template and tokenizer, when
            saved beside it by ``pyft train``, win over the model's).
        dtype: ``auto``, ``float32``, ``bfloat16``, ``float16``.
        device: e.g. ``cuda``; default CPU.
        quantize: ``nf4`` to load the base in 4-bit NormalFloat.
        template: a Jinja chat template overriding the one found.
    """

    def __init__(self, model: PathLike, *, adapter: PathLike | None = None, dtype: str = "auto",
                 device: str | None = None, quantize: str | None = None, template: str | None = None) -> None:
        from pyft.hub import resolve_model
        from pyft.models import load_model

        model_dir = resolve_model(model, kind="model")
        adapter_dir = resolve_model(adapter, kind="adapter") if adapter is not None else None
        loaded = load_model(model_dir, dtype=dtype, device=device, adapter=adapter_dir, quantize=quantize)
        dirs = [d for d in (adapter_dir, model_dir) if d is not None]
        self._setup(loaded, dirs, template)

    @classmethod
    def from_model(cls, model: Any, tokenizer_dir: PathLike, *, template: str | None = None) -> Generator:
        """A generator around an already-loaded model (e.g. the one being trained)."""
        self = cls.__new__(cls)
        self._setup(model, [Path(tokenizer_dir)], template)
        return self

    def _setup(self, model: Any, dirs: list[Path], template: str | None) -> None:
        from transformers import AutoTokenizer

        self.model = model
        tok_dir = _tokenizer_dir(dirs)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        self.template = template if template is not None else load_chat_template(*dirs)
        self.tokens = special_tokens(tok_dir)
        ids: list[int] = [i for _, i in end_of_turn_tokens(self.template, tok_dir)] if self.template else []
        for extra in (self.tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None),
                                                           "eos_token_id", None)):
            ids += extra if isinstance(extra, list) else [extra] if isinstance(extra, int) else []
        self.eos_token_ids: list[int] = list(dict.fromkeys(ids))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)

    @property
    def device(self) -> Any:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def prompt_text(self, prompt: Prompt, system: str | None = None) -> str:
        """The rendered text of ``prompt`` (see :func:`pyft.generate.prompts.render_prompt`)."""
        return render_prompt(prompt, self.template, self.tokens, system)

    def encode(self, text: str, chat: bool) -> list[int]:
        """Token ids of a prompt: a rendered chat prompt carries its own special tokens; plain text gets
        the tokenizer's (e.g. BOS)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=not chat)["input_ids"]
        return ids

    def complete(self, prompts: Sequence[Prompt], settings: SamplingSettings | None = None, *,
                 batch_size: int = 8, system: str | None = None, streamer: Any = None,
                 on_batch: Callable[[list[Completion], float], None] | None = None) -> list[Completion]:
        """Generate one completion per prompt, ``batch_size`` prompts at a time (left-padded).

        Args:
            prompts: text or chat prompts.
            settings: sampling settings (greedy by default).
            batch_size: prompts per ``generate`` call.
            system: system prompt for chat prompts without one.
            streamer: a transformers streamer (batch size 1 only), e.g. for ``pyft chat``.
            on_batch: called after each batch with its completions and its wall seconds.

        Returns:
            One :class:`Completion` per prompt, in order.
        """
        import torch

        settings = settings or SamplingSettings()
        if streamer is not None and batch_size != 1:
            raise ValueError("streaming needs batch_size=1")
        encoded = [list(p.ids) if p.ids is not None else self.encode(self.prompt_text(p, system), p.messages is not None)
                   for p in prompts]
        torch.manual_seed(settings.seed)
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(encoded), batch_size):
                t0 = time.perf_counter()
                batch = self._generate(encoded[start:start + batch_size], settings, streamer)
                out += batch
                if on_batch is not None:
                    on_batch(batch, time.perf_counter() - t0)
        finally:
            self.model.train(was_training)
        return out

    def _generate(self, encoded: list[list[int]], settings: SamplingSettings, streamer: Any) -> list[Completion]:
        import torch

        width = max(len(e) for e in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
            attention_mask[i, width - len(e):] = 1
        kwargs = settings.generate_kwargs(self.eos_token_ids, self.pad_token_id)
        if settings.stop:
            kwargs.update(stop_strings=list(settings.stop), tokenizer=self.tokenizer)
        with torch.no_grad():
            generated = self.model.generate(input_ids=input_ids.to(self.device),
                                            attention_mask=attention_mask.to(self.device),
                                            streamer=streamer, **kwargs)
        return [self._completion(row[width:].tolist(), len(e), settings) for row, e in zip(generated, encoded,
                                                                                       strict=True)]

    def _completion(self, new: list[int], prompt_tokens: int, settings: SamplingSettings) -> Completion:
        eos = set(self.eos_token_ids)
        end = next((i for i, t in enumerate(new) if t in eos), None)
        ids = new if end is None else new[:end + 1]
        body = ids if end is None else ids[:-1]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        finish = "stop" if end is not None else "length"
        cut = min((at for at in (text.find(s) for s in settings.stop) if at >= 0), default=None)
        if cut is not None:
            text, finish = text[:cut], "stop"
        if end is None and finish == "stop":
            # generation stopped on a stop string: what followed it was padding
            while ids and ids[-1] == self.pad_token_id and len(ids) > 1:
                ids = ids[:-1]
        return Completion(text, prompt_tokens, len(ids), finish, ids)
