"""``pyft chat``: an interactive terminal chat that keeps the history, renders it with the chat template
and streams the reply as it is generated.

Commands typed at the prompt: ``/reset`` (forget the conversation), ``/system TEXT`` (set the system
prompt and start over; ``/system`` alone removes it), ``/exit`` or ``/quit`` (or end of input).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from pyft.errors import PyftError
from pyft.generate.engine import Generator
from pyft.generate.prompts import Prompt
from pyft.generate.settings import SamplingSettings

HELP = "commands: /reset  /system TEXT  /exit"


def _streamer(generator: Generator, out: TextIO) -> Any:
    from transformers import TextStreamer

    class _Out(TextStreamer):
        """transformers' decoding streamer, writing to ``out`` instead of stdout."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return _Out(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_loop(generator: Generator, settings: SamplingSettings, *, system: str | None = None,
              inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """Read user turns from ``inp`` until end of input or ``/exit``; stream each reply to ``out``.

    Returns:
        The number of assistant replies generated.
    """
    if generator.template is None:
        raise PyftError("pyft chat needs a chat template: the model (or adapter) directory has none")
    history: list[dict[str, str]] = []
    replies = 0
    out.write(f"pyft chat ({HELP})\n")
    while True:
        out.write("you> ")
        out.flush()
        line = inp.readline()
        if not line:
            out.write("\n")
            return replies
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            return replies
        if text.strip() == "/reset":
            history.clear()
            out.write("(conversation reset)\n")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history.clear()
            out.write(f"(system prompt {'set' if system else 'removed'}; conversation reset)\n")
            continue
        if text.startswith("/"):
            out.write(f"unknown command {text.split()[0]} ({HELP})\n")
            continue
        history.append({"role": "user", "content": text})
        out.write("assistant> ")
        out.flush()
        completion = generator.complete([Prompt(messages=list(history))], settings, batch_size=1, system=system,
                                        streamer=_streamer(generator, out))[0]
        history.append({"role": "assistant", "content": completion.text})
        replies += 1
