"""``pyft-merge BASE ADAPTER OUT`` (also ``pyft merge``): fold adapters into their base model.

Several adapters: ``pyft-merge BASE --adapter A --adapter B --weights 0.6,0.4 --method ties
--density 0.5 OUT``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyft.errors import ConfigError, PyftError

METHODS = ["linear", "ties", "dare_linear", "dare_ties", "svd"]

EPILOG = """\
methods (on each module's float32 delta weights dW_i = s_i * B_i @ A_i; a module that an adapter
does not adapt counts as a zero delta; semantics of peft.utils.merge_utils):
  linear       sum_i w_i dW_i  (one adapter, weight 1: the plain merge, same as PEFT merge_and_unload)
  ties         keep the --density fraction of each dW_i with the largest |value|, elect each element's
               sign from the sum of the pruned deltas, average the weighted values with that sign
  dare_linear  drop elements at random (kept with probability --density, rescaled by 1/density;
               reproducible with --seed), then linear
  dare_ties    the same random drop, then the ties sign election and mean
  svd          sum_i w_i dW_i truncated to rank --svd-rank (default: the largest adapter rank) by SVD,
               as PEFT add_weighted_adapter(combination_type="svd")
weights: one per adapter, default 1.0 each (as PEFT add_weighted_adapter). DoRA adapters merge only alone.

adapter kinds (adapter_config.json peft_type), each merged in float32 and rounded once, as PEFT merge_and_unload:
  LORA  LoRA, rsLoRA, DoRA: W + s * B @ A (combinable by the methods above)
  IA3   (IA)^3: W times ia3_l, per input column for feedforward_modules, else per output row (and bias)
  OFT   W @ R^T, R block-diagonal orthogonal (Cayley transform, exact or Cayley-Neumann; coft, block_share)
  IA3 and OFT adapters merge alone (one adapter, weight 1, method linear).
  PROMPT_TUNING, P_TUNING, PREFIX_TUNING (P-tuning v2) and bottleneck adapters add tokens or activations, not
  weights: they cannot be merged (serve the base with the adapter in transformers/PEFT).

a 4-bit NF4 base (bitsandbytes, e.g. the base of a QLoRA run) is dequantized exactly as bitsandbytes
does and merged in 16-bit; the output is a 16-bit model (never re-quantized to 4 bits). Without an
adapter, `pyft-merge NF4_BASE OUT` only dequantizes.

examples:
  pyft-merge ./base ./adapter ./merged --dtype bf16
  pyft-merge Qwen/Qwen2.5-0.5B-Instruct ./adapter ./merged   (Hub id: fetched into the HF cache, safetensors only)
  pyft-merge ./base-nf4 ./qlora-adapter ./merged        (16-bit output, dtype from the quant state)
  pyft-merge ./base --adapter ./a --adapter ./b --weights 0.6,0.4 --method ties --density 0.5 ./merged
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The merge options (shared by ``pyft merge`` and ``pyft-merge``)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("base", metavar="BASE",
                   help="base model directory (config.json + safetensors) or Hub id owner/name[@revision]")
    p.add_argument("paths", nargs="+", metavar="[ADAPTER] OUT",
                   help="a PEFT adapter directory (LoRA, IA3, OFT) or Hub id (or use --adapter), then the output model "
                        "directory")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR|ID",
                   help="an adapter to merge (repeat for several; after a positional ADAPTER if both are given)")
    p.add_argument("--weights", metavar="W1,W2,...", help="one weight per adapter, comma-separated (default 1.0 each)")
    p.add_argument("--method", choices=METHODS, default="linear", help="how several adapters combine (linear)")
    p.add_argument("--density", type=float, metavar="P",
                   help="fraction kept by ties/dare_*, in (0, 1] (required by them)")
    p.add_argument("--svd-rank", type=int, metavar="N", help="output rank of svd (default: the largest adapter rank)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dare_* random drops (0)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="output dtype (auto: keep the base's)")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest shard file (5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def parse_weights(text: str) -> list[float]:
    """The adapter weights of ``--weights W1,W2,...``.

    Raises:
        ConfigError: a weight is not a number.
    """
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights: cannot read {text!r} (example: 0.6,0.4)") from None


def _resolve(args: argparse.Namespace) -> tuple[str, list[str], str, list[float] | None]:
    """Base, adapters, output directory and weights from the positional and ``--adapter`` forms
    (Hub ids of base and adapters fetched into the Hub cache, see :mod:`pyft.hub`)."""
    from pyft.hub import resolve_model
    from pyft.io import is_quantized

    if len(args.paths) > 2:
        raise ConfigError(f"expected BASE [ADAPTER] OUT, got {len(args.paths) + 1} paths (use --adapter for several)")
    base = str(resolve_model(args.base))
    adapters = [str(resolve_model(a, kind="adapter")) for a in args.paths[:-1] + args.adapter]
    if not adapters and not is_quantized(base):
        raise ConfigError("no adapter given: pass BASE ADAPTER OUT or --adapter DIR "
                          "(BASE OUT alone only dequantizes a 4-bit base)")
    weights = None if args.weights is None else parse_weights(args.weights)
    return base, adapters, args.paths[-1], weights


def run(args: argparse.Namespace) -> int:
    """Run a parsed merge command."""
    from pyft.io import merge, nf4_note

    base, adapters, out, weights = _resolve(args)
    report = merge(base, adapters, out, weights=weights, method=args.method, density=args.density,
                   seed=args.seed, svd_rank=args.svd_rank, dtype=args.dtype, max_shard_size=args.max_shard_size,
                   overwrite=args.overwrite)
    size = f"{report['tensors']} tensors, {report['total_bytes'] / 1e9:.2f} GB in {len(report['shards'])} shard(s)"
    if adapters:
        what = f"{len(adapters)} adapters ({args.method})" if len(adapters) > 1 else "the adapter"
        print(f"merged {report['merged_modules']} modules ({report['replaced']} replaced whole) of {what} into {out}: "
              f"{size}")
    else:
        print(f"wrote {out}: {size}")
    note = nf4_note(report)
    if note:
        print(f"note: {note}")
    print(f"serve it with: vllm serve {out}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "pyft-merge") -> int:
    """``pyft-merge`` (and ``pyft merge``, which delegates here)."""
    parser = argparse.ArgumentParser(prog=prog, description="Merge adapters (LoRA, IA3, OFT) into their base model.")
    add_arguments(parser)
    # Intermixed: `BASE --adapter A --adapter B OUT` puts OUT after options, which plain parse_args
    # cannot give to a positional that already took its first value.
    args = parser.parse_intermixed_args(argv)
    try:
        return run(args)
    except (PyftError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
