"""pyft.data.sequences: every layout holds each (prompt, completion) sequence once, with the right positions and
masks; the padded layout is TRL's own preference batch; KTO's KL pairs are TRL's rotation."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from pyft.data.sequences import LAYOUTS, KtoCollator, PreferenceCollator, build_sequence_batch
from trl_oracle import trl_kl_rotation

PAD = 0


def _sequences(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(1, 1000, int(rng.integers(0, 8))), rng.integers(1, 1000, int(rng.integers(1, 12))))
            for _ in range(n)]
    seqs[0] = (seqs[0][0], seqs[0][1][:1])  # a one-token completion
    return seqs


def _unpack(batch, s):
    """Positions of sequence ``s``: (row, [columns])."""
    rows, cols = torch.nonzero(batch["seq_ids"] == s, as_tuple=True)
    assert len(set(rows.tolist())) == 1, f"sequence {s} split over rows"
    return int(rows[0]), cols


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 5), (2, 12)])
def test_every_sequence_appears_once_with_positions_and_masks(layout, seed, n):
    seqs = _sequences(seed, n)
    batch = build_sequence_batch(seqs, PAD, layout)
    assert batch["n_seqs"] == n
    assert (batch["seq_ids"] >= 0).sum() == sum(len(p) + len(c) for p, c in seqs)  # nothing else is placed
    for s, (prompt, completion) in enumerate(seqs):
        row, cols = _unpack(batch, s)
        n_tok = len(prompt) + len(completion)
        assert torch.equal(cols, torch.arange(cols[0], cols[0] + n_tok))  # contiguous
        assert batch["input_ids"][row, cols].tolist() == [*prompt.tolist(), *completion.tolist()]
        assert batch["position_ids"][row, cols].tolist() == list(range(n_tok))
        assert batch["completion"][row, cols].tolist() == [False] * len(prompt) + [True] * len(completion)
    assert batch["completion_lengths"].tolist() == [len(c) for _, c in seqs]
    pad = batch["seq_ids"] < 0
    assert not batch["completion"][pad].any() and (batch["input_ids"][pad] == PAD).all()
    for key in ("input_ids", "position_ids", "seq_ids"):
        assert batch[key].dtype == torch.int64


@pytest.mark.parametrize("seed,n", [(1, 5), (2, 12), (3, 30)])
def test_packed_rows_never_exceed_the_longest_sequence(seed, n):
    seqs = _sequences(seed, n)
    lengths = [len(p) + len(c) for p, c in seqs]
    batch = build_sequence_batch(seqs, PAD, "packed")
    assert batch["input_ids"].shape[1] == max(lengths)
    assert batch["input_ids"].shape[0] < n  # packing saves rows here
    assert "attention_mask" not in batch and "cu_seq_lens_q" not in batch
    # Padding tails count up from 0, so no padding position continues a sequence's positions.
    for r in range(batch["input_ids"].shape[0]):
        tail = batch["seq_ids"][r] < 0
        assert batch["position_ids"][r][tail].tolist() == list(range(int(tail.sum())))


def test_padded_and_flat_layouts():
    seqs = _sequences(4, 6)
    lengths = [len(p) + len(c) for p, c in seqs]
    padded = build_sequence_batch(seqs, PAD, "padded")
    assert padded["input_ids"].shape == (6, max(lengths))
    assert torch.equal(padded["seq_ids"][:, 0], torch.arange(6))  # one row per sequence, in order
    assert torch.equal(padded["attention_mask"], (padded["seq_ids"] >= 0).long())
    flat = build_sequence_batch(seqs, PAD, "flat")
    assert flat["input_ids"].shape == (1, sum(lengths))
    cu = np.concatenate([[0], np.cumsum(lengths)])
    assert flat["cu_seq_lens_q"].tolist() == cu.tolist() == flat["cu_seq_lens_k"].tolist()
    assert flat["cu_seq_lens_q"].dtype == torch.int32
    assert flat["max_length_q"] == flat["max_length_k"] == max(lengths)
    assert "attention_mask" not in flat


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="unknown layout"):
        build_sequence_batch(_sequences(0, 2), PAD, "ragged")


def _preference_rows(seed, n):
    rng = np.random.default_rng(seed)

    def ids(lo, hi):
        return rng.integers(1, 1000, int(rng.integers(lo, hi + 1))).astype(np.int64)

    return [{"prompt": ids(1, 6), "chosen": ids(1, 9), "rejected": ids(1, 9)} for _ in range(n)]


def test_padded_preference_batch_is_trls():
    """The padded layout of a preference batch is exactly ``DataCollatorForPreference``'s batch."""
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    rows = _preference_rows(5, 4)
    ours = PreferenceCollator(PAD, "padded")(rows)
    theirs = trl_dpo.DataCollatorForPreference(pad_token_id=PAD)(
        [{k + "_ids": r[k].tolist() for k in ("prompt", "chosen", "rejected")} for r in rows])
    assert ours["n_pairs"] == 4 and ours["n_seqs"] == 8
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(ours["completion"].long(), theirs["completion_mask"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_preference_collator_puts_chosen_first(layout):
    rows = _preference_rows(6, 3)
    batch = PreferenceCollator(PAD, layout)(rows)
    expected = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    for s, (prompt, completion) in enumerate(expected):
        row, cols = _unpack(batch, s)
        assert batch["input_ids"][row, cols].tolist() == [*prompt.tolist(), *completion.tolist()]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kto_kl_sequences_are_trls_rotation(layout):
    """KL sequence i is prompt_i + completion_{i-1}: TRL's ``[y_n, y_1, ..., y_{n-1}]``."""
    rows = _preference_rows(7, 5)
    items = [{"prompt_ids": r["prompt"], "completion_ids": r["chosen"], "label": i % 2 == 0}
             for i, r in enumerate(rows)]
    batch = KtoCollator(PAD, layout)(items)
    assert batch["desirable"].tolist() == [True, False, True, False, True]
    assert batch["desirable"].dtype == torch.bool
    kl_completions = trl_kl_rotation()({"completion_ids": [it["completion_ids"].tolist() for it in items]})
    kl = batch["kl"]
    for s, (it, completion) in enumerate(zip(items, kl_completions["KL_completion_ids"])):
        row, cols = _unpack(kl, s)
        assert kl["input_ids"][row, cols].tolist() == [*it["prompt_ids"].tolist(), *completion]
        assert kl["completion"][row, cols].tolist() == [False] * len(it["prompt_ids"]) + [True] * len(completion)
        row, cols = _unpack(batch, s)
        assert batch["input_ids"][row, cols].tolist() == [*it["prompt_ids"].tolist(), *it["completion_ids"].tolist()]
    assert "kl" not in KtoCollator(PAD, layout, with_kl=False)(items)
