#!/usr/bin/env python
"""Data preparation benchmark: pyft against the path users take today.

Generates a deterministic multi-turn chat corpus (default 20,000 conversations) and takes a
tokenizer: by default a ChatML byte-level BPE trained by pyft.testing; ``--tokenizer DIR`` any HF
tokenizer directory with a chat template; ``--real VOCAB[:TEMPLATE]`` a real one rebuilt offline from
llama.cpp's ``ggml-vocab-VOCAB.gguf`` (``tests/real_vocab.py``; needs ``tools/fetch_llama_cpp_src.py``)
with a real chat template (``llama-bpe`` = Llama 3 with the Llama 3.1 template, ``qwen2`` = Qwen2 with
Qwen2.5's, ``phi-3`` = Phi-3 with Phi-3.5's; ``llama-spm:mistral`` = Llama 2's vocabulary with pyft's
``[INST]`` template). Then it times, in one run:

- pyft: ``pyft.data.prepare`` end to end (read JSONL, validate, render, tokenize, mask, BFD-pack,
  write shards);
- HF: ``AutoTokenizer.from_pretrained`` + ``datasets`` ``load_dataset("json")`` + ``.map(apply_chat_template(...,
  return_assistant_tokens_mask=True))`` + TRL ``pack_dataset(strategy="bfd")``;
- raw ``tokenizers`` ``encode_batch`` over the already-rendered texts (tokenization alone).

It checks that pyft's ids and masks equal the HF path's for every conversation, prints a table
(with pyft's tokenizer backend, and why it fell back if it did) and ends with one JSON line.

Real templates have no ``{% generation %}`` markers, which transformers needs for assistant masks:
pyft prepares with the template as published (it finds the assistant turns itself) and the HF path
renders a copy with markers (``tests/marked_templates.py``, same text). For a ``--tokenizer DIR``
whose template has no markers, give HF a marked copy with ``--hf-template FILE``; otherwise only the
ids are compared.

Usage: ``python tools/bench_data.py [--conversations N] [--max-len N] [--real llama-bpe | --tokenizer DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The chat template `--real VOCAB` uses when none is named (files of llama.cpp's models/templates).
REAL_TEMPLATES = {
    "llama-bpe": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "qwen2": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "phi-3": "microsoft-Phi-3.5-mini-instruct.jinja",
}
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this from have or by one had not "
    "but what all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first been its who "
    "now people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look think "
    "also around another came come work three word must because does part even place well such here take why help "
    "put different away again off went old number great tell men say small every found still between name should "
    "home big give air line set own under read last never us left end along while might next sound below saw "
    "something thought both few those always show large often together asked house world going want school important "
    "until form food keep children feet land side without boy once animal life enough took four head above kind "
    "began almost live page got earth need far hand high year mother light country father let night picture being "
    "study second soon story since white ever paper hard near sentence better best across during today however "
    "sure knew try told young sun thing whole hear example heard several change answer room sea against top turned "
    "learn point city play toward five himself usually money seen car morning body upon family later turn move "
    "café naïve Zürich Brasília façade résumé Ångström"
).split()
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
           "Réponds toujours en français, s'il te plaît.", "You are a careful math tutor who shows the steps."]


def make_corpus(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` multi-turn conversations in the messages format.

    Half of the sentences are drawn from a small English word list, half are lines of the bundled
    tokenizer corpus (varied prose, code, numbers, many scripts and emoji), so the word cache of a
    tokenizer does not see only a few hundred distinct words.
    """
    from pyft.testing import CORPUS_PATH

    rng = random.Random(seed)
    lines = [ln.strip() for ln in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if len(ln.strip()) > 20]

    def sentence(lo: int, hi: int) -> str:
        if rng.random() < 0.5:
            return rng.choice(lines)
        words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        s = " ".join(words)
        return s[0].upper() + s[1:] + rng.choice([".", "?", "!", "."])

    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            msgs = []
            if rng.random() < 0.3:
                msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
            for _ in range(rng.randint(1, 4)):
                msgs.append({"role": "user", "content": " ".join(sentence(4, 18) for _ in range(rng.randint(1, 3)))})
                paras = ["  ".join(sentence(6, 25) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
                msgs.append({"role": "assistant", "content": "\n\n".join(paras)})
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def real_tokenizer(spec: str) -> tuple[Path, str, str | None]:
    """``--real VOCAB[:TEMPLATE]``: ``(tokenizer dir, pyft's template option, HF's template source)``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from marked_templates import MARKINGS, with_generation_markers
    from real_vocab import real_tokenizer_dir

    from pyft.testing import TEMPLATES

    vocab, _, template = spec.partition(":")
    template = template or REAL_TEMPLATES.get(vocab, "")
    if not template:
        raise SystemExit(f"--real {vocab}: name a template, e.g. --real {vocab}:chatml "
                         "(a pyft built-in or a file of .cache/llama.cpp/models/templates)")
    if template.endswith(".jinja"):
        hf_template = with_generation_markers(template) if template in MARKINGS else None
        return real_tokenizer_dir(vocab, template), "tokenizer", hf_template
    return real_tokenizer_dir(vocab), template, TEMPLATES[template]


def time_pyft(corpus: Path, tok_dir: Path, out: Path, max_len: int, pack: bool,
              template: str = "tokenizer") -> tuple[float, dict]:
    import pyft.data

    t0 = time.perf_counter()
    info = pyft.data.prepare(corpus, tok_dir, out, template=template, max_len=max_len,
                             pack="bfd" if pack else "none", overlong="truncate", overwrite=True, progress=False)
    return time.perf_counter() - t0, info.meta


def time_hf(corpus: Path, tok_dir: Path, max_len: int, num_proc: int | None, chat_template: str | None = None):
    import datasets
    from transformers import AutoTokenizer
    from trl import pack_dataset

    datasets.disable_caching()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    def encode(example):
        out = tok.apply_chat_template(example["messages"], tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True, chat_template=chat_template)
        return {"input_ids": out["input_ids"][:max_len], "assistant_masks": out["assistant_masks"][:max_len]}

    # Loading the tokenizer is timed on both sides (pyft's prepare loads it too).
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ds = datasets.load_dataset("json", data_files=str(corpus), split="train", keep_in_memory=True)
    ds = ds.map(encode, remove_columns=["messages"], num_proc=num_proc)
    mapped = ds
    packed = pack_dataset(ds, seq_length=max_len, strategy="bfd")
    seconds = time.perf_counter() - t0
    return seconds, mapped, packed


def time_encode_batch(tok_dir: Path, corpus: Path, chat_template: str | None = None) -> tuple[float, int]:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok_dir)
    convs = [json.loads(line)["messages"] for line in open(corpus, encoding="utf-8")]
    texts = hf.apply_chat_template(convs, tokenize=False, chat_template=chat_template)
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    t0 = time.perf_counter()
    enc = raw.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - t0
    return seconds, sum(len(e.ids) for e in enc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=20_000)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--vocab-size", type=int, default=4096, help="of the trained ChatML tokenizer (the default)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--tokenizer", type=Path, metavar="DIR", help="an HF tokenizer directory with a chat template")
    src.add_argument("--real", metavar="VOCAB[:TEMPLATE]",
                     help="a real tokenizer from llama.cpp's ggml-vocab-VOCAB.gguf: llama-bpe, qwen2, phi-3 "
                          "(with their models' templates) or e.g. llama-spm:mistral")
    ap.add_argument("--hf-template", type=Path, metavar="FILE",
                    help="the template the HF path renders (default: the tokenizer's; with --real, a copy of it "
                         "with {%% generation %%} markers)")
    ap.add_argument("--hf-num-proc", type=int, default=0, help="also time HF with datasets num_proc=N (0: skip)")
    args = ap.parse_args()

    from pyft import _core
    from pyft.testing import make_tokenizer

    if _core.build_profile() != "release":
        print("refusing to benchmark a debug build: run tools/dev.sh or tools/test first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-data-"))
    corpus = work / "chats.jsonl"
    make_corpus(corpus, args.conversations)
    template, hf_template = "tokenizer", None
    if args.real:
        tok_dir, template, hf_template = real_tokenizer(args.real)
        label = f"real {args.real} ({tok_dir.name})"
    elif args.tokenizer:
        tok_dir, label = args.tokenizer, str(args.tokenizer)
    else:
        tok_dir = make_tokenizer(work / "tok", style="chatml", vocab_size=args.vocab_size)
        label = f"ChatML byte-level BPE, vocab {args.vocab_size}"
    if args.hf_template:
        hf_template = args.hf_template.read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    hf_source = hf_template or AutoTokenizer.from_pretrained(tok_dir).chat_template or ""
    compare_masks = bool(_GENERATION.search(hf_source))
    print(f"corpus: {args.conversations:,} conversations ({corpus.stat().st_size / 1e6:.1f} MB), "
          f"tokenizer: {label}, max_len {args.max_len}, {os.cpu_count()} cores")

    # One untimed run warms the page cache and lazy imports; then the timed runs.
    time_pyft(corpus, tok_dir, work / "warm", args.max_len, True, template)
    pyft_s, meta = time_pyft(corpus, tok_dir, work / "pyft-packed", args.max_len, True, template)
    _, meta_plain = time_pyft(corpus, tok_dir, work / "pyft-plain", args.max_len, False, template)
    backend = meta["tokenizer"]["backend"]
    reason = meta["tokenizer"].get("fallback_reason")
    print(f"pyft backend: {backend}" + (f" (fast path off: {reason})" if reason else "")
          + f"; masks found by {', '.join(meta['counts'].get('mask_methods', {})) or '-'}")
    hf_s, mapped, packed = time_hf(corpus, tok_dir, args.max_len, None, hf_template)
    rows = []
    tokens = meta["tokens"]
    hf_tokens = sum(len(x) for x in mapped["input_ids"])

    # Identical ids and masks, conversation by conversation.
    import pyft.data

    ds = pyft.data.load(work / "pyft-plain")
    mismatches = 0
    for i in range(len(ds)):
        row = ds[i]
        ids, mask = mapped[i]["input_ids"], mapped[i]["assistant_masks"]
        labels = [t if m else -100 for t, m in zip(ids, mask)]
        labels[0] = -100
        if row["input_ids"].tolist() != ids or (compare_masks and row["labels"].tolist() != labels):
            mismatches += 1
    assert len(ds) == len(mapped) == args.conversations

    enc_s, enc_tokens = time_encode_batch(tok_dir, corpus, hf_template)
    rows.append(("pyft prepare (validate+template+tokenize+mask+BFD pack+write)", pyft_s, tokens))
    rows.append(("HF datasets.map(apply_chat_template+mask) + TRL pack_dataset(bfd)", hf_s, hf_tokens))
    if args.hf_num_proc:
        hf2_s, _, _ = time_hf(corpus, tok_dir, args.max_len, args.hf_num_proc, hf_template)
        rows.append((f"  same, datasets num_proc={args.hf_num_proc}", hf2_s, hf_tokens))
    rows.append(("raw tokenizers encode_batch (rendered text only)", enc_s, enc_tokens))
    print(f"\n{'path':<68}{'seconds':>9}{'tokens':>12}{'Mtok/s':>9}")
    for name, s, n in rows:
        print(f"{name:<68}{s:>9.2f}{n:>12,}{n / s / 1e6:>9.2f}")
    ratio_hf = (tokens / pyft_s) / (hf_tokens / hf_s)
    ratio_enc = (tokens / pyft_s) / (enc_tokens / enc_s)
    print(f"\npyft / HF path: {ratio_hf:.2f}x   pyft / raw encode_batch: {ratio_enc:.2f}x")
    what = "ids and masks" if compare_masks else "ids (masks not compared: HF's template has no generation markers)"
    print(f"identical {what}: {args.conversations - mismatches:,}/{args.conversations:,}   "
          f"packing efficiency: pyft {meta['splits']['train']['packing_efficiency']:.3f}, "
          f"TRL {sum(len(x) for x in packed['input_ids']) / (len(packed) * args.max_len):.3f}")
    print(json.dumps({
        "bench": "data", "tokenizer": label, "backend": backend, "fallback_reason": reason,
        "conversations": args.conversations, "tokens": tokens, "masks_compared": compare_masks,
        "pyft_tokens_per_s": tokens / pyft_s, "hf_tokens_per_s": hf_tokens / hf_s,
        "encode_batch_tokens_per_s": enc_tokens / enc_s, "ratio_vs_hf": ratio_hf, "ratio_vs_encode_batch": ratio_enc,
        "mismatches": mismatches,
    }))
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
