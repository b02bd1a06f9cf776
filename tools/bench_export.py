#!/usr/bin/env python
"""GGUF export benchmark: ``pyft-export --to gguf`` against llama.cpp's ``convert_hf_to_gguf.py``.

Uses the model of ``tools/bench_merge.py`` (random bf16 Llama, hidden 2048, 16 layers,
intermediate 5632, 8 KV heads, about 0.76B parameters) plus a small byte-level BPE tokenizer,
and runs each export in its own process, reporting wall time and that process's peak RSS:
llama.cpp's converter (the pinned copy from the llama-cpp-python 0.3.36 sdist, see
``tools/fetch_llama_cpp_src.py``) and pyft for F16 and Q8_0, pyft for Q4_K_M, and for reference
llama.cpp's ``llama-quantize`` F16 → Q4_K_M (the usual two-step route). A plain ``cp`` of the
model is the floor. Each run starts after `sync`, and outputs are deleted once measured. Ends with
one JSON line. ``--moe`` uses a Mixtral shape instead (same attention, 8 experts of intermediate
1408 per layer, top-2: each GGUF ``ffn_*_exps`` tensor is stacked from 8 safetensors tensors).
``--gemma`` uses Gemma 2 2B's shape (hidden 2304, intermediate 9216, 8 heads of 256, 4 KV heads,
a tied 256000-token embedding, 8 layers unless ``--layers``) with a SentencePiece tokenizer, as
Gemma's converter path needs: every norm is rewritten as ``1 + w`` and the vocabulary is padded.
``--out-dir DIR`` writes the outputs there instead of beside the model (e.g. ``/dev/shm``, to take
the disk's write-back out of both tools' times; the model is still read from disk's page cache).
Usage: ``python tools/bench_export.py [--layers N] [--moe | --gemma] [--out-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_merge import SHAPE, _bf16, write_bf16_safetensors, write_model  # noqa: E402
from bench_merge import timed as _timed  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS of one child, after flushing earlier runs' dirty pages (so no run
    pays for the previous one's write-back)."""
    os.sync()
    return _timed(cmd)

CONVERTER = """
import sys
sys.path.insert(0, {tests!r})
from llamacpp import convert_hf_to_gguf
convert_hf_to_gguf(sys.argv[1], sys.argv[2], sys.argv[3], pre={pre!r})
"""
QUANTIZE = """
import sys
sys.path.insert(0, {tests!r})
from llamacpp import llama_quantize
llama_quantize(sys.argv[1], sys.argv[2], sys.argv[3], nthread=os.cpu_count())
"""
PYFT = "import sys; from pyft.export import export_gguf; export_gguf(sys.argv[1], sys.argv[2], qtype=sys.argv[3])"


#: The ``--moe`` model: Mixtral's layout at bench_merge's attention shape.
MOE = dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=1408)


def write_moe_model(d: Path, layers: int) -> None:
    """A random bf16 Mixtral (config.json + model.safetensors), written without building it."""
    import numpy as np
    from transformers import MixtralConfig

    cfg = {**SHAPE, **MOE, "num_hidden_layers": layers}
    MixtralConfig(**cfg, tie_word_embeddings=False, torch_dtype="bfloat16").save_pretrained(d)
    rng = np.random.default_rng(0)
    h, i, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // 32 * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "lm_head.weight": (cfg["vocab_size"], h),
              "model.norm.weight": (h,)}
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "block_sparse_moe.gate.weight": (cfg["num_local_experts"], h),
                   p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
        for e in range(cfg["num_local_experts"]):
            x = f"{p}block_sparse_moe.experts.{e}."
            shapes |= {x + "w1.weight": (i, h), x + "w2.weight": (h, i), x + "w3.weight": (i, h)}
    write_bf16_safetensors(d / "model.safetensors", {k: _bf16(rng, s) for k, s in shapes.items()})


#: The ``--gemma`` model: Gemma 2 2B's layer shape and vocabulary (layers from ``--layers``).
GEMMA = dict(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
             vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
             final_logit_softcapping=30.0, rms_norm_eps=1e-6)
GEMMA_LAYERS = 8


def write_gemma_model(d: Path, layers: int) -> None:
    """A random bf16 Gemma 2 (config.json + model.safetensors, tied embedding) and a SentencePiece
    tokenizer.model (Gemma's converter reads only that; it pads the vocabulary to 256000)."""
    import io

    import numpy as np
    import sentencepiece as spm
    from transformers import Gemma2Config

    from pyft.testing import CORPUS_PATH

    cfg = {**GEMMA, "num_hidden_layers": layers}
    Gemma2Config(**cfg, tie_word_embeddings=True, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2,
                 pad_token_id=0, architectures=["Gemma2ForCausalLM"]).save_pretrained(d)
    rng = np.random.default_rng(0)
    h, i, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes |= {p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                   p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                   p + "mlp.down_proj.weight": (h, i)}
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            shapes[f"{p}{norm}.weight"] = (h,)
    write_bf16_safetensors(d / "model.safetensors", {k: _bf16(rng, s) for k, s in shapes.items()})
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(input=str(CORPUS_PATH), model_writer=buf, vocab_size=480, byte_fallback=True,
                                   character_coverage=0.99, model_type="bpe", minloglevel=2, num_threads=1)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                        "add_bos_token": True, "add_eos_token": False}))


def generate(d: Path, layers: int, shape: str) -> None:
    """Model + tokenizer, in a child process (keeps the parent's peak RSS small)."""
    from pyft.testing import make_tokenizer

    if shape == "gemma":
        write_gemma_model(d, layers)
        return
    (write_moe_model if shape == "moe" else write_model)(d, layers)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["MixtralForCausalLM" if shape == "moe" else "LlamaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    make_tokenizer(d, style="llama3", vocab_size=SHAPE["vocab_size"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, help=f"decoder layers (default {SHAPE['num_hidden_layers']}, "
                                                 f"{GEMMA_LAYERS} with --gemma)")
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--moe", action="store_true", help="a Mixtral-shaped model (8 experts per layer)")
    kind.add_argument("--gemma", action="store_true", help="a Gemma 2 2B-shaped model (256000-token vocabulary)")
    ap.add_argument("--out-dir", metavar="DIR", help="where the outputs go (default: a temporary directory)")
    ap.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = "moe" if args.moe else "gemma" if args.gemma else "llama"
    if args.layers is None:
        args.layers = GEMMA_LAYERS if args.gemma else SHAPE["num_hidden_layers"]
    if args.generate:
        generate(Path(args.generate), args.layers, shape)
        return 0
    from pyft import _core

    if _core.build_profile() != "release":
        print("refusing to benchmark a debug build", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyft-bench-export-"))
    outputs = Path(tempfile.mkdtemp(prefix="pyft-bench-export-out-", dir=args.out_dir)) if args.out_dir else work
    tests = str(ROOT / "tests")
    py = sys.executable
    try:
        model = work / "model"
        subprocess.run([py, __file__, "--generate", str(model), "--layers", str(args.layers),
                        *([f"--{shape}"] if shape != "llama" else [])], check=True)
        size = (model / "model.safetensors").stat().st_size

        def out(name: str) -> str:
            return str(outputs / name)

        conv = CONVERTER.format(tests=tests, pre=None if shape == "gemma" else "llama-bpe")
        quantize = "import os\n" + QUANTIZE.format(tests=tests)

        def run(name: str, cmd: list[str], output: str, keep: bool = False) -> tuple[str, float, int]:
            seconds, rss = timed(cmd)
            if not keep:  # outputs pile up in the page cache otherwise, slowing every later run
                Path(output).unlink()
            return name, seconds, rss

        rows = [
            run("cp (floor)", ["cp", str(model / "model.safetensors"), out("copy")], out("copy")),
            run("llama.cpp convert_hf_to_gguf f16", [py, "-c", conv, str(model), out("ref-f16.gguf"), "f16"],
                out("ref-f16.gguf"), keep=True),
            run("pyft-export f16", [py, "-c", PYFT, str(model), out("pyft-f16.gguf"), "f16"], out("pyft-f16.gguf")),
            run("llama.cpp convert_hf_to_gguf q8_0", [py, "-c", conv, str(model), out("ref-q8.gguf"), "q8_0"],
                out("ref-q8.gguf")),
            run("pyft-export q8_0", [py, "-c", PYFT, str(model), out("pyft-q8.gguf"), "q8_0"], out("pyft-q8.gguf")),
            run("pyft-export q4_k_m", [py, "-c", PYFT, str(model), out("pyft-q4km.gguf"), "q4_k_m"],
                out("pyft-q4km.gguf")),
            run("llama.cpp llama-quantize f16 -> q4_k_m",
                [py, "-c", quantize, out("ref-f16.gguf"), out("ref-q4km.gguf"), "q4_k_m"], out("ref-q4km.gguf")),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(outputs, ignore_errors=True)
    title = {"moe": "Mixtral (8 experts)", "gemma": "Gemma 2 (2B shape)", "llama": "Llama"}[shape]
    print(f"random bf16 {title}, {args.layers} layers, {size / 1e9:.2f} GB safetensors, {os.cpu_count()} cores, "
          f"outputs in {args.out_dir or 'the temporary directory'}")
    print(f"{'path':<42}{'seconds':>9}{'peak RSS (MB)':>15}")
    for name, s, rss in rows:
        print(f"{name:<42}{s:>9.2f}{rss / 1e6:>15.0f}")
    r = {name: (s, rss) for name, s, rss in rows}
    f16 = r["llama.cpp convert_hf_to_gguf f16"][0] / r["pyft-export f16"][0]
    q8 = r["llama.cpp convert_hf_to_gguf q8_0"][0] / r["pyft-export q8_0"][0]
    print(f"pyft vs llama.cpp converter: f16 {f16:.1f}x, q8_0 {q8:.1f}x faster; "
          f"peak RSS {r['pyft-export f16'][1] / 1e6:.0f} / {r['pyft-export q8_0'][1] / 1e6:.0f} MB")
    print(json.dumps({"bench": "export" if shape == "llama" else f"export-{shape}", "bytes": size, "speedup_f16": f16, "speedup_q8_0": q8,
                      **{name: {"s": s, "rss": rss} for name, s, rss in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
