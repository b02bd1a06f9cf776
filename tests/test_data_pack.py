"""Packing invariants, collators, and packed-vs-unpacked loss equality on a tiny model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pyft.data
from pyft.errors import DataError
from pyft.data import PackedCollator, PaddedCollator

from helpers import CONVERSATIONS, write_jsonl


def _docs(ds) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    out = []
    for i in range(len(ds)):
        row = ds[i]
        start = 0
        for n in row["seq_lengths"].tolist():
            out.append((tuple(row["input_ids"][start:start + n].tolist()), tuple(row["labels"][start:start + n].tolist())))
            start += n
    return out


def _check_packed(out_dir, max_len):
    ds = pyft.data.load(out_dir)
    for i in range(len(ds)):
        row = ds[i]
        n = len(row["input_ids"])
        assert n <= max_len
        assert len(row["labels"]) == len(row["position_ids"]) == n == int(row["seq_lengths"].sum())
        starts = np.concatenate([[0], np.cumsum(row["seq_lengths"])[:-1]])
        assert (row["position_ids"][starts] == 0).all()
        assert (np.diff(row["position_ids"]) != 1).sum() == len(starts) - 1  # resets only at boundaries
        assert (row["labels"][starts] == -100).all()  # never predict across a boundary
    return ds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(alphabet="abc xyzé\n0123", min_size=1, max_size=300).filter(str.strip), min_size=1, max_size=40),
    max_len=st.integers(min_value=16, max_value=200),
    overlong=st.sampled_from(["truncate", "split", "drop"]),
)
@example(texts=["0a0a0a0a0a0a0a0a"], max_len=16, overlong="drop")  # every record overlong: found by hypothesis
def test_packing_invariants(texts, max_len, overlong, tokenizer_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pack")
    src = write_jsonl(tmp / "t.jsonl", [{"text": t} for t in texts])
    common = dict(max_len=max_len, overlong=overlong, train_on="all")
    try:
        plain = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp / "plain", **common)
    except DataError as e:  # every text longer than max_len under `drop`: refused, nothing written
        assert overlong == "drop" and f"all {len(texts)} records were dropped ({len(texts)} overlong)" in str(e)
        assert not (tmp / "plain").exists()
        return
    packed = pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp / "packed", pack="bfd", **common)
    ds = _check_packed(tmp / "packed", max_len)
    # Every kept document (and so every kept token) is placed exactly once.
    assert Counter(_docs(ds)) == Counter(_docs(pyft.data.load(tmp / "plain")))
    assert packed.tokens == plain.tokens
    s = packed.splits["train"]
    assert s["rows"] == len(ds)
    if s["rows"]:
        assert s["packing_efficiency"] == pytest.approx(s["tokens"] / (s["rows"] * max_len))


def test_packed_chat_and_collators(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS * 3])
    pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "p", pack="bfd", max_len=256)
    ds = _check_packed(tmp_path / "p", 256)
    batch = PackedCollator()([ds[i] for i in range(len(ds))])
    t = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, t)
    cu = batch["cu_seq_lens_q"].tolist()
    assert cu[0] == 0 and cu[-1] == t and len(cu) == 15 + 1
    assert batch["max_length_q"] == max(b - a for a, b in zip(cu, cu[1:]))
    assert all(batch["position_ids"][0, a] == 0 for a in cu[:-1])
    with pytest.raises(ValueError, match="PackedCollator"):
        PaddedCollator(pad_token_id=0)([ds[0]])


def test_padded_collator(tokenizer_dirs, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    pyft.data.prepare(src, tokenizer_dirs["chatml"], tmp_path / "u")
    ds = pyft.data.load(tmp_path / "u")
    items = [ds[i] for i in range(len(ds))]
    b = PaddedCollator(pad_token_id=7, pad_to_multiple_of=8)(items)
    longest = max(len(it["input_ids"]) for it in items)
    assert b["input_ids"].shape[1] == -(-longest // 8) * 8
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        assert b["input_ids"][r, :n].tolist() == it["input_ids"].tolist()
        assert (b["input_ids"][r, n:] == 7).all() and (b["labels"][r, n:] == -100).all()
        assert b["attention_mask"][r].sum() == n


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(attn, tokenizer_dirs, tmp_path):
    """No attention across documents: the summed token loss of a packed padding-free batch equals
    that of the same documents in a padded batch (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pyft.testing import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "m", tokenizer_dirs["chatml"], arch="qwen2")
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    pyft.data.prepare(src, model_dir, tmp_path / "packed", pack="bfd", max_len=512)
    pyft.data.prepare(src, model_dir, tmp_path / "plain", max_len=512)

    def token_loss_sum(batch):
        kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        with torch.no_grad():
            # use_cache=False: with a KV cache transformers ignores the position resets.
            logits = model(**kwargs, use_cache=False).logits.float()
        labels = batch["labels"][:, 1:]
        lp = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        return lp.item(), int((labels != -100).sum())

    packed_ds, plain_ds = pyft.data.load(tmp_path / "packed"), pyft.data.load(tmp_path / "plain")
    assert len(packed_ds) < len(plain_ds)
    packed = token_loss_sum(PackedCollator()([packed_ds[i] for i in range(len(packed_ds))]))
    plain = token_loss_sum(PaddedCollator(pad_token_id=0)([plain_ds[i] for i in range(len(plain_ds))]))
    assert packed[1] == plain[1] > 0
    assert packed[0] == pytest.approx(plain[0], rel=1e-5)
