#!/usr/bin/env python
"""Tokenizer benchmark: pyft's fast path against HF ``tokenizers`` ``encode_batch``, on real vocabularies.

The vocabularies are rebuilt offline from llama.cpp's ``ggml-vocab-*.gguf`` (``tests/real_vocab.py``; needs
``tools/fetch_llama_cpp_src.py``): by default ``llama-spm`` (Llama 2, SentencePiece-style BPE with byte
fallback), ``phi-3`` (the same family with the older space normalizer) and ``llama-bpe`` (Llama 3, byte-level)
for reference. The texts are documents of 1-40 lines of the bundled corpus (``pyft.testing.CORPUS_PATH``:
multilingual prose, code, whitespace), repeated to ``--texts``. Both libraries encode the same list with
the same number of threads (``PYFT_NUM_THREADS`` and ``RAYON_NUM_THREADS``, one child process per thread
count); the best of ``--repeat`` runs counts. pyft's ids must equal HF's.

Prints a table and ends with one JSON line. Usage:
``python tools/bench_tokenize.py [--vocab llama-spm ...] [--texts 20000] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def texts(n: int) -> list[str]:
    from pyft.testing import CORPUS_PATH

    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    rng = random.Random(0)
    out = []
    for _ in range(n):
        start = rng.randrange(len(lines))
        out.append("\n".join(lines[start:start + rng.randint(1, 40)]))
    return out


def child(vocab: str, n: int, repeat: int) -> dict:
    """One measurement, in a process whose thread counts were fixed by the parent."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tokenizers
    from real_vocab import real_tokenizer_dir

    from pyft import _core

    path = str(real_tokenizer_dir(vocab) / "tokenizer.json")
    docs = texts(n)
    ours, ref = _core.Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(path)
    expected = [e.ids for e in ref.encode_batch(docs, add_special_tokens=True)]
    assert ours.encode_batch(docs, add_special_tokens=True) == expected, f"{vocab}: ids differ from HF"

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    # HF: ids only, as pyft returns them (reading .ids is part of using encode_batch).
    hf_s = best(lambda: [e.ids for e in ref.encode_batch(docs, add_special_tokens=True)])
    pyft_s = best(lambda: ours.encode_batch(docs, add_special_tokens=True))
    return {
        "vocab": vocab,
        "backend": ours.backend,
        "threads": int(os.environ["PYFT_NUM_THREADS"]),
        "texts": n,
        "mbytes": round(sum(len(d.encode()) for d in docs) / 1e6, 2),
        "tokens": sum(map(len, expected)),
        "pyft_s": round(pyft_s, 4),
        "hf_s": round(hf_s, 4),
        "speedup": round(hf_s / pyft_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", nargs="+", default=["llama-spm", "phi-3", "llama-bpe"])
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.vocab[0], args.texts, args.repeat)))
        return 0

    from pyft import _core

    if _core.build_profile() != "release":
        print(f"warning: pyft is a {_core.build_profile()} build; timings mean little", file=sys.stderr)
    rows = []
    for vocab in args.vocab:
        for threads in sorted(set(args.threads)):
            env = dict(os.environ, PYFT_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads),
                       RAYON_RS_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
            cmd = [sys.executable, __file__, "--child", "--vocab", vocab, "--texts", str(args.texts),
                   "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'vocab':<11} {'backend':<9} {'threads':>7} {'MB':>6} {'tokens':>9} {'pyft s':>8} {'hf s':>8} "
          f"{'speedup':>8}")
    for r in rows:
        print(f"{r['vocab']:<11} {r['backend']:<9} {r['threads']:>7} {r['mbytes']:>6} {r['tokens']:>9} "
              f"{r['pyft_s']:>8} {r['hf_s']:>8} {r['speedup']:>7}x")
    print(json.dumps({"bench": "tokenize", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
