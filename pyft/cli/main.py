"""``pyft``: the command-line interface.

Subcommands so far: ``data prepare``, ``data inspect``, ``train``, ``estimate``, ``quantize``, ``merge``,
``export``, ``inspect``, ``demo``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyft
from pyft.errors import PyftError

if TYPE_CHECKING:
    from pyft.train.config import TrainConfig

_PREPARE_EPILOG = """\
formats (detected per record from its keys, so one file may mix chat formats):
  messages    {"messages": [{"role": "system|user|assistant|tool", "content": ...}, ...]}
  sharegpt    {"conversations": [{"from": "human|gpt|system", "value": ...}, ...], "system"?}
              (either list may hold either kind of turn: {role, content} or {from, value})
  alpaca      {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}
  text        {"text": ...}
  preference  {"prompt"?, "chosen", "rejected"}   (strings or message lists)
  kto         {"prompt", "completion", "label": true|false}
  classify    {"text" | "messages", "label": "class name" | class index}   (method: classify)

example:
  pyft data prepare chats.jsonl --tokenizer ./my-model --out ./prepared \\
      --max-len 2048 --pack bfd --val-ratio 0.05 --mix general.jsonl:0.1
  pyft data prepare qa.jsonl --tokenizer ./my-model --out ./qa --columns instruction=question,output=answer
  pyft data prepare tatsu-lab/alpaca --tokenizer Qwen/Qwen2.5-0.5B-Instruct --out ./alpaca
  pyft data prepare HuggingFaceH4/ultrachat_200k:train_sft[:2000] --tokenizer ./my-model --out ./chat

Hub ids take @REVISION (branch, tag or commit); HF_TOKEN, HF_HOME and HF_HUB_OFFLINE apply.
"""


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    # The defaults (and "default ..." in the help) come from the Rust core, as pyft.data.prepare's.
    from pyft.data.prepare import PREPARE_DEFAULTS as d

    p = sub.add_parser(
        "prepare",
        help="validate, template, tokenize, mask and pack data files into token shards",
        description="Prepare conversation files (JSONL, JSON array, Parquet) into token shards for training.",
        epilog=_PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="data files (.jsonl, .json, .parquet) or Hub datasets owner/name[@revision][:[subset/]split] "
                        "(split train by default; needs `pip install datasets`)")
    p.add_argument("--tokenizer", required=True, metavar="PATH|ID",
                   help="HF tokenizer directory (or model directory), tokenizer.json file, or Hub id owner/name[@rev]")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--format", choices=["alpaca", "sharegpt", "messages", "text", "preference", "kto", "classify"],
                   default=d["format"],
                   help="convert every record as this format (default: detect per record from its keys)")
    p.add_argument("--columns", action="append", default=[], metavar="PYFT=YOURS,...",
                   help="map your key names to pyft's before detection, e.g. instruction=question,output=answer or "
                        "messages=dialog,role=speaker,content=text,user=human,assistant=bot (record fields, message "
                        "keys role/content, role values user/assistant/system_tag/tool, as LLaMA-Factory's "
                        "columns and tags)")
    p.add_argument("--template", default=d["template"], metavar="NAME|FILE",
                   help="chat template: 'tokenizer' (the tokenizer's own), a built-in name "
                        "(chatml, llama3, alpaca, mistral, gemma, zephyr) or a Jinja file (default %(default)s)")
    p.add_argument("--train-on", choices=["assistant", "last", "all"], default=d["train_on"],
                   help="tokens with loss: every assistant turn + end-of-turn token, the last one, or all "
                        "(default %(default)s)")
    p.add_argument("--max-len", type=int, default=d["max_len"], metavar="N",
                   help="max tokens per sequence / packed row (default %(default)s)")
    p.add_argument("--overlong", choices=["truncate", "drop", "split"], default=d["overlong"],
                   help="policy for longer sequences (default %(default)s)")
    p.add_argument("--truncation", choices=["keep_end", "keep_start"], default=d["truncation"],
                   help="preference/KTO: which end of an overlong prompt to keep (keep_end: drop its first tokens; "
                        "keep_start: drop its last tokens; default %(default)s); completions keep their start")
    p.add_argument("--pack", choices=["bfd", "none"], default=d["pack"],
                   help="bfd: best-fit-decreasing packing into max-len rows (padding-free training; default "
                        "%(default)s)")
    p.add_argument("--on-error", choices=["fail", "skip"], default=d["on_error"],
                   help="fail (nothing written) or skip invalid records (counted, first ones reported); "
                        "default %(default)s")
    p.add_argument("--dedup", action="store_true", default=d["dedup"], help="drop exact duplicate records")
    p.add_argument("--val-ratio", type=float, default=d["val_ratio"], metavar="R",
                   help="share held out for validation (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed for the split and mixing (default %(default)s)")
    p.add_argument("--mix", action="append", default=[], metavar="FILE:RATIO",
                   help="mix general data into training; RATIO in (0,1) is its share of the training examples")
    p.add_argument("--system-prompt", metavar="TEXT", default=d["system_prompt"],
                   help="system message for conversations without one")
    p.add_argument("--shard-tokens", type=int, default=d["shard_tokens"], metavar="N",
                   help="tokens per shard file (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                   help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress line and no summary")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pyft.data import prepare

    info = prepare(
        args.inputs, args.tokenizer, args.out,
        mix=args.mix, format=args.format, columns=args.columns, template=args.template, train_on=args.train_on,
        max_len=args.max_len, overlong=args.overlong, truncation=args.truncation, pack=args.pack,
        on_error=args.on_error, dedup=args.dedup, val_ratio=args.val_ratio, seed=args.seed,
        system_prompt=args.system_prompt, shard_tokens=args.shard_tokens, overwrite=args.overwrite,
        progress=None if not args.quiet else False,
    )
    if not args.quiet:
        print(info.summary())
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pyft.data import inspect

    print(inspect(args.dir, index=args.index, split=args.split, color=None if not args.no_color else False))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from pyft.train import load_config, train

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path and not os.path.isfile(path):  # no config file, only overrides
        path, overrides = None, [path, *overrides]
    config = load_config(path, overrides, **({"overwrite": True} if args.overwrite else {}))
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.nproc is not None:
        return _launch_processes(args.nproc, config, [*([path] if path else []), *overrides,
                                                      *(["--overwrite"] if args.overwrite else [])])
    result = train(config)
    kept = f" (kept step {result.best_step}: the best evaluation)" if result.best_step not in (None, result.steps) else ""
    print(f"trained {result.steps} steps: final train loss {result.train_loss:.4f}"
          + (f", eval loss {result.eval_loss:.4f}{kept}" if result.eval_loss is not None else "")
          + f"\npeak memory {result.peak_memory_bytes / 2**30:.2f} GiB; outputs in {result.output}")
    return 0


def _launch_processes(nproc: int, config: TrainConfig, train_args: list[str]) -> int:
    """``pyft train --nproc N``: check the config once, then run ``pyft train`` under ``torchrun
    --standalone --nproc_per_node N`` (this machine; rank 0 writes the outputs) and return its exit code."""
    import subprocess

    from pyft.errors import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc: this process already runs under torchrun; drop --nproc")
    config.validate()
    device = config.train.device or "auto"
    if device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and nproc > gpus:
            raise ConfigError(f"--nproc: {nproc} processes but this machine has {gpus} GPU(s); one process per GPU")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "pyft.cli.main", "train", *train_args]
    print(f"[train] {nproc} processes: {' '.join(cmd[2:])}", file=sys.stderr)
    return subprocess.run(cmd, check=False).returncode


def _cmd_estimate(args: argparse.Namespace) -> int:
    from pyft.errors import ConfigError
    from pyft.hub import resolve_model
    from pyft.methods import TUNINGS, get_method
    from pyft.train.estimate import format_report

    # The config's vocabulary: --method lora is sft with tuning lora; --tuning picks one tuning.
    tuning = args.tuning or (args.method if args.method in TUNINGS else None)
    if args.tuning and args.method in TUNINGS and args.tuning != args.method:
        raise ConfigError(f"--tuning: method {args.method} already says the tuning; use --method sft --tuning "
                          f"{args.tuning}")
    method = get_method(args.method)
    tunings = [tuning] if tuning else [t for t in TUNINGS if t in method.tunings]
    model = resolve_model(args.model, kind="config")  # a Hub id: only its config.json is fetched
    print(format_report(model, args.seq_len, args.batch, tunings, args.r, args.gradient_checkpointing,
                        args.gpu_memory, args.examples, args.optim, method.name, args.precompute_ref,
                        precision=args.precision, nproc=args.nproc, parallel=args.parallel,
                        cpu_offload=args.cpu_offload))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from pyft.hub import resolve_model
    from pyft.io.dtypes import FLOATS, torch_dtype
    from pyft.quant.checkpoint import quantize_checkpoint

    dtypes: dict[str | None, torch.dtype] = {d.short: torch_dtype(d) for d in FLOATS}
    try:
        report = quantize_checkpoint(resolve_model(args.model_dir), args.out_dir, dtype=dtypes[args.dtype],
                                     compute_dtype=dtypes[args.compute_dtype] if args.compute_dtype else None,
                                     blocksize=args.blocksize, double_quant=not args.no_double_quant,
                                     skip_modules=args.skip or (), compat=args.compat)
    except ValueError as e:
        print(f"pyft: error: {e}", file=sys.stderr)
        return 1
    print(f"quantized {report.quantized} linear weights to NF4, kept {report.kept} tensors in {args.dtype}: "
          f"{report.bytes_in / 2**20:,.1f} MiB -> {report.bytes_out / 2**20:,.1f} MiB in {report.out_dir}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from pyft.cli.merge import run

    return run(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from pyft.cli.export import run

    return run(args)


def _cmd_inspect_model(args: argparse.Namespace) -> int:
    import json

    from pyft.hub import resolve_model
    from pyft.inspect import format_summary, inspect_path

    if args.support:
        from pyft.export.support import support_table

        print(support_table())
        return 0
    if args.path is None:
        from pyft.errors import ConfigError

        raise ConfigError("pyft inspect: give a PATH to summarise, or --support for the support table")
    summary = inspect_path(resolve_model(args.path, kind="auto"), tensors=args.tensors)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_summary(summary))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from pyft.cli.generate import run_generate

    return run_generate(args)


def _cmd_chat(args: argparse.Namespace) -> int:
    from pyft.cli.generate import run_chat

    return run_chat(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from pyft.cli.eval import run_eval

    return run_eval(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyft.demo import run_demo

    run_demo(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pyft.methods import METHODS, OPTIMIZERS, SFT, TUNINGS, method_names

    parser = argparse.ArgumentParser(
        prog="pyft",
        description="pyft: Rust-accelerated fine-tuning, from conversation data to servable models.",
    )
    parser.add_argument("--version", action="version", version=f"pyft {pyft.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    data = sub.add_parser("data", help="prepare and inspect training data",
                          description="Prepare and inspect training data.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_prepare(data_sub)
    ins = data_sub.add_parser("inspect", help="statistics and one example with trainable tokens highlighted",
                              description="Show the statistics of a prepared directory and one decoded example.")
    ins.add_argument("dir", metavar="DIR", help="a directory written by `pyft data prepare`")
    ins.add_argument("--index", type=int, default=0, help="row to show (0)")
    ins.add_argument("--split", default="train", help="train (default) or validation")
    ins.add_argument("--no-color", action="store_true", help="mark trainable tokens with [[ ]] instead of color")
    methods = "\n".join(f"  {m.name:<6} {m.summary} (data: {m.data_kind_text})" for m in METHODS.values())
    tr = sub.add_parser("train", help=f"fine-tune or align a model from a YAML config ({', '.join(METHODS)})",
                        description=f"Fine-tune or align a causal LM. `method` picks what is optimised:\n{methods}\n"
                                    f"`tuning` which weights train: {', '.join(TUNINGS)} (method: lora is short for "
                                    f"method: {SFT} with tuning: lora). Example configs: pyft/configs/*.yaml.",
                        epilog="examples: pyft train lora_sft.yaml model=./my-model data=./prepared train.lr=1e-4\n"
                               "          pyft train dpo.yaml model=./sft-model data=./pairs align.beta=0.1",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("config", nargs="?", help="YAML config file")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4 lora.r=32")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace the run already in the output directory (its adapter or model, metrics and "
                         "checkpoints); without it such an output is refused unless train.resume continues it")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tr.add_argument("--nproc", type=int, metavar="N",
                    help="train on N processes of this machine (one per GPU; torchrun --standalone): "
                         "data parallel, or sharded with train.parallel=fsdp. Several machines: run "
                         "torchrun -m pyft.cli.main train ... on each (see the README)")
    qz = sub.add_parser("quantize", help="write a 4-bit NF4 checkpoint (bitsandbytes format, loads in transformers)",
                        description="Quantize a model's decoder linear layers to NF4 (bit-identical to bitsandbytes) "
                                    "and write a checkpoint transformers + bitsandbytes and pyft load as 4-bit. "
                                    "Embeddings, norms and the output layer stay 16-bit.")
    qz.add_argument("model_dir", metavar="MODEL_DIR", help="transformers model directory (safetensors) or Hub id")
    qz.add_argument("out_dir", metavar="OUT_DIR", help="directory to create")
    qz.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                    help="dtype before quantization and of the unquantized tensors (bf16)")
    qz.add_argument("--compute-dtype", choices=["bf16", "fp16", "fp32"], help="bnb_4bit_compute_dtype (= --dtype)")
    qz.add_argument("--blocksize", type=int, default=64, help="NF4 block size: 32..4096 (64)")
    qz.add_argument("--no-double-quant", action="store_true", help="keep the block scales in float32")
    qz.add_argument("--skip", nargs="+", metavar="MODULE", help="modules to keep in --dtype (lm_head always is)")
    qz.add_argument("--compat", choices=["cpu", "cuda"], default="cpu",
                    help="reproduce bitsandbytes' CPU (default) or CUDA bytes where they differ (all-zero blocks, "
                         "nested scale rounding); both dequantize alike")
    from pyft.cli.merge import add_arguments as add_merge_arguments

    mg = sub.add_parser("merge", help="fold LoRA adapters into their base model (streamed, in Rust)",
                        description="Merge PEFT LoRA/rsLoRA/DoRA adapters into their base model directory.")
    add_merge_arguments(mg)
    from pyft.cli.export import _EPILOG as export_epilog
    from pyft.cli.export import add_arguments as add_export_arguments

    ex = sub.add_parser("export", help="write GGUF / Ollama / vLLM outputs for a model or adapter",
                        description="Export a model or adapter for llama.cpp, Ollama or vLLM.",
                        epilog=export_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_arguments(ex)
    insp = sub.add_parser("inspect", help="summarise a GGUF file, safetensors file, HF model or PEFT adapter",
                          description="Summarise a model file or directory without loading its tensors: a .gguf "
                                      "file, a .safetensors file, an HF model directory (with what pyft can "
                                      "export it to) or a PEFT adapter directory; --support prints the "
                                      "support table of every architecture.")
    insp.add_argument("path", metavar="PATH", nargs="?",
                      help=".gguf or .safetensors file, model or adapter directory, or Hub id owner/name[@revision]")
    insp.add_argument("--support", action="store_true",
                      help="print what pyft exports per architecture (GGUF, GGUF LoRA, Ollama, vLLM) and exit")
    insp.add_argument("--tensors", action="store_true", help="also list every tensor (name, type, shape)")
    insp.add_argument("--json", action="store_true", help="print the machine-readable summary as JSON")
    est = sub.add_parser("estimate", help="training memory per method, and which method to use",
                         description="Estimate training memory (weights, gradients, optimizer, activations) and "
                                     "recommend full fine-tuning, LoRA or QLoRA.")
    est.add_argument("--model", required=True, metavar="DIR|ID",
                     help="transformers model directory (config.json) or Hub id owner/name[@revision]")
    est.add_argument("--method", choices=method_names(), default=SFT, metavar="METHOD",
                     help=f"as the config's method: {', '.join(method_names())} (default {SFT}; "
                          f"lora/qlora/full mean sft with that tuning); for paired methods --batch counts pairs")
    est.add_argument("--tuning", choices=TUNINGS, help="one tuning (default: every tuning the method supports)")
    est.add_argument("--seq-len", type=int, default=2048, metavar="N")
    est.add_argument("--batch", type=int, default=8, metavar="B", help="rows per micro-batch")
    est.add_argument("--r", type=int, default=16, help="LoRA rank")
    est.add_argument("--gradient-checkpointing", action="store_true")
    est.add_argument("--optim", choices=OPTIMIZERS, default="adamw",
                     help="optimizer, as train.optim (default adamw: 8 bytes of state per trained parameter)")
    est.add_argument("--precompute-ref", action="store_true",
                     help=f"{'/'.join(m.name for m in METHODS.values() if m.needs_reference)}: reference "
                          f"log-probs precomputed (no frozen copy under full fine-tuning)")
    est.add_argument("--gpu-memory", type=float, metavar="GIB", help="memory of your GPU, for the recommendation")
    est.add_argument("--examples", type=int, metavar="N", help="training examples, for the recommendation")
    est.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
                     help="as train.precision (default bf16, a GPU's; fp32 on a CPU): activation and gather bytes")
    est.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="GPUs (processes) training together, as pyft train --nproc: memory is shown per GPU and "
                          "the recommendation picks ddp, fsdp or a lighter tuning for N GPUs of --gpu-memory")
    est.add_argument("--parallel", choices=("ddp", "fsdp"),
                     help="as train.parallel: ddp (the whole model on each GPU) or fsdp (sharded 1/N); "
                          "default: show both (needs --nproc 2 or more)")
    est.add_argument("--cpu-offload", action="store_true",
                     help="as train.fsdp_cpu_offload (with --parallel fsdp): shards, gradients and optimizer "
                          "states in CPU memory, shown apart")
    from pyft.cli.generate import add_chat_parser, add_generate_parser

    add_generate_parser(sub)
    add_chat_parser(sub)
    from pyft.cli.eval import add_eval_parser

    add_eval_parser(sub)
    demo = sub.add_parser("demo", help="run the end-to-end demo on the embedded tiny model and bundled data",
                          description="Build the tiny demo model, prepare the bundled data and show the results.")
    demo.add_argument("--out", default="pyft-demo", metavar="DIR", help="output directory (./pyft-demo)")
    parser.train_parser = tr  # type: ignore[attr-defined]  # see main(): its options and overrides intermix
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        # Same function as `pyft-merge` (its positionals and options intermix, which subparsers cannot do).
        from pyft.cli.merge import main as merge_main

        return merge_main(argv[1:], prog="pyft merge")
    parser = build_parser()
    if argv[:1] == ["train"]:
        # Options may come anywhere among the KEY=VALUE overrides (`train cfg.yaml --nproc 4 train.lr=1e-4`),
        # which a subparser's positionals cannot take; the train parser alone can.
        args = parser.train_parser.parse_intermixed_args(argv[1:])  # type: ignore[attr-defined]
        args.command = "train"
    else:
        args = parser.parse_args(argv)
    handlers = {("data", "prepare"): _cmd_prepare, ("data", "inspect"): _cmd_inspect, ("demo", None): _cmd_demo,
                ("train", None): _cmd_train, ("estimate", None): _cmd_estimate, ("quantize", None): _cmd_quantize,
                ("merge", None): _cmd_merge, ("export", None): _cmd_export,
                ("inspect", None): _cmd_inspect_model, ("generate", None): _cmd_generate, ("chat", None): _cmd_chat,
                ("eval", None): _cmd_eval}
    handler = handlers.get((args.command, getattr(args, "data_command", None)))
    if handler is None:
        # `pyft` or `pyft data` without a subcommand: show the matching help.
        if args.command is not None:
            parser.parse_args([args.command, "--help"])
        parser.print_help()
        return 2
    try:
        return handler(args)
    except (PyftError, OSError) as e:
        print(f"pyft: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
