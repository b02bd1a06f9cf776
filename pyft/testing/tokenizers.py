"""Small byte-level BPE tokenizers trained in-process on the bundled corpus."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyft import _core

CORPUS_PATH = Path(__file__).with_name("corpus.txt")

#: Built-in chat templates by name (Jinja sources, with ``{% generation %}`` markers).
TEMPLATES: dict[str, str] = {name: _core.builtin_template(name) for name in _core.builtin_template_names()}

# The Llama-3 pre-tokenizer pattern (contractions, letters with one leading non-letter,
# digit groups of up to three, punctuation runs, newlines, whitespace).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TokenizerStyle:
    """Special tokens and pre-tokenization of one model family."""

    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    template: str
    llama3_split: bool
    add_bos: bool


TOKENIZER_STYLES: dict[str, TokenizerStyle] = {
    # Qwen2-like: GPT-2 byte-level regex, no BOS, ChatML turns, EOS = <|im_end|>.
    "chatml": TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|endoftext|>", None,
                             "chatml", False, False),
    # Llama-3-like: Llama-3 split regex, ignore_merges, BOS added by the post-processor.
    "llama3": TokenizerStyle(("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>", "<|finetune_right_pad_id|>"), "<|begin_of_text|>", "<|eot_id|>",
                             "<|finetune_right_pad_id|>", None, "llama3", True, True),
    # Alpaca on a Llama-2-like vocabulary of specials.
    "alpaca": TokenizerStyle(("<unk>", "<s>", "</s>", "<pad>"), "<s>", "</s>", "<pad>", "<unk>", "alpaca", False, True),
}


def make_tokenizer(
    out_dir: str | os.PathLike[str],
    style: str = "chatml",
    vocab_size: int = 4096,
    corpus: str | os.PathLike[str] | None = None,
) -> Path:
    """Train a byte-level BPE tokenizer and save it as an HF tokenizer directory.

    Args:
        out_dir: directory to write (``tokenizer.json``, ``tokenizer_config.json``, chat template).
        style: ``chatml``, ``llama3`` or ``alpaca`` (special tokens, template, pre-tokenizer).
        vocab_size: target vocabulary size including special tokens.
        corpus: training text (default: the bundled :data:`CORPUS_PATH`).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`. Deterministic for the same arguments.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in TOKENIZER_STYLES:
        raise ValueError(f"unknown tokenizer style {style!r} (expected one of {sorted(TOKENIZER_STYLES)})")
    s = TOKENIZER_STYLES[style]
    tok = Tokenizer(models.BPE(ignore_merges=s.llama3_split))
    if s.llama3_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(s.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus or CORPUS_PATH)], trainer)
    if s.add_bos and s.bos is not None:
        bos_id = tok.token_to_id(s.bos)
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{s.bos}:0 $A:0", pair=f"{s.bos}:0 $A:0 {s.bos}:1 $B:1", special_tokens=[(s.bos, bos_id)]
                ),
            ]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=s.bos, eos_token=s.eos, pad_token=s.pad, unk_token=s.unk,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TEMPLATES[s.template]
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out
