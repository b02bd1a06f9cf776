"""Evaluation of fine-tuned models (``pyft eval``). Task metrics, importable without torch:

- :mod:`pyft.eval.metrics` — the public face: corpus aggregates (:func:`~pyft.eval.metrics.generation_metrics`,
  :func:`~pyft.eval.metrics.classification_metrics`) and re-exports of every metric below;
- :mod:`pyft.eval.answers` — SQuAD exact match and token F1 (SQuAD normalisation, Unicode-aware);
- :mod:`pyft.eval.rouge` — ROUGE-L F-measure (LCS over Unicode-aware tokens, as Google's ``rouge-score``);
- :mod:`pyft.eval.bleu` — corpus and sentence BLEU with the 13a tokenizer, as ``sacrebleu`` by default;
- :mod:`pyft.eval.classification` — accuracy, macro-F1, per-class scores, confusion matrix, choice matching;
- :mod:`pyft.eval.plots` — the confusion matrix as a PNG (matplotlib, imported lazily).

Model evaluation (these import torch when called):

- :mod:`pyft.eval.run` — ``pyft eval``: one report per model (task metrics on rows with references or
  labels, held-out loss, general-domain perplexity, latency), and the comparison with a base;
- :mod:`pyft.eval.perplexity` — perplexity on text and on the shipped multilingual general corpus;
- :mod:`pyft.eval.heldout` — held-out loss/perplexity on prepared data, as the trainer evaluates it;
- :mod:`pyft.eval.latency` — time to first token and decode tokens/s;
- :mod:`pyft.eval.forgetting` — the forgetting plot (task gain against general-domain change);
- :mod:`pyft.eval.harness` — lm-evaluation-harness hand-off, when it is installed.
"""
