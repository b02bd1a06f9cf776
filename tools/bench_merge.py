#!/usr/bin/env python
"""Merge benchmark: ``pyft-merge`` against PEFT ``merge_and_unload`` + ``save_pretrained``.

Writes a random bf16 Llama of about 0.76B parameters (hidden 2048, 16 layers, intermediate
5632, 8 KV heads, vocab 32000) and an r=16 all-linear adapter straight to safetensors (no model is
built in memory), then runs each merge in its own process and reports wall time and that
process's peak RSS, with a plain ``cp -r`` of the model as the floor. pyft runs twice: first
right after the model was written (its pages partly still being written back), then again with
the file in the page cache. The ratios use the first run. Ends with one JSON line.
Usage: ``python tools/bench_merge.py [--layers N]``.
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
from typing import Any

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000)


def _bf16(rng: Any, shape: tuple[int, ...]) -> Any:
    """Random bf16 values (as uint16 bit patterns) of scale 0.02."""
    import numpy as np

    x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
    return ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)


def write_model(d: Path, layers: int) -> None:
    """config.json + model.safetensors (bf16) without building the model in memory."""
    import numpy as np

    from transformers import LlamaConfig

    cfg = {**SHAPE, "num_hidden_layers": layers}
    LlamaConfig(**cfg, tie_word_embeddings=False, torch_dtype="bfloat16").save_pretrained(d)
    rng = np.random.default_rng(0)
    h, i, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // 32 * cfg["num_key_value_heads"]
    tensors = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "lm_head.weight": (cfg["vocab_size"], h),
               "model.norm.weight": (h,)}
    for n in range(layers):
        p = f"model.layers.{n}."
        tensors |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                    p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                    p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                    p + "post_attention_layernorm.weight": (h,)}
    arrays = {k: _bf16(rng, shape) for k, shape in tensors.items()}
    write_bf16_safetensors(d / "model.safetensors", arrays)


def write_bf16_safetensors(path: Path, arrays: dict[str, Any]) -> None:
    """A safetensors file of bf16 tensors given as uint16 bit patterns (numpy has no bf16)."""
    import numpy as np

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, a in arrays.items():
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).tobytes())


def write_adapter(model_dir: Path, d: Path, r: int = 16) -> None:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        base = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    out = {}
    for name, shape in base.items():
        if ".layers." in name and name.endswith("proj.weight"):
            m = "base_model.model." + name.removesuffix(".weight")
            out[m + ".lora_A.weight"] = rng.standard_normal((r, shape[1]), dtype=np.float32) * 0.01
            out[m + ".lora_B.weight"] = rng.standard_normal((shape[0], r), dtype=np.float32) * 0.01
    d.mkdir(parents=True)
    save_file(out, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "bias": "none", "use_rslora": False, "use_dora": False, "base_model_name_or_path": str(model_dir)}))


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


PEFT_MERGE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload().save_pretrained(sys.argv[3])
"""
PYFT_MERGE = "import sys; from pyft.io import merge; merge(sys.argv[1], sys.argv[2], sys.argv[3])"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    ap.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:  # in a child process, so this process's peak RSS stays small
        write_model(Path(args.generate) / "base", args.layers)
        write_adapter(Path(args.generate) / "base", Path(args.generate) / "adapter")
        return 0
    from pyft import _core

    if _core.build_profile() != "release":
        print("refusing to benchmark a debug build", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-merge-"))
    try:
        # Children inherit the parent's peak RSS through fork, so the model is generated in a child
        # and this process stays small: each timed child's peak RSS is then its own.
        subprocess.run([sys.executable, __file__, "--generate", str(work), "--layers", str(args.layers)], check=True)
        size = (work / "base" / "model.safetensors").stat().st_size
        pyft = [sys.executable, "-c", PYFT_MERGE, str(work / "base"), str(work / "adapter")]
        rows = [
            ("cp -r (floor)", *timed(["cp", "-r", str(work / "base"), str(work / "copy")])),
            ("pyft-merge", *timed(pyft + [str(work / "pyft")])),
            ("PEFT merge_and_unload + save_pretrained", *timed([sys.executable, "-c", PEFT_MERGE, str(work / "base"),
                                                               str(work / "adapter"), str(work / "peft")])),
            ("pyft-merge (again, warm page cache)", *timed(pyft + [str(work / "pyft-warm")])),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"random bf16 Llama, {args.layers} layers, {size / 1e9:.2f} GB, r=16 all-linear adapter, {os.cpu_count()} cores")
    print(f"{'path':<42}{'seconds':>9}{'peak RSS (GB)':>15}")
    for name, s, rss in rows:
        print(f"{name:<42}{s:>9.2f}{rss / 1e9:>15.2f}")
    speed = rows[2][1] / rows[1][1]
    mem = rows[1][2] / rows[2][2]
    print(f"pyft vs PEFT: {speed:.1f}x faster, {mem:.1%} of its peak RSS")
    print(json.dumps({"bench": "merge", "bytes": size, "pyft_s": rows[1][1], "pyft_rss": rows[1][2],
                      "pyft_warm_s": rows[3][1], "peft_s": rows[2][1], "peft_rss": rows[2][2], "cp_s": rows[0][1],
                      "speedup": speed,
                      "rss_ratio": mem}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
