"""``pyft demo``: the end-to-end demo on the embedded tiny model and the bundled data.

So far: builds the tiny base model (a locally trained ChatML byte-level BPE tokenizer and a
random-init Llama-shape model), prepares the bundled demo conversations into packed token shards
with a validation split, and prints the statistics and one example with its trainable tokens
highlighted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def run_demo(out: str | os.PathLike[str] = "pyft-demo") -> Path:
    """Run the demo into ``out`` (replacing what an earlier demo left there).

    Writes ``out/base/`` (tiny model + tokenizer, an HF directory) and ``out/data/`` (prepared
    shards). Returns ``out``.
    """
    from pyft.data import inspect, prepare
    from pyft.data.demo import demo_path
    from pyft.testing import make_tiny_model, make_tokenizer

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[demo] building the tiny base model in {out_dir / 'base'}")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tok_dir = make_tokenizer(Path(tmp) / "tokenizer", style="chatml")
        staged = make_tiny_model(Path(tmp) / "base", tok_dir, arch="llama")
        if (out_dir / "base").exists():
            shutil.rmtree(out_dir / "base")
        os.replace(staged, out_dir / "base")
    print(f"[demo] preparing the bundled data ({demo_path().name}) into {out_dir / 'data'}")
    info = prepare(
        demo_path(), out_dir / "base", out_dir / "data",
        max_len=512, pack="bfd", val_ratio=0.1, seed=0, dedup=True, overwrite=True, progress=False,
    )
    print()
    print(inspect(info.out_dir, index=0, color=None))
    print(f"\n[demo] done in {time.perf_counter() - t0:.1f}s. Outputs:")
    print(f"  {out_dir / 'base'}   tiny base model + tokenizer (transformers directory)")
    print(f"  {out_dir / 'data'}   prepared token shards (load with pyft.data.load)")
    return out_dir
