"""Token ids and loss masks of `pyft.data.prepare` against transformers' `apply_chat_template`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import pyft.data
from pyft.testing import TEMPLATES

from helpers import CONVERSATIONS, write_jsonl

STYLES = ["chatml", "llama3", "alpaca"]


def _rows(out: Path, split: str = "train") -> list[dict[str, np.ndarray]]:
    ds = pyft.data.load(out, split)
    return [ds[i] for i in range(len(ds))]


def _reference(hf_tok, messages, template=None):
    out = hf_tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=template
    )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    return ids, mask


def _labels_from(ids, mask):
    labels = [t if m else -100 for t, m in zip(ids, mask)]
    labels[0] = -100
    return labels


@pytest.mark.parametrize("style", STYLES)
def test_ids_and_assistant_mask_match_transformers(style, tokenizer_dirs, hf_tokenizers, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    info = pyft.data.prepare(src, tokenizer_dirs[style], tmp_path / "out", max_len=4096)
    assert info.counts["kept"] == len(CONVERSATIONS)
    assert info.counts["mask_methods"] == {"generation-markers": len(CONVERSATIONS)}
    rows = _rows(tmp_path / "out")
    for messages, row in zip(CONVERSATIONS, rows):
        ids, mask = _reference(hf_tokenizers[style], messages)
        assert row["input_ids"].tolist() == ids
        assert row["labels"].tolist() == _labels_from(ids, mask)
        assert any(mask)


@pytest.mark.parametrize("style", STYLES)
def test_markerless_template_gives_the_same_mask(style, tokenizer_dirs, hf_tokenizers, tmp_path):
    """Without {% generation %} markers pyft finds assistant content and its end-of-turn token
    itself; the result equals transformers' mask computed with the marked template."""
    plain = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", TEMPLATES[style])
    assert not re.search(r"\{%-?\s*(end)?generation", plain)
    (tmp_path / "plain.jinja").write_text(plain)
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    info = pyft.data.prepare(src, tokenizer_dirs[style], tmp_path / "out", template=str(tmp_path / "plain.jinja"))
    assert info.counts["mask_methods"] == {"content-spans": len(CONVERSATIONS)}
    for messages, row in zip(CONVERSATIONS, _rows(tmp_path / "out")):
        ids, mask = _reference(hf_tokenizers[style], messages)
        assert row["input_ids"].tolist() == ids
        assert row["labels"].tolist() == _labels_from(ids, mask)


def test_train_on_last_and_all(tokenizer_dirs, hf_tokenizers, tmp_path):
    messages = CONVERSATIONS[1]
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    hf = hf_tokenizers["chatml"]
    ids, mask = _reference(hf, messages)
    # The last assistant turn alone: the mask of the full conversation from where the final
    # assistant turn starts (everything before it rendered with the generation prompt).
    prefix = hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    last_mask = [m if i >= len(prefix) else 0 for i, m in enumerate(mask)]
    assert 0 < sum(last_mask) < sum(mask)
    pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "last", train_on="last")
    assert _rows(tmp_path / "last")[0]["labels"].tolist() == _labels_from(ids, last_mask)
    pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "all", train_on="all")
    assert _rows(tmp_path / "all")[0]["labels"].tolist() == _labels_from(ids, [1] * len(ids))


def test_formats_alpaca_and_sharegpt_equal_their_messages(tokenizer_dirs, hf_tokenizers, tmp_path):
    alpaca = [{"instruction": "Translate to German", "input": "good morning", "output": "Guten Morgen",
               "system": "Be exact.", "history": [["Hi", "Hello!"]]}]
    sharegpt = [{"system": "Be exact.", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Translate to German\ngood morning"}, {"from": "gpt", "value": "Guten Morgen"}]}]
    messages = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Translate to German\ngood morning"},
                {"role": "assistant", "content": "Guten Morgen"}]
    ids, mask = _reference(hf_tokenizers["llama3"], messages)
    for name, records in [("alpaca", alpaca), ("sharegpt", sharegpt)]:
        src = write_jsonl(tmp_path / f"{name}.jsonl", records)
        info = pyft.data.prepare(src, tokenizer_dirs["llama3"], tmp_path / name)
        assert info.meta["inputs"][0]["format"] == name
        row = _rows(tmp_path / name)[0]
        assert row["input_ids"].tolist() == ids
        assert row["labels"].tolist() == _labels_from(ids, mask)


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_text_format_matches_tokenizer_call_plus_eos(style, tokenizer_dirs, hf_tokenizers, tmp_path):
    texts = ["Plain text for continued pre-training.", "Zweite Zeile — mit Ümlauten und 数字 123456."]
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    pyft.data.prepare(src, tokenizer_dirs[style], tmp_path / "out")
    hf = hf_tokenizers[style]
    for t, row in zip(texts, _rows(tmp_path / "out")):
        expected = hf(t)["input_ids"] + [hf.eos_token_id]
        assert row["input_ids"].tolist() == expected
        assert row["labels"].tolist() == [-100] + expected[1:]


def _trl_pair(hf, prompt, completion):
    """TRL 1.16 DPOTrainer/KTOTrainer tokenization (trl/trainer/dpo_trainer.py, tokenize_fn)."""
    if isinstance(prompt, list):
        p = hf.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        pc = hf.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    else:
        if not completion.endswith(hf.eos_token):
            completion = completion + hf.eos_token
        p = hf(prompt)["input_ids"]
        pc = hf(prompt + completion)["input_ids"]
    n = 0
    while n < min(len(p), len(pc)) and p[n] == pc[n]:
        n += 1
    return p, pc, n


@pytest.mark.parametrize("conversational", [True, False])
def test_preference_tokenized_like_trl(conversational, tokenizer_dirs, hf_tokenizers, tmp_path):
    hf = hf_tokenizers["llama3"]
    if conversational:
        rec = {"prompt": [{"role": "user", "content": "Name a colour."}],
               "chosen": [{"role": "assistant", "content": "Blue."}],
               "rejected": [{"role": "assistant", "content": "Seven."}]}
    else:
        rec = {"prompt": "Name a colour:", "chosen": " Blue.", "rejected": " Seven."}
    src = write_jsonl(tmp_path / "p.jsonl", [rec])
    info = pyft.data.prepare(src, tokenizer_dirs["llama3"], tmp_path / "out")
    assert info.kind == "preference"
    row = _rows(tmp_path / "out")[0]
    p, pc, n1 = _trl_pair(hf, rec["prompt"], rec["chosen"])
    _, pr, n2 = _trl_pair(hf, rec["prompt"], rec["rejected"])
    n = min(n1, n2)
    assert row["prompt"].tolist() == p[:n]
    assert row["chosen"].tolist() == pc[n:]
    assert row["rejected"].tolist() == pr[n:]


def test_kto_tokenized_like_trl(tokenizer_dirs, hf_tokenizers, tmp_path):
    hf = hf_tokenizers["chatml"]
    recs = [{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}], "label": True},
            {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "5"}], "label": False}]
    src = write_jsonl(tmp_path / "k.jsonl", recs)
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out")
    assert info.splits["train"]["desirable"] == 1 and info.splits["train"]["undesirable"] == 1
    for rec, row in zip(recs, _rows(tmp_path / "out")):
        p, pc, n = _trl_pair(hf, rec["prompt"], rec["completion"])
        assert row["prompt_ids"].tolist() == p[:n]
        assert row["completion_ids"].tolist() == pc[n:]
        assert int(row["label"]) == int(rec["label"])


def test_meta_records_hashes_and_counts(tokenizer_dirs, tmp_path):
    import hashlib

    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", val_ratio=0.4, seed=1)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    expected = hashlib.sha256((tokenizer_dirs["chatml"] / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["tokenizer"]["sha256"] == expected
    assert meta["template"]["sha256"] == hashlib.sha256(TEMPLATES["chatml"].encode()).hexdigest()
    assert meta["splits"]["train"]["examples"] == 3 and meta["splits"]["validation"]["examples"] == 2
    ds_tokens = sum(len(r["input_ids"]) for s in ("train", "validation") for r in _rows(tmp_path / "out", s))
    assert meta["tokens"] == ds_tokens
    trainable = sum(int((r["labels"] != -100).sum()) for s in ("train", "validation") for r in _rows(tmp_path / "out", s))
    assert meta["trainable_tokens"] == trainable
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()
    assert info.summary().startswith("output:")


LEN_SUFFIX = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }} [{{ m.content | length }} chars]<|im_end|>"
    "{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_prefix_diff_fallback_when_template_rewrites_content(tokenizer_dirs, hf_tokenizers, tmp_path):
    """Content whose rendering depends on it (here its length) defeats the content probe; pyft
    then takes what each assistant turn adds to the rendering and matches the marked template."""
    plain = LEN_SUFFIX.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    (tmp_path / "t.jinja").write_text(plain)
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", template=str(tmp_path / "t.jinja"))
    assert info.counts["mask_methods"] == {"prefix-diff": len(CONVERSATIONS)}
    for messages, row in zip(CONVERSATIONS, _rows(tmp_path / "out")):
        ids, mask = _reference(hf_tokenizers["chatml"], messages, template=LEN_SUFFIX)
        assert row["input_ids"].tolist() == ids
        assert row["labels"].tolist() == _labels_from(ids, mask)


def test_unlocatable_assistant_turns_fail_clearly(tokenizer_dirs, tmp_path):
    # Earlier assistant turns render as their length once a later turn follows.
    template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}{{ m.content | length }}{% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (tmp_path / "t.jinja").write_text(template)
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATIONS[1]}])
    with pytest.raises(pyft.DataError, match=r"c\.jsonl:1: .*cannot locate assistant message 2.*generation"):
        pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "out", template=str(tmp_path / "t.jinja"))
    info = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "all", template=str(tmp_path / "t.jinja"),
                             train_on="all")
    assert info.counts["kept"] == 1


def _wordpiece_tokenizer(out: Path) -> Path:
    """A BERT-style WordPiece tokenizer trained on the bundled corpus: not byte-level BPE, so pyft
    encodes it with the `tokenizers` crate."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pyft.testing import CORPUS_PATH

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[UNK]", "[SEP]", "[PAD]"],
                                        show_progress=False)
    tok.train([str(CORPUS_PATH)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]", pad_token="[PAD]")
    fast.save_pretrained(out)
    return out


def test_fallback_backend_and_reason_are_reported(tmp_path, capsys):
    from transformers import AutoTokenizer

    from pyft import _core
    from pyft.cli.main import main

    tok_dir = _wordpiece_tokenizer(tmp_path / "wordpiece")
    core = _core.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert core.backend == "hf"
    reason = core.fallback_reason
    assert isinstance(reason, str) and reason
    texts = ["Plain text for continued pre-training.", "Zweite Zeile mit Ümlauten und 123456."]
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    info = pyft.data.prepare(src, tok_dir, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["tokenizer"]["backend"] == info.backend == "hf"
    assert meta["tokenizer"]["fallback_reason"] == info.fallback_reason == reason
    assert f"(backend hf, fast path off: {reason})" in info.summary()
    hf = AutoTokenizer.from_pretrained(tok_dir)
    for t, row in zip(texts, _rows(tmp_path / "out")):
        assert row["input_ids"].tolist() == hf(t)["input_ids"] + [hf.eos_token_id]
    assert main(["data", "inspect", str(tmp_path / "out"), "--no-color"]) == 0
    assert f"fast path off: {reason}" in capsys.readouterr().out


def test_fast_backend_is_reported_without_a_reason(tokenizer_dirs, tmp_path, capsys):
    from pyft import _core
    from pyft.cli.main import main

    assert _core.Tokenizer.from_file(str(tokenizer_dirs["llama3"] / "tokenizer.json")).fallback_reason is None
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS[:2]])
    info = pyft.data.prepare(src, tokenizer_dirs["llama3"], tmp_path / "out")
    assert info.backend == "fast-bpe" and info.fallback_reason is None
    assert info.meta["tokenizer"]["fallback_reason"] is None
    assert "(backend fast-bpe)" in info.summary()
    assert main(["data", "inspect", str(tmp_path / "out"), "--no-color"]) == 0
    shown = capsys.readouterr().out
    assert "(backend fast-bpe)" in shown and "fast path off" not in shown
