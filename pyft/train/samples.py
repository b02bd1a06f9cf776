"""Samples while training (``train.sample_every``): greedy completions of a few fixed prompts, logged to
``samples.jsonl`` and to the trackers' text panels, so a run shows what the model says, not only its loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyft.data.dataset import PreparedDataset
from pyft.generate.engine import Generator
from pyft.generate.prompts import Prompt
from pyft.generate.settings import SamplingSettings

DEFAULT_SAMPLES = 3


def row_prompt_ids(row: dict[str, Any]) -> list[int] | None:
    """The prompt of a prepared chat/text row's first sequence: its tokens before the first trained one
    (``None`` when the sequence trains from its first token, e.g. raw text)."""
    n = int(row["seq_lengths"][0])
    ids, labels = row["input_ids"][:n], row["labels"][:n]
    first = next((i for i, label in enumerate(labels) if label != -100), None)
    return [int(t) for t in ids[:first]] if first else None


def sample_prompts(texts: list[str], datasets: list[PreparedDataset | None], count: int = DEFAULT_SAMPLES) -> list[Prompt]:
    """``texts`` as one-user-turn chats, or else the prompts of the first ``count`` rows of the first
    dataset that has prompts (validation before train)."""
    if texts:
        return [Prompt(messages=[{"role": "user", "content": t}]) for t in texts]
    for ds in datasets:
        if ds is None or ds.kind not in ("chat", "text"):
            continue
        found = [ids for ids in (row_prompt_ids(ds[i]) for i in range(min(len(ds), 50))) if ids]
        if found:
            return [Prompt(ids=ids) for ids in found[:count]]
    return []


class Sampler:
    """Generates for the sample prompts with the model being trained and appends to ``samples.jsonl``.

    Args:
        tokenizer_dir: the prepared data's tokenizer. template: its chat template (may be None).
        prompts: from :func:`sample_prompts`. max_new_tokens: per completion. output: the run directory.
    """

    def __init__(self, tokenizer_dir: Path, template: str | None, prompts: list[Prompt], max_new_tokens: int,
                 output: Path) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.template = template
        self.prompts = prompts
        self.settings = SamplingSettings(max_new_tokens=max_new_tokens)
        self.path = output / "samples.jsonl"
        self._generator: Generator | None = None

    def __call__(self, model: Any, step: int) -> dict[str, Any]:
        """Sample at ``step``; returns ``{"step", "samples": [{"prompt", "completion"}, ...]}``."""
        if self._generator is None or self._generator.model is not model:
            self._generator = Generator.from_model(model, self.tokenizer_dir, template=self.template)
        gen = self._generator
        done = gen.complete(self.prompts, self.settings, batch_size=len(self.prompts))
        shown = [gen.tokenizer.decode(p.ids, skip_special_tokens=False) if p.ids is not None
                 else p.messages[-1]["content"] if p.messages else (p.text or "") for p in self.prompts]
        record = {"step": step, "samples": [{"prompt": s, "completion": c.text} for s, c in zip(shown, done,
                                                                                          strict=True)]}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record


def _tokenizer_and_template(ds: PreparedDataset) -> tuple[Path, str | None]:
    template = (ds.info.meta.get("template") or {}).get("source")
    return ds.info.out_dir / "tokenizer", template


def build_sampler(config: Any, train_ds: PreparedDataset, eval_ds: PreparedDataset | None) -> Sampler:
    """The run's :class:`Sampler` (``train.sample_every``).

    Raises:
        ConfigError: no prompts: neither ``train.sample_prompts`` nor rows with a prompt.
    """
    from pyft.errors import ConfigError

    prompts = sample_prompts(list(config.train.sample_prompts), [eval_ds, train_ds])
    if not prompts:
        raise ConfigError("train.sample_every: no prompts to sample (the data has none): set train.sample_prompts")
    tok_dir, template = _tokenizer_and_template(train_ds)
    if template is None and any(p.messages is not None for p in prompts):
        raise ConfigError("train.sample_prompts: the data has no chat template to put them in")
    return Sampler(tok_dir, template, prompts, config.train.sample_max_new_tokens, Path(config.output))


class GeneralPerplexity:
    """``eval.general``: general-domain perplexity of the model before training (at construction) and after
    (:meth:`finish`), written to ``general.json`` with a warning when it rose by more than
    ``eval.general_max_increase``."""

    def __init__(self, config: Any, train_ds: PreparedDataset, model: Any) -> None:
        from transformers import AutoTokenizer

        from pyft.eval.perplexity import read_texts, text_perplexity

        general = config.eval.general
        self.records = read_texts(None if general is True else general)
        tok_dir, _ = _tokenizer_and_template(train_ds)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        self.limit = config.eval.general_max_increase
        self.output = Path(config.output)
        self.score = text_perplexity
        self.before = text_perplexity(model, self.tokenizer, self.records)

    def finish(self, model: Any) -> dict[str, Any]:
        """Measure again, write ``general.json``, warn past the limit; returns the written record."""
        import sys

        after = self.score(model, self.tokenizer, self.records)
        change = after["ppl"] / self.before["ppl"] - 1.0
        record = {"before": self.before, "after": after, "change": change, "max_increase": self.limit}
        (self.output / "general.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
        line = (f"general-domain perplexity {self.before['ppl']:.3f} -> {after['ppl']:.3f} "
                f"({100 * change:+.1f} %)")
        if change > self.limit:
            print(f"[warning] {line}: more than eval.general_max_increase = {100 * self.limit:.0f} %. The model is "
                  f"forgetting general language; consider train.kl_to_base, mixing general data into the training "
                  f"set (pyft data prepare --mix), a lower lr or fewer steps.", file=sys.stderr)
        else:
            print(f"[eval] {line}", file=sys.stderr)
        return record
