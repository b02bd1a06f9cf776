#!/usr/bin/env python
"""Loading memory: ``pyft.load_model(quantize="nf4")`` against a bf16 load and transformers + bitsandbytes.

Writes a random bf16 Llama of a few hundred MB (hidden 1024, 16 layers, intermediate 2816, vocab
32000, untied output layer; ``tools/bench_merge.py``'s writer, no model built in memory) and loads it
three ways, each in its own process that first warms every code path on a small model, then resets
its peak RSS (``/proc/self/clear_refs``), loads the model and runs one forward pass; the figure is the
peak RSS increase over that point (the memory the load and the loaded model take):

- ``pyft.load_model(dir, dtype="bf16")`` (transformers' ``from_pretrained``);
- ``pyft.load_model(dir, quantize="nf4")`` (NF4 + double quant, quantized while streaming the files);
- ``AutoModelForCausalLM.from_pretrained(dir, quantization_config=BitsAndBytesConfig(nf4, double quant))``.

Target (issue 5): the NF4 load takes at most 45 % of the bf16 load. Ends with one JSON line.
Usage: ``python tools/bench_load.py [--layers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_merge  # noqa: E402  (the model writer)

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000)
# Every child first loads a small 1-layer model (hidden 256, vocab 1024) all three ways and runs it, so code
# pages and allocator pools are warm in each: the baseline child stops there, the others then load
# the real model and run one forward pass (which touches every weight: a memory-mapped bf16 load
# is otherwise only partly resident).
LOADERS = {
    "bf16": "lambda d: pyft.load_model(d, dtype='bf16')",
    "nf4": "lambda d: pyft.load_model(d, quantize='nf4')",
    "bnb": ("lambda d: transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, "
            "quantization_config=transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', "
            "bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))"),
}
WARM = ("import sys, torch, transformers, pyft\n"
        "ids = torch.tensor([[1, 5, 9, 20, 33, 47, 2, 8]])\n"
        "loaders = {" + ", ".join(f"{k!r}: {v}" for k, v in LOADERS.items()) + "}\n"
        "for load in loaders.values():\n"
        "    with torch.no_grad():\n"
        "        load(sys.argv[2])(ids)\n")
MEASURE = ("import gc, json\n"
           "def status(key):\n"
           "    for line in open('/proc/self/status'):\n"
           "        if line.startswith(key + ':'):\n"
           "            return int(line.split()[1]) * 1024\n"
           "gc.collect()\n"
           "before = status('VmRSS')\n"
           "open('/proc/self/clear_refs', 'w').write('5')  # reset the peak (VmHWM) to the current RSS\n"
           "with torch.no_grad():\n"
           "    model = loaders[sys.argv[3]](sys.argv[1])\n"
           "    model(ids)\n"
           "print(json.dumps({'before': before, 'peak': status('VmHWM'), 'after': status('VmRSS')}))\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    ap.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:  # in a child, so this process's peak RSS (inherited by fork) stays small
        bench_merge.SHAPE.update(SHAPE)
        bench_merge.write_model(Path(args.generate) / "big", args.layers)
        bench_merge.SHAPE.update(hidden_size=256, intermediate_size=704, vocab_size=1024)
        bench_merge.write_model(Path(args.generate) / "small", 1)
        return 0
    from pyft import _core

    if _core.build_profile() != "release":
        print("refusing to benchmark a debug build", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-load-"))
    try:
        subprocess.run([sys.executable, __file__, "--generate", str(work), "--layers", str(args.layers)], check=True)
        size = (work / "big" / "model.safetensors").stat().st_size
        rows = {}
        for key, name in (("bf16", "pyft.load_model bf16"), ("nf4", "pyft.load_model quantize=nf4"),
                          ("bnb", "transformers + bitsandbytes nf4")):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", WARM + MEASURE, str(work / "big"), str(work / "small"), key],
                                 check=True, capture_output=True, text=True).stdout
            rows[name] = (time.perf_counter() - t0, json.loads(out.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"random bf16 Llama, {args.layers} layers, {size / 1e6:.0f} MB, {os.cpu_count()} cores")
    print(f"{'load + one forward pass':<36}{'peak RSS increase (MB)':>24}{'resident after (MB)':>21}")
    for name, (_, m) in rows.items():
        print(f"{name:<36}{(m['peak'] - m['before']) / 1e6:>24.0f}{(m['after'] - m['before']) / 1e6:>21.0f}")
    inc = {name: m["peak"] - m["before"] for name, (_, m) in rows.items()}
    nf4 = inc["pyft.load_model quantize=nf4"] / inc["pyft.load_model bf16"]
    bnb = inc["transformers + bitsandbytes nf4"] / inc["pyft.load_model bf16"]
    print(f"NF4 load: {nf4:.1%} of the bf16 load's peak memory (target <= 45 %); "
          f"transformers + bitsandbytes: {bnb:.1%}")
    print(json.dumps({"bench": "load", "bytes": size, "peak_increase": inc, "nf4_ratio": nf4, "bnb_ratio": bnb}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
