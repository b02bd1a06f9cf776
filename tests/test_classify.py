"""``method: classify``: classify data (Rust pipeline), label maps, the loss against torch and
scikit-learn, and training through ``pyft.train.train`` with the saved model read back by transformers
and the adapter by PEFT (the oracles)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyft.classify.config import ClassifySection
from pyft.classify.labels import LabelMap, balanced_class_weights, class_weights, resolve_labels
from pyft.classify.objective import ClassifyObjective
from pyft.data import PreparedDataset, prepare
from pyft.errors import ConfigError, DataError
from pyft.testing import make_tiny_model

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "big", "small", "red", "blue", "tree", "house", "car",
         "road", "sun", "moon"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _task_rows(n: int, seed: int) -> list[dict]:
    """Label `yes` when the text holds the word `banana`: a rule one attention layer can learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        pos = rng.random() < 0.5
        if pos:
            words.insert(rng.randrange(len(words) + 1), "banana")
        rows.append({"text": " ".join(words), "label": "yes" if pos else "no"})
    return rows


# -- data ---------------------------------------------------------------------------------------
def test_prepare_classify_names_indices_and_messages(tmp_path, tokenizer_dirs, hf_tokenizers):
    tok = tokenizer_dirs["llama3"]
    rows = [{"text": "the cat sat", "label": "pos"}, {"text": "a dog ran", "label": "neg"},
            {"messages": [{"role": "user", "content": "hello"}], "label": "pos"}]
    info = prepare(_write(tmp_path / "d.jsonl", rows), tok, tmp_path / "out")
    assert info.kind == "classify"
    assert info.classes == {"type": "name", "values": ["neg", "pos"], "examples": [1, 2],
                            "first": [f"{tmp_path / 'd.jsonl'}:2", f"{tmp_path / 'd.jsonl'}:1"]}
    ds = PreparedDataset(tmp_path / "out")
    assert [int(ds[i]["label"]) for i in range(3)] == [1, 0, 1]
    hf = hf_tokenizers["llama3"]
    # Text as tokenizer(text) (no EOS: the classifier reads the last input token), messages as
    # apply_chat_template without a generation prompt: what the prediction API feeds the model.
    assert ds[0]["input_ids"].tolist() == hf("the cat sat")["input_ids"]
    chat = hf.apply_chat_template(rows[2]["messages"], tokenize=True, add_generation_prompt=False)
    assert ds[2]["input_ids"].tolist() == list(chat["input_ids"] if hasattr(chat, "keys") else chat)
    assert info.meta["splits"]["train"]["class_examples"] == [1, 2]
    assert "classes:   neg 1, pos 2" in info.summary()

    idx = prepare(_write(tmp_path / "i.jsonl", [{"text": "x y", "label": 2}, {"text": "z", "label": 0}]), tok,
                  tmp_path / "idx")
    assert idx.classes["type"] == "index" and idx.classes["values"] == [0, 2]
    assert PreparedDataset(tmp_path / "idx").row_labels().tolist() == [1, 0]


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "t", "label": 1.5}, ("field `label`: expected a class name (a string) or a class index (an integer "
                                   ">= 0), got 1.5")),
    ({"text": "t", "label": True}, "field `label`: expected a class name"),
    ({"text": "t", "label": ""}, "field `label`: empty"),
    ({"text": "", "label": "a"}, "field `text`: empty"),
    ({"text": "t", "messages": [{"role": "user", "content": "u"}], "label": "a"}, "has both `text` and `messages`"),
    ({"text": "t", "label": 3}, "field `label`: a class index (3), but the labels of"),
])
def test_bad_classify_records_name_file_line_and_field(tmp_path, tokenizer_dirs, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"text": "fine", "label": "a"}, {"text": "ok", "label": "b"}, row])
    with pytest.raises(DataError) as e:
        prepare(path, tokenizer_dirs["llama3"], tmp_path / "out")
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_label_maps_from_data_and_config(tmp_path, tokenizer_dirs):
    tok = tokenizer_dirs["llama3"]
    path = _write(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neutral"},
                                         {"text": "c", "label": "neg"}])
    info = prepare(path, tok, tmp_path / "out")
    data = resolve_labels(info)
    assert data.names == ("neg", "neutral", "pos") and data.data_to_id.tolist() == [0, 1, 2]
    cfg = resolve_labels(info, ["pos", "neg", "neutral"])
    assert cfg.model_config() == {"num_labels": 3, "id2label": {0: "pos", 1: "neg", 2: "neutral"},
                                  "label2id": {"pos": 0, "neg": 1, "neutral": 2},
                                  "problem_type": "single_label_classification"}
    assert cfg.data_to_id.tolist() == [1, 2, 0]  # data classes (sorted) -> config ids
    with pytest.raises(DataError, match=rf"^{path}:2: field `label`: 'neutral' is not one of classify.labels "
                                        r"\(neg, pos\)$"):
        resolve_labels(info, ["neg", "pos"])

    ipath = _write(tmp_path / "i.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 4}])
    iinfo = prepare(ipath, tok, tmp_path / "iout")
    assert resolve_labels(iinfo).names == ("LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3", "LABEL_4")
    with pytest.raises(DataError, match=rf"^{ipath}:2: field `label`: class index 4 is out of range"):
        resolve_labels(iinfo, ["neg", "pos"])
    one = prepare(_write(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}]), tok, tmp_path / "one")
    with pytest.raises(ConfigError, match="holds one class"):
        resolve_labels(one)
    with pytest.raises(ConfigError, match="holds text data"):
        resolve_labels(prepare(_write(tmp_path / "t.jsonl", [{"text": "a"}]), tok, tmp_path / "t"))


def test_classify_section_checks_its_fields():
    for kwargs, message in [({"labels": ["a"]}, "labels: a classifier needs at least 2"),
                            ({"labels": ["a", "a"]}, "labels: 'a' is listed more than once"),
                            ({"labels": ["a", " "]}, r"labels\[1\]"),
                            ({"label_smoothing": 1.0}, "label_smoothing"),
                            ({"class_weights": "balanced"}, "class_weights: expected auto"),
                            ({"class_weights": [1.0, -1.0]}, r"class_weights\[1\]"),
                            ({"labels": ["a", "b"], "class_weights": [1.0]}, "class_weights: 1 weights for 2")]:
        with pytest.raises(ValueError, match=message):
            ClassifySection(**kwargs)


# -- the loss -----------------------------------------------------------------------------------
class _FixedLogits(torch.nn.Module):
    """A stand-in classifier: the logits of a row are a learnable table's row at its first token."""

    def __init__(self, vocab: int, classes: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, classes, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, attention_mask, use_cache):
        return type("Out", (), {"logits": self.table[input_ids[:, 0]]})()


@pytest.mark.parametrize(("smoothing", "weights"), [(0.0, None), (0.1, None), (0.2, [0.5, 2.0, 1.5])])
def test_loss_equals_torch_cross_entropy_over_micro_batches(smoothing, weights):
    """The step loss, summed over micro-batches, is torch's ``cross_entropy(weight, label_smoothing)`` of
    the whole step (its mean divides by Σ w[y]), and so are its gradients."""
    labels = LabelMap(("a", "b", "c"), np.array([0, 1, 2]))
    w = None if weights is None else np.array(weights)
    objective = ClassifyObjective(labels, 0, smoothing, w)
    rng = np.random.default_rng(0)
    items = [{"input_ids": rng.integers(1, 20, size=rng.integers(1, 6)).astype(np.int32),
              "label": np.int32(rng.integers(0, 3))} for _ in range(10)]
    batches = [objective.collate(items[:4], None, "train"), objective.collate(items[4:], None, "train")]
    totals: dict[str, float] = {}
    for b in batches:
        for k, v in objective.counts(b).items():
            totals[k] = totals.get(k, 0) + v
    model = _FixedLogits(20, 3)
    total = sum(objective.loss(model, b, totals)[0] for b in batches)
    total.backward()
    ours = model.table.grad.clone()
    model.table.grad = None
    ids = torch.tensor([int(it["input_ids"][0]) for it in items])
    y = torch.tensor([int(it["label"]) for it in items])
    ref = F.cross_entropy(model.table[ids], y, weight=None if w is None else torch.tensor(w, dtype=torch.float32),
                          label_smoothing=smoothing)
    ref.backward()
    # float32 sums in another order: equal to rounding (1e-6 relative).
    torch.testing.assert_close(total, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours, model.table.grad, rtol=1e-6, atol=1e-7)


def test_auto_class_weights_equal_sklearn_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 7 + [1] * 2 + [2] * 11 + [3])
    labels = LabelMap(("a", "b", "c", "d"), np.arange(4))
    ours = class_weights("auto", labels, y)
    ref = compute_class_weight("balanced", classes=np.arange(4), y=y)
    np.testing.assert_allclose(ours, ref, rtol=1e-15)
    assert class_weights([1.0, 2.0, 3.0, 4.0], labels, y).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert class_weights(None, labels, y) is None
    with pytest.raises(ConfigError, match="3 weights for 4 classes"):
        class_weights([1.0, 2.0, 3.0], labels, y)
    with pytest.raises(ConfigError, match="class 1 has none"):
        balanced_class_weights(np.array([3, 0]))


def test_eval_metrics_are_the_classification_report():
    """Evaluation's accuracy, macro-F1 and confusion matrix equal pyft.eval's (scikit-learn's definitions)."""
    from pyft.eval.metrics import classification_metrics

    labels = LabelMap(("a", "b", "c"), np.arange(3))
    objective = ClassifyObjective(labels, 0)
    objective.training = False
    model = _FixedLogits(20, 3)
    rng = np.random.default_rng(1)
    items = [{"input_ids": np.array([t], dtype=np.int32), "label": np.int32(rng.integers(0, 3))}
             for t in rng.integers(0, 20, size=30)]
    batches = [objective.collate(items[i:i + 8], None, "validation") for i in range(0, 30, 8)]
    totals: dict[str, float] = {}
    sums: dict[str, float] = {}
    for b in batches:
        for k, v in objective.counts(b).items():
            totals[k] = totals.get(k, 0) + v
    for b in batches:
        for k, v in objective.loss(model, b, totals)[1].items():
            sums[k] = sums.get(k, 0.0) + v
    out = objective.finalize(sums, totals)
    pred = model.table.detach()[[int(it["input_ids"][0]) for it in items]].argmax(-1).tolist()
    ref = classification_metrics([labels.names[p] for p in pred], [labels.names[int(it["label"])] for it in items],
                                 labels=list(labels.names))
    assert out["accuracy"] == pytest.approx(ref.accuracy) and out["macro_f1"] == pytest.approx(ref.macro_f1)
    assert out["confusion_matrix"] == ref.confusion.counts[:, :3].tolist()


# -- training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task(tmp_path_factory, tokenizer_dirs):
    root = tmp_path_factory.mktemp("classify")
    tok = tokenizer_dirs["llama3"]
    prepare(_write(root / "train.jsonl", _task_rows(240, 0)), tok, root / "data", val_ratio=0.2)
    return {"root": root, "tok": tok, "data": root / "data", "heldout": _write(root / "heldout.jsonl",
                                                                               _task_rows(80, 1)),
            "llama": make_tiny_model(root / "llama", tok, arch="llama"),
            "qwen2": make_tiny_model(root / "qwen2", tok, arch="qwen2")}


def _config(task, out: str, tuning: str, model: str = "llama", steps: int = 60, **sections):
    from pyft.train import load_config

    return load_config(None, model=str(task[model]), data=str(task["data"]), method="classify", tuning=tuning,
                       output=str(task["root"] / out),
                       train={"max_steps": steps, "batch_size": 16, "lr": 3e-3, "log_every": 10,
                              **sections.pop("train", {})},
                       lora={"r": 8, "alpha": 16, "targets": "all-linear"}, **sections)


@pytest.fixture(scope="module")
def lora_run(task, single_thread):
    from pyft.train import train

    result = train(_config(task, "lora", "lora", classify={"label_smoothing": 0.05}))
    return task["root"] / "lora", result


def test_lora_classifier_learns_the_rule(task, lora_run):
    from pyft.classify import evaluate_classifier, load_classifier

    out, _ = lora_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "eval_loss" in r][-1]
    assert final["eval_accuracy"] >= 0.9 and final["eval_macro_f1"] >= 0.9
    assert np.array(final["eval_confusion_matrix"]).sum() == len(PreparedDataset(task["data"], "validation"))
    report = evaluate_classifier(load_classifier(out / "model"), task["heldout"])
    assert report["classification"]["accuracy"] >= 0.9  # rows never seen in training
    assert report["predictions"][0].keys() == {"text", "label", "predicted_label"}


def test_saved_model_and_adapter_load_in_transformers_and_peft(task, lora_run):
    """model/ is a transformers classifier with the label map; adapter/ is a PEFT SEQ_CLS adapter
    (score in modules_to_save); both give pyft's logits."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from pyft.classify import load_classifier

    out, _ = lora_run
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert cfg["id2label"] == {"0": "no", "1": "yes"} and cfg["label2id"] == {"no": 0, "yes": 1}
    assert cfg["problem_type"] == "single_label_classification"
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["task_type"] == "SEQ_CLS" and "score" in adapter_cfg["modules_to_save"]
    assert json.loads((out / "adapter" / "pyft_run.json").read_text())["labels"] == ["no", "yes"]

    texts = [r["text"] for r in _task_rows(12, 2)]
    ours = load_classifier(out / "model")
    ours_adapter = load_classifier(task["llama"], adapter=out / "adapter")
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert hf.config.num_labels == 2
    base = AutoModelForSequenceClassification.from_pretrained(task["llama"], num_labels=2,
                                                              pad_token_id=hf.config.pad_token_id)
    peft = PeftModel.from_pretrained(base, out / "adapter").eval()
    tok = ours.tokenizer
    batch = tok(texts, padding=True, return_tensors="pt")  # right padding
    assert tok.padding_side == "right"
    with torch.no_grad():
        hf_logits = hf(**batch).logits
        peft_logits = peft(**batch).logits
    pyft_logits = torch.from_numpy(ours.logits(texts, batch_size=5))
    # fp32; the merged weights (W + BA) and PEFT's unmerged W·x + B(A·x) round differently: 1e-5.
    torch.testing.assert_close(pyft_logits, hf_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(peft_logits, hf_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(ours_adapter.logits(texts)), peft_logits, rtol=1e-5, atol=1e-5)
    labels = ["no", "yes"]
    assert ours.predict(texts) == [labels[i] for i in hf_logits.argmax(-1).tolist()]
    assert ours_adapter.predict(texts) == [labels[i] for i in peft_logits.argmax(-1).tolist()]


def test_full_and_qlora_tunings_save_a_classifier(task, single_thread):
    from transformers import AutoModelForSequenceClassification

    from pyft.quant import NF4Linear
    from pyft.train import build_trainer, train

    train(_config(task, "full", "full", model="qwen2", steps=3, classify={"class_weights": "auto"}))
    assert not (task["root"] / "full" / "adapter").exists()
    full = AutoModelForSequenceClassification.from_pretrained(task["root"] / "full" / "model")
    assert type(full).__name__ == "Qwen2ForSequenceClassification" and full.config.num_labels == 2

    cfg = _config(task, "qlora", "qlora", steps=3, train={"precision": "fp32"})
    trainer = build_trainer(cfg)
    assert any(isinstance(m, NF4Linear) for m in trainer.model.modules())
    assert type(trainer.model).__name__ == "LlamaForSequenceClassification"
    train(cfg)
    assert (task["root"] / "qlora" / "adapter" / "adapter_config.json").is_file()
    assert AutoModelForSequenceClassification.from_pretrained(task["root"] / "qlora" / "model").config.id2label == {
        0: "no", 1: "yes"}


def test_config_errors(task):
    with pytest.raises(ConfigError, match="adapter: a classifier starts a new adapter"):
        _config(task, "x", "lora", adapter=str(task["root"]))
    with pytest.raises(ConfigError, match="train.sample_every: a classifier does not generate"):
        _config(task, "x", "lora", train={"sample_every": 5})
    with pytest.raises(ConfigError, match="eval.general: a classifier has no language-model head"):
        _config(task, "x", "lora", eval={"general": True})
    with pytest.raises(ConfigError, match=r"classify: labels: 'a' is listed more than once"):
        _config(task, "x", "lora", classify={"labels": ["a", "a"]})
    from pyft.train import build_trainer

    with pytest.raises(DataError, match="field `label`: 'no' is not one of classify.labels"):
        build_trainer(_config(task, "x", "lora", classify={"labels": ["yes", "maybe"]}))


def test_pyft_eval_scores_a_classifier(task, lora_run, tmp_path, capsys):
    """``pyft eval`` on model/ (or base + adapter/): predicted classes and classification metrics."""
    from pyft.cli.main import main

    out, _ = lora_run
    assert main(["eval", str(out / "model"), "--data", str(task["heldout"]), "--out", str(tmp_path / "m")]) == 0
    assert "classification.accuracy" in capsys.readouterr().out
    merged = json.loads((tmp_path / "m" / "eval.json").read_text())["classification"]
    assert merged["accuracy"] >= 0.9 and merged["confusion_matrix"]["labels"] == ["no", "yes"]
    assert (tmp_path / "m" / "confusion_matrix.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "m" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 80 and {r["predicted_label"] for r in rows} <= {"no", "yes"}
    assert main(["eval", str(task["llama"]), "--adapter", str(out / "adapter"), "--data", str(task["heldout"]),
                 "--out", str(tmp_path / "a")]) == 0
    adapter = json.loads((tmp_path / "a" / "eval.json").read_text())["classification"]
    assert adapter["confusion_matrix"] == merged["confusion_matrix"]
    capsys.readouterr()
    assert main(["eval", str(out / "model"), "--data", str(task["heldout"]), "--general"]) == 1
    assert "--general evaluate generation" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", [{"text": "a", "label": "no"}, {"text": "b", "label": "maybe"}])
    assert main(["eval", str(out / "model"), "--data", str(bad)]) == 1
    assert f"{bad} line 2: field `label`: 'maybe' is not a class of the model" in capsys.readouterr().err
