"""``pyft eval``: one report for a model (base, base + adapter, merged, NF4) — task metrics on prompts
with references or labels, held-out loss on prepared data, general-domain perplexity (forgetting) and
latency — and the comparison of two such reports (``--compare BASE``).

Rows of the evaluation JSONL: ``prompt`` (text, one user turn) or ``messages`` (a chat), plus
- ``reference``: a string or a list of acceptable strings → exact match, token F1, ROUGE-L, BLEU;
- ``label`` (and optionally ``choices``, the allowed labels of that row) → accuracy, macro-F1, per-class
  scores, confusion matrix. The generated text is mapped to a label by
  :func:`pyft.eval.classification.match_choice` over the row's choices, or over every label of the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyft.errors import ConfigError, DataError
from pyft.generate.engine import Generator
from pyft.generate.jsonl import prompt_of
from pyft.generate.prompts import Prompt
from pyft.generate.settings import SamplingSettings
from pyft.io.files import jsonl_records

PathLike = str | os.PathLike[str]


@dataclass
class EvalRows:
    """The parsed rows of an evaluation file."""

    records: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)


def read_eval_rows(path: PathLike) -> EvalRows:
    """Rows with a prompt and a ``reference`` or ``label``.

    Raises:
        DataError: a line is not JSON, has no prompt, has neither ``reference`` nor ``label``, or has
            fields of the wrong type (file and line named).
    """
    rows = EvalRows()
    for where, rec in jsonl_records(path):
        prompt = prompt_of(rec, where)
        ref, label = rec.get("reference"), rec.get("label")
        if ref is None and label is None:
            raise DataError(f"{where}: needs a `reference` (text or list of texts) or a `label`")
        if ref is not None and not (isinstance(ref, str) or (isinstance(ref, list) and ref
                                                              and all(isinstance(r, str) for r in ref))):
            raise DataError(f"{where}: `reference` must be a string or a non-empty list of strings")
        if label is not None and not isinstance(label, str):
            raise DataError(f"{where}: `label` must be a string")
        choices = rec.get("choices")
        if choices is not None and not (isinstance(choices, list) and choices
                                        and all(isinstance(c, str) for c in choices)):
            raise DataError(f"{where}: `choices` must be a non-empty list of strings")
        rows.records.append(rec)
        rows.prompts.append(prompt)
    if not rows.records:
        raise DataError(f"{path}: no rows")
    return rows


def _task_metrics(rows: EvalRows, texts: list[str]) -> tuple[dict[str, Any], list[str | None]]:
    from pyft.eval.classification import match_choice
    from pyft.eval.metrics import classification_metrics, generation_metrics

    out: dict[str, Any] = {}
    gen = [(t, r["reference"]) for t, r in zip(texts, rows.records, strict=True) if r.get("reference") is not None]
    if gen:
        out["generation"] = generation_metrics([t for t, _ in gen], [r for _, r in gen])
    labelled = [(t, r) for t, r in zip(texts, rows.records, strict=True) if r.get("label") is not None]
    predicted: list[str | None] = [None] * len(texts)
    if labelled:
        all_labels = sorted({r["label"] for _, r in labelled} | {c for _, r in labelled for c in r.get("choices") or []})
        preds = [match_choice(t, r.get("choices") or all_labels) for t, r in labelled]
        report = classification_metrics(preds, [r["label"] for _, r in labelled], labels=all_labels)
        out["classification"] = report.as_dict()
        it = iter(preds)
        predicted = [next(it) if r.get("label") is not None else None for r in rows.records]
    return out, predicted


def evaluate(generator: Generator, *, data: PathLike | None = None, prepared: PathLike | None = None,
             general: PathLike | bool | None = None, settings: SamplingSettings | None = None,
             batch_size: int = 8, system: str | None = None, latency_prompts: int = 4) -> dict[str, Any]:
    """Evaluate one model.

    Args:
        data: evaluation JSONL (prompts with references or labels); generation is greedy by default.
        prepared: a ``pyft data prepare`` directory: held-out loss/perplexity on its validation split.
        general: general-domain text (JSONL with ``text``, or plain text), ``True`` for the corpus shipped
            with pyft, ``None`` to skip.
        latency_prompts: prompts (from ``data``) timed one at a time for time to first token.

    Returns:
        ``{"generation"?, "classification"?, "heldout"?, "general"?, "latency"?, "predictions"?}``;
        ``predictions`` holds one dict per data row (the row plus ``completion`` and, for labelled rows,
        ``predicted_label``).
    """
    from pyft.eval.latency import measure_latency
    from pyft.eval.perplexity import read_texts, text_perplexity

    if data is None and prepared is None and general is None:
        raise ConfigError("nothing to evaluate: give evaluation data, prepared data or general text")
    settings = settings or SamplingSettings()
    report: dict[str, Any] = {}
    if data is not None:
        rows = read_eval_rows(data)
        completions = generator.complete(rows.prompts, settings, batch_size=batch_size, system=system)
        texts = [c.text for c in completions]
        metrics, labels = _task_metrics(rows, texts)
        report.update(metrics)
        report["predictions"] = [{**r, "completion": t, **({"predicted_label": p} if r.get("label") is not None
                                                           else {})}
                                 for r, t, p in zip(rows.records, texts, labels, strict=True)]
        if latency_prompts > 0:
            report["latency"] = measure_latency(generator, rows.prompts[:latency_prompts], settings, system=system)
    if prepared is not None:
        from pyft.eval.heldout import heldout_loss

        report["heldout"] = heldout_loss(generator.model, prepared, batch_size=batch_size)
    if general is not None and general is not False:
        records = read_texts(None if general is True else general)
        report["general"] = text_perplexity(generator.model, generator.tokenizer, records)
    return report


#: The task metric a comparison's gain is read from, in order of preference, and whether higher is better.
_TASK_METRICS = (("generation", "exact_match", True), ("classification", "accuracy", True),
                 ("generation", "token_f1", True), ("heldout", "loss", False))


def compare_reports(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """The difference between a base and a tuned report.

    Returns:
        ``{"base", "tuned", "delta": {section: {metric: tuned - base}}, "task_metric", "task_gain",
        "general_change_pct"}``: ``task_gain`` is the change of the first of exact match, accuracy, token
        F1 (tuned − base) or held-out loss (base − tuned, so positive is better) that changed at all (else
        the first available); ``general_change_pct`` is
        the general-domain perplexity change in percent (positive = more forgetting).
    """
    delta: dict[str, dict[str, float]] = {}
    for section in ("generation", "heldout", "general", "latency"):
        if section in base and section in tuned:
            delta[section] = {k: tuned[section][k] - base[section][k] for k, v in base[section].items()
                              if isinstance(v, (int, float)) and isinstance(tuned[section].get(k), (int, float))}
    if "classification" in base and "classification" in tuned:
        delta["classification"] = {k: tuned["classification"][k] - base["classification"][k]
                                   for k in ("accuracy", "macro_f1")}
    out: dict[str, Any] = {"base": base, "tuned": tuned, "delta": delta, "task_metric": None, "task_gain": 0.0,
                           "general_change_pct": None}
    available = [(s, k, h) for s, k, h in _TASK_METRICS if s in delta and k in delta[s]]
    moved = [m for m in available if delta[m[0]][m[1]] != 0]
    if available:  # the first metric that changed (exact match 0 -> 0 says nothing), else the first one
        section, key, higher = (moved or available)[0]
        gain = delta[section][key]
        out["task_metric"] = key if higher else f"{section} {key} decrease"
        out["task_gain"] = gain if higher else -gain
    if "general" in base and "general" in tuned:
        out["general_change_pct"] = 100.0 * (tuned["general"]["ppl"] / base["general"]["ppl"] - 1.0)
    return out


def format_report(report: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """A plain-text table of a report (and of the base's numbers and the change, when given)."""
    lines = [f"{'metric':<28}{'base':>13}{'tuned':>13}{'change':>13}" if base else f"{'metric':<28}{'value':>13}"]

    def num(v: float, sign: str = "") -> str:
        return f"{v:{sign}.4f}" if abs(v) < 1e5 else f"{v:{sign}.4g}"

    def row(name: str, value: float, before: float | None) -> None:
        if base is None:
            lines.append(f"{name:<28}{num(value):>13}")
        elif before is None:
            lines.append(f"{name:<28}{'':>13}{num(value):>13}{'':>13}")
        elif "ppl" in name and before > 0:  # perplexities change by factors: show the relative change
            lines.append(f"{name:<28}{num(before):>13}{num(value):>13}{f'{100 * (value / before - 1):+.1f} %':>13}")
        else:
            lines.append(f"{name:<28}{num(before):>13}{num(value):>13}{num(value - before, '+'):>13}")

    sections = [("generation", ("exact_match", "token_f1", "rouge_l", "bleu")),
                ("classification", ("accuracy", "macro_f1")), ("heldout", ("loss", "ppl")),
                ("general", ("ppl",)), ("latency", ("ttft_s", "decode_tokens_per_s"))]
    for section, keys in sections:
        if section not in report:
            continue
        for k in keys:
            if k in report[section]:
                before = base.get(section, {}).get(k) if base else None
                row(f"{section}.{k}", float(report[section][k]), before)
    if "general" in report:
        for lang, ppl in report["general"]["by_lang"].items():
            before = base.get("general", {}).get("by_lang", {}).get(lang) if base else None
            row(f"general.ppl[{lang}]", ppl, before)
    return "\n".join(lines)


def write_outputs(out_dir: PathLike, report: dict[str, Any], comparison: dict[str, Any] | None = None, *,
                  overwrite: bool = False) -> list[Path]:
    """``eval.json`` (the report, or the comparison), ``predictions.jsonl``, ``confusion_matrix.png`` for
    labelled data and ``forgetting.png`` for a comparison with general text; written in a staging
    directory renamed into place.

    Returns:
        The files written (under ``out_dir``).
    """
    from pyft._atomic import atomic_directory

    top = comparison if comparison is not None else report
    names = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        slim = json.loads(json.dumps(top, default=float))
        for r in (slim, slim.get("base"), slim.get("tuned")):
            if isinstance(r, dict):
                r.pop("predictions", None)
        (tmp / "eval.json").write_text(json.dumps(slim, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        names.append("eval.json")
        if "predictions" in report:
            with (tmp / "predictions.jsonl").open("w", encoding="utf-8") as f:
                for p in report["predictions"]:
                    f.write(json.dumps(p, ensure_ascii=False) + "\n")
            names.append("predictions.jsonl")
        if "classification" in report:
            from pyft.eval.plots import confusion_matrix_png

            cm = report["classification"]["confusion_matrix"]
            confusion_matrix_png(cm["counts"], cm["labels"], tmp / "confusion_matrix.png")
            names.append("confusion_matrix.png")
        if comparison is not None and comparison.get("general_change_pct") is not None:
            from pyft.eval.forgetting import forgetting_png

            forgetting_png(comparison, tmp / "forgetting.png")
            names.append("forgetting.png")
    return [Path(out_dir) / n for n in names]
