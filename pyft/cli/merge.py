"""``pyft-merge BASE ADAPTER OUT`` (also ``pyft merge``): fold an adapter into its base model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyft.errors import PyftError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The merge options (shared by ``pyft merge`` and ``pyft-merge``)."""
    p.add_argument("base", metavar="BASE", help="base model directory (config.json + safetensors)")
    p.add_argument("adapter", metavar="ADAPTER", help="PEFT LoRA adapter directory")
    p.add_argument("out", metavar="OUT", help="output model directory")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="output dtype (auto: keep the base's)")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest shard file (5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> int:
    """Run a parsed merge command."""
    from pyft.io import merge

    report = merge(args.base, args.adapter, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                   overwrite=args.overwrite)
    print(f"merged {report['merged_modules']} modules ({report['replaced']} replaced whole) into {args.out}: "
          f"{report['tensors']} tensors, {report['total_bytes'] / 1e9:.2f} GB in {len(report['shards'])} shard(s)")
    print(f"serve it with: vllm serve {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyft-merge", description="Merge a LoRA adapter into its base model.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (PyftError, OSError) as e:
        print(f"pyft-merge: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
