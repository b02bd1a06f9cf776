"""Prompts as plain text or chat messages, rendered with the model's chat template by pyft's Rust
renderer (the one ``pyft data prepare`` uses, so generation sees the training format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyft.errors import ConfigError
from pyft.io.serving import render

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Prompt:
    """One prompt: raw ``text`` (tokenized as is, with the tokenizer's BOS), chat ``messages``, or token
    ``ids`` already in the model's format (e.g. a prepared row's prompt)."""

    text: str | None = None
    messages: Messages | None = None
    ids: list[int] | None = None


def check_messages(messages: Any, where: str) -> Messages:
    """``messages`` as a list of ``{"role", "content"}`` dicts with string fields.

    Raises:
        ConfigError: the shape is wrong; the message names ``where`` (e.g. ``prompts.jsonl line 3``).
    """
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"{where}: messages[{i}] needs string `role` and `content`")
    return messages


def render_prompt(prompt: Prompt, template: str | None, tokens: dict[str, str], system: str | None = None) -> str:
    """The prompt text the model continues.

    Chat messages render with ``template`` and the generation prompt; a ``system`` prompt is put first
    when the messages have none. Plain text renders through the template as one user message when the
    model has a template, and is used as is without one (or for ``Prompt(text=...)`` from ``--raw``).

    Raises:
        ConfigError: chat messages but no chat template.
        TemplateError: the template fails on the messages.
    """
    if prompt.messages is None:
        if prompt.text is None:
            raise ConfigError("a prompt given as token ids has no text to render")
        return prompt.text
    if template is None:
        raise ConfigError("chat messages need a chat template, and the model has none: pass plain text "
                          "prompts (--raw) or a model/adapter directory with a chat template")
    messages = list(prompt.messages)
    if system is not None and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system})
    return render(template, messages, add_generation_prompt=True, tokens=tokens)
