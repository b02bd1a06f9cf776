"""``pyft eval``: arguments and handler."""

from __future__ import annotations

import argparse
import gc
import sys

from pyft.cli.generate import add_model_arguments, add_sampling_arguments, sampling_settings
from pyft.errors import ConfigError


def add_eval_parser(sub) -> None:
    e = sub.add_parser(
        "eval", help="task metrics, held-out loss, forgetting on general text and latency; --compare BASE",
        description="Evaluate a model (base, base + adapter, merged or NF4). --data: JSONL rows with `prompt` or "
                    "`messages` and a `reference` (exact match, token F1, ROUGE-L, BLEU) or a `label` with "
                    "optional `choices` (accuracy, macro-F1, confusion matrix). --prepared: held-out loss and "
                    "perplexity. --general: perplexity on general-domain text (the multilingual corpus shipped "
                    "with pyft when no file is given). --compare BASE: the same evaluation of BASE, the "
                    "differences and a forgetting plot. --harness TASKS: lm-evaluation-harness, if installed. "
                    "A classifier (a `pyft train` method: classify model/, or a base with its adapter/) is "
                    "evaluated on --data rows with `text` or `messages` and a `label`: the predicted class, "
                    "accuracy, macro-F1, confusion matrix.")
    add_model_arguments(e)
    e.add_argument("--data", metavar="FILE.jsonl", help="prompts with references or labels")
    e.add_argument("--prepared", metavar="DIR", help="a `pyft data prepare` directory (its validation split)")
    e.add_argument("--general", nargs="?", const=True, metavar="FILE",
                   help="general-domain text (.jsonl with `text`, or plain text); no FILE: pyft's shipped corpus")
    e.add_argument("--compare", metavar="BASE", help="also evaluate BASE (no adapter) and report the change")
    e.add_argument("--harness", metavar="TASKS", help="comma-separated lm-evaluation-harness tasks (needs lm_eval)")
    e.add_argument("--out", metavar="DIR", help="write eval.json, predictions.jsonl and the plots here")
    e.add_argument("--batch-size", type=int, default=8, metavar="N")
    e.add_argument("--latency-prompts", type=int, default=4, metavar="N",
                   help="prompts timed one at a time for time to first token (0: skip)")
    e.add_argument("--overwrite", action="store_true", help="replace --out")
    add_sampling_arguments(e, max_new_tokens=128)


def run_eval(args: argparse.Namespace) -> int:
    from pyft.eval.run import compare_reports, evaluate, format_report, write_outputs
    from pyft.generate import Generator

    if args.harness:
        from pyft.eval.harness import run_harness

        results = run_harness(args.model, args.harness, adapter=args.adapter, batch_size=args.batch_size,
                              device=args.device, dtype=args.dtype)
        print(results)
        return 0
    if is_classifier(args.model, args.adapter):
        return run_classifier_eval(args)
    if args.compare and args.general is None:
        args.general = True  # forgetting is the point of a comparison
    if args.data is None and args.prepared is None and args.general is None:
        raise ConfigError("pyft eval: give --data, --prepared, --general or --harness")
    settings = sampling_settings(args)

    def one(model: str, adapter: str | None) -> dict:
        generator = Generator(model, adapter=adapter, dtype=args.dtype, device=args.device, quantize=args.quantize)
        try:
            return evaluate(generator, data=args.data, prepared=args.prepared, general=args.general,
                            settings=settings, batch_size=args.batch_size, system=args.system,
                            latency_prompts=args.latency_prompts)
        finally:
            del generator
            gc.collect()

    tuned = one(args.model, args.adapter)
    base = one(args.compare, None) if args.compare else None
    comparison = compare_reports(base, tuned) if base is not None else None
    print(format_report(tuned, base))
    if comparison is not None and comparison["task_metric"] is not None:
        general = comparison["general_change_pct"]
        print(f"task gain ({comparison['task_metric']}): {comparison['task_gain']:+.4f}"
              + (f"; general-domain perplexity {general:+.1f}%" if general is not None else ""))
    if args.out:
        files = write_outputs(args.out, tuned, comparison, overwrite=args.overwrite)
        print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0


def is_classifier(model: str, adapter: str | None) -> bool:
    """Whether ``model`` (or ``adapter``) is a sequence classifier: a local model directory of a
    ``*ForSequenceClassification`` architecture, or a ``SEQ_CLS`` adapter."""
    import json
    from pathlib import Path

    path = Path(adapter) / "adapter_config.json" if adapter else Path(model) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not local, or not readable here: the causal-LM path names the problem
    if not isinstance(config, dict):
        return False
    if adapter:
        return config.get("task_type") == "SEQ_CLS"
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def run_classifier_eval(args: argparse.Namespace) -> int:
    """``pyft eval`` of a classifier: predictions and classification metrics on ``--data``."""
    from pyft.classify import evaluate_classifier, load_classifier
    from pyft.eval.run import format_report, write_outputs

    unsupported = [flag for flag, value in (("--prepared", args.prepared), ("--general", args.general),
                                            ("--compare", args.compare), ("--quantize", args.quantize)) if value]
    if unsupported:
        raise ConfigError(f"pyft eval: {', '.join(unsupported)} evaluate generation; {args.model} is a classifier "
                          f"(give --data with labelled rows)")
    if args.data is None:
        raise ConfigError("pyft eval: a classifier is evaluated on --data (rows with `text` or `messages` and a "
                          "`label`)")
    classifier = load_classifier(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device)
    report = evaluate_classifier(classifier, args.data, batch_size=args.batch_size)
    print(format_report(report))
    if args.out:
        files = write_outputs(args.out, report, overwrite=args.overwrite)
        print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0
