"""``pyft generate`` and ``pyft chat``: arguments and handlers."""

from __future__ import annotations

import argparse
import sys

from pyft.errors import ConfigError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL, --adapter, --dtype, --device, --quantize, --system: how to load and prompt a model."""
    p.add_argument("model", metavar="MODEL", help="model directory (base, merged or NF4) or Hub id owner/name[@rev]")
    p.add_argument("--adapter", metavar="DIR", help="a pyft/PEFT LoRA adapter directory to apply")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16, float16")
    p.add_argument("--device", help="e.g. cuda (default: CPU)")
    p.add_argument("--quantize", choices=["nf4"], help="load the base in 4-bit NF4 (as QLoRA trains it)")
    p.add_argument("--system", metavar="TEXT", help="system prompt for chats without one")


def add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """The sampling flags of :class:`pyft.generate.SamplingSettings`."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")


def sampling_settings(args: argparse.Namespace):
    """The :class:`~pyft.generate.SamplingSettings` of parsed flags."""
    from pyft.generate import SamplingSettings

    return SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                            seed=args.seed, stop=tuple(args.stop))


def add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate completions for prompts (text, chat messages or a JSONL file)",
                       description="Generate with a base model, base + adapter, merged directory or NF4 base. "
                                   "Prompts render with the model's chat template as one user turn (--raw: "
                                   "continue the text as is). JSONL input: one object per line with `prompt` "
                                   "or `messages`; output adds completion, token counts and finish_reason.")
    add_model_arguments(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    src.add_argument("--input", metavar="FILE.jsonl", help="prompts, one JSON object per line")
    g.add_argument("--output", metavar="FILE.jsonl", help="where --input's completions go (default: stdout)")
    g.add_argument("--raw", action="store_true", help="continue prompts as plain text, without the chat template")
    g.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch (8)")
    g.add_argument("--overwrite", action="store_true", help="replace --output")
    add_sampling_arguments(g)


def add_chat_parser(sub) -> None:
    c = sub.add_parser("chat", help="chat with a model in the terminal (streams the reply)",
                       description="Interactive multi-turn chat through the model's chat template. Commands: "
                                   "/reset, /system TEXT, /exit.")
    add_model_arguments(c)
    add_sampling_arguments(c, max_new_tokens=512)


def run_generate(args: argparse.Namespace) -> int:
    import json

    from pyft.generate import Generator
    from pyft.generate.jsonl import generate_jsonl
    from pyft.generate.prompts import Prompt

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    settings = sampling_settings(args)
    generator = Generator(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                          quantize=args.quantize)
    if args.input:
        if not args.output:
            raise ConfigError("--input needs --output FILE.jsonl")
        totals = generate_jsonl(generator, args.input, args.output, settings, batch_size=args.batch_size,
                                system=args.system, raw=args.raw, overwrite=args.overwrite)
        print(f"{totals.prompts} prompts, {totals.tokens} tokens in {totals.seconds:.1f} s "
              f"({totals.tokens_per_second:.1f} tokens/s) -> {args.output}", file=sys.stderr)
        return 0
    raw = args.raw or generator.template is None
    prompts = [Prompt(text=t) if raw else Prompt(messages=[{"role": "user", "content": t}]) for t in args.prompt]
    for c in generator.complete(prompts, settings, batch_size=args.batch_size, system=args.system):
        print(c.text if len(prompts) == 1 else json.dumps({"completion": c.text, "finish_reason": c.finish_reason},
                                                           ensure_ascii=False))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from pyft.generate import Generator
    from pyft.generate.chat import chat_loop

    settings = sampling_settings(args)
    generator = Generator(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                          quantize=args.quantize)
    chat_loop(generator, settings, system=args.system)
    return 0
