"""Evaluation of fine-tuned models (``pyft eval``): task metrics, importable without torch.

- :mod:`pyft.eval.metrics` — the public face: corpus aggregates (:func:`~pyft.eval.metrics.generation_metrics`,
  :func:`~pyft.eval.metrics.classification_metrics`) and re-exports of every metric below;
- :mod:`pyft.eval.answers` — SQuAD exact match and token F1 (SQuAD normalisation, Unicode-aware);
- :mod:`pyft.eval.rouge` — ROUGE-L F-measure (LCS over Unicode-aware tokens, as Google's ``rouge-score``);
- :mod:`pyft.eval.bleu` — corpus and sentence BLEU with the 13a tokenizer, as ``sacrebleu`` by default;
- :mod:`pyft.eval.classification` — accuracy, macro-F1, per-class scores, confusion matrix, choice matching;
- :mod:`pyft.eval.plots` — the confusion matrix as a PNG (matplotlib, imported lazily).
"""
