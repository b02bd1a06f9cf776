"""``pyft-export MODEL_OR_ADAPTER --to gguf|gguf-lora|ollama|vllm --out PATH`` (also ``pyft export``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyft.errors import PyftError

_EPILOG = """\
targets:
  gguf       one .gguf model file (--adapter: merged on the fly)           --out FILE.gguf
  gguf-lora  a GGUF LoRA adapter for llama.cpp --lora / Ollama ADAPTER    --out FILE.gguf
  ollama     model.gguf (+ adapter.gguf) + Modelfile, and `ollama create`  --out DIR
  vllm       the adapter checked for vLLM, or a merged model (--merge)     --out DIR

adapters: LoRA (also as gguf-lora / vLLM adapters), or IA3 and OFT, which merge (gguf, ollama --merge,
vllm --merge; llama.cpp and vLLM load LoRA adapters only). Prompt tuning, P-tuning, prefix tuning and
bottleneck adapters add tokens or activations: no target takes them (serve base + adapter with
transformers/PEFT).

a 4-bit NF4 base (bitsandbytes) is dequantized exactly as bitsandbytes does and written as --qtype
(or 16-bit for vllm --merge), never re-quantized to NF4.

examples:
  pyft-export ./merged --to gguf --qtype q4_k_m --out model-q4_k_m.gguf
  pyft-export ./base --adapter ./run/adapter --to gguf --qtype q8_0 --out tuned.gguf
  pyft-export ./run/adapter --to gguf-lora --base ./base --out adapter.gguf
  pyft-export ./base --adapter ./run/adapter --to ollama --out ./ollama
  pyft-export ./run/adapter --to vllm --out ./vllm-adapter            (or --merge for a merged model)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The export options (shared by ``pyft export`` and ``pyft-export``)."""
    p.add_argument("model", metavar="MODEL_OR_ADAPTER",
                   help="HF model directory, or a PEFT adapter directory (its base: --base or base_model_name_or_path); "
                        "either may be a Hub id owner/name[@revision]")
    p.add_argument("--to", required=True, choices=["gguf", "gguf-lora", "ollama", "vllm"], help="target")
    p.add_argument("--out", required=True, metavar="PATH", help="output file (gguf, gguf-lora) or directory")
    p.add_argument("--qtype", default=None, metavar="TYPE",
                   help="GGUF type: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k (gguf: f16; ollama: q8_0)")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="PEFT adapter to apply (repeatable; several are combined, see --method)")
    p.add_argument("--base", metavar="DIR", help="base model of an adapter given as MODEL_OR_ADAPTER")
    p.add_argument("--merge", action="store_true",
                   help="ollama/vllm: merge the adapter into the weights instead of serving it as an adapter")
    p.add_argument("--weights", metavar="W1,W2", help="adapter weights for multi-adapter merges")
    p.add_argument("--method", default="linear", choices=["linear", "ties", "dare_linear", "dare_ties", "svd"],
                   help="how several adapters combine (linear)")
    p.add_argument("--density", type=float, metavar="D", help="ties/dare: fraction of each delta kept")
    p.add_argument("--seed", type=int, default=0, help="dare: seed of the random drop (0)")
    p.add_argument("--svd-rank", type=int, metavar="R", help="svd: rank of the combined delta")
    p.add_argument("--lora-dtype", default="f32", choices=["f32", "f16", "bf16"], help="GGUF LoRA tensor type (f32)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="vllm --merge: output dtype (auto: keep the base's)")
    p.add_argument("--name", metavar="NAME", help="model name (GGUF general.name, Ollama model, vLLM served name)")
    p.add_argument("--pre", metavar="NAME", help="force the GGUF pre-tokenizer (tokenizer.ggml.pre), e.g. llama-bpe")
    p.add_argument("--system", metavar="TEXT", help="ollama: SYSTEM prompt (default: the training data's, if any)")
    p.add_argument("--num-ctx", type=int, metavar="N", help="ollama: PARAMETER num_ctx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    """Run a parsed export command."""
    from pyft.cli.merge import parse_weights
    from pyft.export import targets
    from pyft.hub import resolve_model

    # Hub ids (owner/name[@revision]) are fetched into the HF cache; a local path wins (pyft.hub).
    model, adapters = resolve_model(args.model, kind="auto"), [resolve_model(a, kind="adapter") for a in args.adapter]
    if targets.is_adapter_dir(model):
        adapters.insert(0, model)
        model = targets.adapter_base(model, args.base)
    merge_options = {"method": args.method, "density": args.density, "seed": args.seed, "svd_rank": args.svd_rank}
    if args.weights:
        merge_options["weights"] = parse_weights(args.weights)
    if args.to == "gguf":
        result = targets.to_gguf(model, args.out, qtype=args.qtype or "f16", adapters=adapters, name=args.name,
                                 pre=args.pre, overwrite=args.overwrite, **merge_options)
    elif args.to == "gguf-lora":
        if len(adapters) != 1:
            raise PyftError("--to gguf-lora converts one adapter: pass it as MODEL_OR_ADAPTER or with --adapter")
        result = targets.to_gguf_lora(adapters[0], args.out, base=model, dtype=args.lora_dtype,
                                      overwrite=args.overwrite)
    elif args.to == "ollama":
        result = targets.to_ollama(model, args.out, qtype=args.qtype or "q8_0", adapters=adapters, merge=args.merge,
                                   model_name=args.name, system=args.system, num_ctx=args.num_ctx,
                                   lora_dtype=args.lora_dtype, overwrite=args.overwrite, **merge_options)
    else:
        result = targets.to_vllm(model, args.out, adapters=adapters, merge=args.merge, served_name=args.name,
                                 dtype=args.dtype, overwrite=args.overwrite, **merge_options)
    for r in result.reports:
        types = ", ".join(f"{n} {t}" for t, n in sorted(r.types.items()))
        print(f"wrote {r.path} ({r.bytes / 1e6:.1f} MB, {r.tensors} tensors: {types})")
    for f in result.files:
        if not any(f == r.path for r in result.reports):
            print(f"wrote {f}")
    for n in result.notes:
        print(f"note: {n}")
    if result.commands:
        print("serve it with:")
        for c in result.commands:
            print("  " + c.replace("\n", "\n  "))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyft-export", description="Export a model or adapter for serving.",
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (PyftError, OSError) as e:
        print(f"pyft-export: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
