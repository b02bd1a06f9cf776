"""``pyft.data.prepare``: conversation files to validated, templated, masked, packed token shards.

The work happens in Rust (``pyft._core.prepare``), in parallel over records, with the GIL
released. This module only shapes arguments and results.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyft import _core
from pyft.io.files import check_fields, data_error, read_json_object

PathLike = str | os.PathLike[str]


#: The fields of ``meta.json`` that pyft reads back, and their types (see :func:`pyft.io.files.check_fields`).
_META_FIELDS = {
    "kind": "str", "tokens": "int", "trainable_tokens": "int", "system_prompt?": "str",
    "tokenizer": {"path": "str", "backend": "str", "fallback_reason?": "str", "sha256?": "str",
                  "vocab_size?": "positive_int"},
    "template?": {"name": "str", "generation_markers": "bool", "source?": "str"},
    "options": {"pack": "str", "truncation?": "str", "columns?": {"*": "str"}},
    "counts": {"read": "int", "kept": "int", "truncated": "int", "split": "int", "truncated_prompt?": "int",
               "truncated_completion?": "int", "mask_methods?": {"*": "int"},
               "dropped": {"invalid": "int", "duplicate": "int", "overlong": "int", "no_trainable_tokens": "int"}},
    "splits": {"*": {"examples": "int", "rows": "int", "tokens": "int", "trainable_tokens": "int",
                     "packing_efficiency?": "number", "padding_efficiency?": "number",
                     "shards": [{"file": "str", "rows": "int"}]}},
    "length_histogram": {"buckets": "list", "counts": "list", "max": "int"},
    "problems?": ["str"],
    "classes?": {"type": "str", "values": "list", "examples": ["int"], "first": ["str"]},
}


@dataclass(frozen=True)
class PreparedInfo:
    """What :func:`prepare` wrote: the output directory and its ``meta.json``.

    Attributes:
        out_dir: the output directory.
        meta: the parsed ``meta.json`` (counts, tokens, options, tokenizer and template hashes).
    """

    out_dir: Path
    meta: dict[str, Any] = field(repr=False)

    @classmethod
    def read(cls, out_dir: PathLike) -> PreparedInfo:
        """Read the ``meta.json`` of a prepared directory."""
        out = Path(out_dir)
        meta_path = out / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{out}: not a prepared data directory (no meta.json)")
        meta = read_json_object(meta_path)
        check_fields(meta, meta_path, _META_FIELDS)  # a damaged meta.json is named, not a KeyError later
        if meta["kind"] not in ("chat", "text", "preference", "kto", "classify"):
            raise data_error(meta_path, f"field `kind` is {meta['kind']!r}; expected chat, text, preference, kto "
                             f"or classify", "kind")
        if meta["kind"] == "classify":
            _check_classes(meta, meta_path)
        return cls(out, meta)

    @property
    def kind(self) -> str:
        """``chat``, ``text``, ``preference``, ``kto`` or ``classify``."""
        return self.meta["kind"]

    @property
    def classes(self) -> dict[str, Any] | None:
        """Classified data: ``{"type": "name"|"index", "values": [...], "examples": [...], "first": [...]}``,
        the sorted classes of the data (a row's ``label`` indexes ``values``), their examples and where
        each first occurs (``file:line``); None for other kinds."""
        return self.meta.get("classes")

    @property
    def counts(self) -> dict[str, Any]:
        """Records read, kept, dropped by reason, truncated (and, for preference/KTO, whose prompt or
        completion lost tokens), split."""
        return self.meta["counts"]

    @property
    def splits(self) -> dict[str, Any]:
        """Per split (``train``, ``validation``): examples, rows, tokens, shards, efficiency."""
        return self.meta["splits"]

    @property
    def backend(self) -> str:
        """Which tokenizer encoded the data: pyft's own encoder (``fast-bpe``) or the ``tokenizers``
        crate (``hf``)."""
        return self.meta["tokenizer"]["backend"]

    @property
    def fallback_reason(self) -> str | None:
        """Why pyft's own encoder did not encode the data (``None`` when it did)."""
        return self.meta["tokenizer"].get("fallback_reason")

    @property
    def tokens(self) -> int:
        """All tokens written (both splits)."""
        return self.meta["tokens"]

    @property
    def trainable_tokens(self) -> int:
        """Tokens with a label (loss is computed on them)."""
        return self.meta["trainable_tokens"]

    def summary(self) -> str:
        """A human-readable multi-line summary (used by the CLI)."""
        m = self.meta
        c = m["counts"]
        d = c["dropped"]
        tok = m["tokenizer"]
        backend = tok["backend"]
        # Older meta.json files lack the reason.
        if tok.get("fallback_reason"):
            backend += f", fast path off: {tok['fallback_reason']}"
        lines = [
            f"output:    {self.out_dir}",
            f"kind:      {m['kind']}   tokenizer: {tok['path']} (backend {backend})",
        ]
        if m.get("template"):
            lines.append(f"template:  {m['template']['name']} (generation markers: {m['template']['generation_markers']})")
        if m["options"].get("columns"):  # --columns: the file's names for pyft's
            lines.append("columns:   " + ", ".join(f"{yours} -> {ours}" for ours, yours in m["options"]["columns"].items()))
        lines.append(
            f"records:   read {c['read']:,}  kept {c['kept']:,}  dropped: invalid {d['invalid']:,}, "
            f"duplicate {d['duplicate']:,}, overlong {d['overlong']:,}, no trainable tokens "
            f"{d['no_trainable_tokens']:,}  (truncated {c['truncated']:,}, split {c['split']:,})"
        )
        # Older meta.json files lack the per-part counters.
        cut_prompt, cut_completion = c.get("truncated_prompt", 0), c.get("truncated_completion", 0)
        if cut_prompt or cut_completion or m["kind"] in ("preference", "kto"):
            lines.append(
                f"truncated: prompt {cut_prompt:,}, completion {cut_completion:,}  "
                f"(truncation {m['options'].get('truncation', 'keep_end')})"
            )
        if m.get("classes"):
            cl = m["classes"]
            lines.append("classes:   " + ", ".join(f"{v} {n:,}" for v, n in zip(cl["values"], cl["examples"])))
        if c.get("mask_methods"):
            lines.append("masks:     " + ", ".join(f"{k} {v:,}" for k, v in c["mask_methods"].items()))
        lines.append(f"tokens:    {m['tokens']:,}  trainable {m['trainable_tokens']:,}")
        for name, s in m["splits"].items():
            eff = ""
            if "packing_efficiency" in s:
                eff = f"  packing efficiency {s['packing_efficiency']:.1%}"
            elif "padding_efficiency" in s:
                eff = f"  padding efficiency {s['padding_efficiency']:.1%}"
            lines.append(
                f"{name + ':':<11}{s['examples']:,} examples in {s['rows']:,} rows, {s['tokens']:,} tokens "
                f"({s['trainable_tokens']:,} trainable), {len(s['shards'])} shard(s){eff}"
            )
        hist = m["length_histogram"]
        lines.append(
            "lengths:   " + "  ".join(f"{b}:{n}" for b, n in zip(hist["buckets"], hist["counts"]) if n)
            + f"  (max {hist['max']})"
        )
        if m.get("problems"):
            lines.append(f"problems ({d['invalid']:,}; first {len(m['problems'])}):")
            lines.extend(f"  {p}" for p in m["problems"])
        return "\n".join(lines)


def _check_classes(meta: dict[str, Any], path: Path) -> None:
    """Classified data must list its classes: one type, one count and location each."""
    cl = meta.get("classes")
    if cl is None:
        raise data_error(path, "field `classes` is missing (classify data lists its classes)", "classes")
    n = len(cl["values"])
    ok_type = {"name": lambda v: isinstance(v, str), "index": lambda v: isinstance(v, int) and not isinstance(v, bool)}
    if cl["type"] not in ok_type or not all(ok_type[cl["type"]](v) for v in cl["values"]):
        raise data_error(path, f"field `classes.values` must be class names or indices as `classes.type` says "
                         f"({cl['type']!r})", "classes.values")
    if n == 0 or len(cl["examples"]) != n or len(cl["first"]) != n:
        raise data_error(path, "fields `classes.values`, `classes.examples` and `classes.first` must be non-empty "
                         "and of one length", "classes")


#: Default option values of :func:`prepare`, from the Rust core (``PrepareOptions::new``): the one
#: source that this signature, the ``pyft data prepare`` flags and their help text all read.
PREPARE_DEFAULTS: dict[str, Any] = json.loads(_core.prepare_defaults())
_D = PREPARE_DEFAULTS


def _parse_columns(columns: str | Sequence[str] | Mapping[str, str] | None) -> list[str]:
    """``--columns`` items (``"pyft_name=your_name"``, comma lists allowed) from a string, a list
    of them, or a ``{pyft_name: your_name}`` mapping."""
    if columns is None:
        return []
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, Mapping):
        return [f"{k}={v}" for k, v in columns.items()]
    return [str(c) for c in columns]


def _parse_mix(mix: Iterable[str | tuple[PathLike, float]] | Mapping[PathLike, float] | None) -> list[tuple[str, float]]:
    if mix is None:
        return []
    items = mix.items() if isinstance(mix, Mapping) else mix
    out: list[tuple[str, float]] = []
    for item in items:
        if isinstance(item, str):
            path, sep, ratio = item.rpartition(":")
            if not sep or not path:
                raise _core.ConfigError(f"--mix expects FILE:RATIO, got {item!r}")
            try:
                out.append((path, float(ratio)))
            except ValueError:
                raise _core.ConfigError(f"--mix expects FILE:RATIO with a number ratio, got {item!r}") from None
        else:
            path, ratio = item
            out.append((os.fspath(path), float(ratio)))
    return out


def prepare(
    inputs: PathLike | Sequence[PathLike],
    tokenizer: PathLike,
    out_dir: PathLike,
    *,
    mix: Iterable[str | tuple[PathLike, float]] | Mapping[PathLike, float] | None = None,
    format: str | None = _D["format"],
    columns: str | Sequence[str] | Mapping[str, str] | None = None,
    template: str = _D["template"],
    train_on: str = _D["train_on"],
    max_len: int = _D["max_len"],
    overlong: str = _D["overlong"],
    truncation: str = _D["truncation"],
    pack: str | bool = _D["pack"],
    on_error: str = _D["on_error"],
    dedup: bool = _D["dedup"],
    val_ratio: float = _D["val_ratio"],
    seed: int = _D["seed"],
    system_prompt: str | None = _D["system_prompt"],
    shard_tokens: int = _D["shard_tokens"],
    overwrite: bool = _D["overwrite"],
    progress: bool | None = None,
) -> PreparedInfo:
    """Prepare training data into token shards.

    Args:
        inputs: one or more ``.jsonl``/``.json``/``.parquet`` files, or Hugging Face Hub datasets
            ``[hub:]owner/name[@revision][:[subset/]split]`` (split ``train`` by default; read with
            the ``datasets`` library from the repository's data files, never a dataset script; see
            :mod:`pyft.hub`). A local path wins over a Hub id.
        tokenizer: an HF tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json``), a
            ``tokenizer.json`` file, or a Hub id (``owner/name[@revision]``: its tokenizer files).
        out_dir: output directory; written to a temporary sibling and renamed at the end.
        mix: general data mixed into the training split, as ``"FILE:RATIO"`` strings or
            ``(file, ratio)`` pairs (a file may be a Hub dataset, as ``inputs``); ``RATIO`` in
            (0, 1) is the share of the final training examples taken from that file (sampled with ``seed``).
        format: force ``alpaca``, ``sharegpt``, ``messages``, ``text``, ``preference`` or ``kto``
            for every record (a record that is not in that format is an error naming it). Default:
            detected per record from its keys, so one file may mix alpaca, sharegpt and messages
            records (all records must be of one kind: chat, text, preference or KTO).
        columns: your key names mapped to pyft's, applied to every record before detection, as
            ``"instruction=question,output=answer"``, a list of such items or a
            ``{"instruction": "question"}`` mapping. Targets: record fields (``instruction``,
            ``input``, ``output``, ``system``, ``history``, ``messages``, ``conversations``,
            ``tools``, ``text``, ``prompt``, ``chosen``, ``rejected``, ``completion``, ``label``),
            message keys (``role``, ``content``) and role values (``user``, ``assistant``,
            ``system_tag``, ``tool``), as LLaMA-Factory's ``dataset_info.json`` ``columns`` and
            ``tags``. Errors name a mapped field as your file spells it; ``meta.json`` records the
            mapping under ``options.columns``.
        template: ``tokenizer`` (the tokenizer's own ``chat_template``), a built-in name
            (``chatml``, ``llama3``, ``alpaca``, ``mistral``, ``gemma``, ``zephyr``) or a Jinja file.
        train_on: ``assistant`` (every assistant turn and its end-of-turn token), ``last`` (the
            final assistant turn) or ``all``.
        max_len: maximum tokens per sequence, and the row length when packing.
        overlong: ``truncate`` (default), ``drop`` or ``split`` (into ``max_len`` pieces) for longer
            sequences.
        truncation: preference/KTO only: which end of an overlong prompt ``overlong="truncate"``
            keeps. ``keep_end`` (default) drops the prompt's first tokens, so the last turn and the
            generation prompt survive; ``keep_start`` drops its last tokens, so the system prompt
            and first turns survive. Either way the prompt keeps at least
            ``min(prompt_len, max_len // 2)`` tokens, and the completions are cut to make room,
            keeping their start. ``meta.json`` counts the examples whose prompt
            (``truncated_prompt``) and completion (``truncated_completion``) lost tokens.
        pack: ``bfd`` (best-fit-decreasing packing into ``max_len`` rows) or ``none``.
        on_error: ``fail`` (default: nothing is written) or ``skip`` (invalid records are
            dropped, counted and the first problems listed in ``meta.json``).
        dedup: drop exact duplicate records.
        val_ratio: share of the (task) examples held out for validation.
        seed: seed of the split and of mixing.
        system_prompt: system message added to conversations that have none.
        shard_tokens: tokens per shard file.
        overwrite: replace an existing ``out_dir``.
        progress: show a progress line (default: when stderr is a terminal).

    Returns:
        :class:`PreparedInfo` for the written directory.

    Raises:
        DataError: invalid records or files (the message names ``file:line`` and the field).
        TemplateError, TokenizerError, ConfigError: see :mod:`pyft.errors`.
    """
    from pyft import hub

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if isinstance(pack, bool):
        pack = "bfd" if pack else "none"
    if pack not in ("bfd", "none"):
        raise _core.ConfigError(f"unknown pack strategy {pack!r} (expected bfd or none)")
    if progress is None:
        progress = os.isatty(2)
    mixes = _parse_mix(mix)
    tokenizer = hub.resolve_model(tokenizer, kind="tokenizer")
    with tempfile.TemporaryDirectory(prefix="pyft-hub-data-") as tmp:
        # Hub datasets are read by `datasets` and handed to the Rust reader as Parquet files named after them.
        def local(ref: PathLike) -> str:
            return os.fspath(hub.write_dataset(ref, Path(tmp)) if hub.dataset_ref(ref) else ref)

        meta = _core.prepare(
            [local(p) for p in paths],
            os.fspath(tokenizer),
            os.fspath(out_dir),
            mix=[(local(f), r) for f, r in mixes],
            format=format,
            columns=_parse_columns(columns),
            template=template,
            train_on=train_on,
            max_len=max_len,
            overlong=overlong,
            truncation=truncation,
            pack=pack == "bfd",
            on_error=on_error,
            dedup=dedup,
            val_ratio=val_ratio,
            seed=seed,
            system_prompt=system_prompt,
            shard_tokens=shard_tokens,
            overwrite=overwrite,
            progress=progress,
        )
    return PreparedInfo(Path(out_dir), json.loads(meta))
