"""pyft.losses.forward: sequence log-probs against TRL 1.16's fused LM head on TRL-collated batches.

The oracle is what ``DPOTrainer._compute_loss`` / ``KTOTrainer._compute_kl_logps`` do: TRL's collator
pads the sequences, ``add_fused_lm_head`` patches a copy of the model, and the summed per-token
log-probs of the completion labels are the sequence log-probs.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pyft import load_model
from pyft.losses.forward import sequence_logps
from pyft.data.sequences import LAYOUTS, KtoCollator, PreferenceCollator
from pyft.testing import make_tiny_model
from trl_oracle import trl_kl_rotation

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")

pytestmark = pytest.mark.usefixtures("single_thread")

ARCHS = ("llama", "qwen2")  # qwen2: GQA, tied embeddings


@pytest.fixture(scope="module")
def models(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("align_forward")
    out = {}
    for arch in ARCHS:
        model = load_model(make_tiny_model(base / arch, tokenizer_dirs["chatml"], arch=arch), dtype="float32")
        assert model.dtype == torch.float32
        out[arch] = model
    return out


def _rows(seed: int, vocab: int, n: int = 5) -> list[dict[str, np.ndarray]]:
    """Preference rows with prompts of 0-9 tokens and completions of 1-12 (ids from the whole vocabulary)."""
    rng = np.random.default_rng(seed)

    def ids(lo, hi):
        return rng.integers(0, vocab, int(rng.integers(lo, hi + 1))).astype(np.int64)

    rows = [{"prompt": ids(1, 9), "chosen": ids(1, 12), "rejected": ids(1, 12)} for _ in range(n)]
    rows[0]["rejected"] = rows[0]["rejected"][:1]  # a one-token completion
    rows[1]["prompt"] = rows[1]["prompt"][:0]  # no prompt: the completion's first token has no context to score
    return rows


def _fused_copy(model):
    fused = copy.deepcopy(model)
    trl_utils.add_fused_lm_head(fused)
    return fused


def _trl_preference_logps(fused, rows, pad):
    """``[2B]`` summed completion log-probs (chosen first) as ``DPOTrainer._compute_loss`` gets them."""
    examples = [{"prompt_ids": r["prompt"].tolist(), "chosen_ids": r["chosen"].tolist(),
                 "rejected_ids": r["rejected"].tolist()} for r in rows]
    batch = trl_dpo.DataCollatorForPreference(pad_token_id=pad)(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(1), batch


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(ours, theirs, rtol):
    assert ours.keys() == theirs.keys() and ours
    for name in theirs:
        scale = theirs[name].abs().max().clamp_min(1e-12)
        err = ((ours[name] - theirs[name]).abs().max() / scale).item()
        assert err <= rtol, f"{name}: relative gradient error {err:.3g}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_logps_match_trl(models, arch, layout):
    """Packed and flat rows (no attention mask: transformers masks block-diagonally from the restarting
    ``position_ids``, also under sdpa on the CPU) and padded rows all give TRL's sequence log-probs."""
    model = models[arch]
    pad = model.config.pad_token_id
    rows = _rows(1, model.config.vocab_size)
    with torch.no_grad():
        theirs, trl_batch = _trl_preference_logps(_fused_copy(model), rows, pad)
        out = sequence_logps(model, PreferenceCollator(pad, layout)(rows))
    assert out.logps.dtype == torch.float32
    err = (out.logps - theirs).abs().max().item()
    assert err <= 1e-5, f"max abs error {err:.3g}\n{out.logps}\n{theirs}"
    # Every completion token but a sequence's first is scored (TRL: the shifted completion mask).
    assert torch.equal(out.scored, trl_batch["completion_mask"][:, 1:].sum(1).float())


@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_logps_gradients_match_trl(models, arch):
    """d(Σ logps)/dθ of a packed batch equals TRL's fused-head gradient (relative 1e-5 per parameter)."""
    model = models[arch]
    pad = model.config.pad_token_id
    rows = _rows(2, model.config.vocab_size)
    fused = _fused_copy(model)
    fused.zero_grad()
    theirs, _ = _trl_preference_logps(fused, rows, pad)
    theirs.sum().backward()
    model.zero_grad()
    sequence_logps(model, PreferenceCollator(pad, "packed")(rows)).logps.sum().backward()
    ours = _grads(model)
    model.zero_grad()
    _assert_grads_close(ours, _grads(fused), rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunking_and_layouts_agree(models, arch):
    """``chunk_tokens=3`` (many chunks, recomputed in backward) equals one chunk; padded equals packed."""
    model = models[arch]
    pad = model.config.pad_token_id
    rows = _rows(3, model.config.vocab_size)
    results = {}
    for layout, chunk in [("packed", 4096), ("packed", 3), ("padded", 4096)]:
        model.zero_grad()
        out = sequence_logps(model, PreferenceCollator(pad, layout)(rows), chunk_tokens=chunk)
        (out.logps * torch.linspace(0.5, 1.5, len(out.logps))).sum().backward()
        results[layout, chunk] = out.logps.detach(), _grads(model)
    model.zero_grad()
    ref_logps, ref_grads = results["packed", 4096]
    for key in [("packed", 3), ("padded", 4096)]:
        logps, grads = results[key]
        assert (logps - ref_logps).abs().max().item() <= 1e-5, key
        _assert_grads_close(grads, ref_grads, rtol=1e-5)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_kto_kl_logps_match_trl(models, layout):
    """The KL sequences of pyft's KTO batch score as TRL's ``KTOTrainer._compute_kl_logps`` on TRL's own
    KL pairs (the rotation ``add_kl_completion_ids`` and ``DataCollatorForUnpairedPreference``)."""
    model = models["llama"]
    pad = model.config.pad_token_id
    rows = _rows(4, model.config.vocab_size, n=6)
    items = [{"prompt_ids": r["prompt"], "completion_ids": r["chosen"], "label": i % 3 == 0}
             for i, r in enumerate(rows)]
    examples = [{"prompt_ids": it["prompt_ids"].tolist(), "completion_ids": it["completion_ids"].tolist(),
                 "label": it["label"]} for it in items]
    kl = trl_kl_rotation()({"completion_ids": [e["completion_ids"] for e in examples]})["KL_completion_ids"]
    for e, k in zip(examples, kl):
        e["KL_completion_ids"] = k
    trl_batch = trl_kto.DataCollatorForUnpairedPreference(pad_token_id=pad)(examples)
    stub = types.SimpleNamespace(calculate_KL=True)
    with torch.no_grad():
        theirs = trl_kto.KTOTrainer._compute_kl_logps(stub, _fused_copy(model), trl_batch)
        batch = KtoCollator(pad, layout)(items)
        ours = sequence_logps(model, batch["kl"]).logps
        ours_main = sequence_logps(model, batch).logps
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert not torch.allclose(ours, ours_main)  # the KL pairs are not the examples themselves


def test_align_imports_first():
    """``pyft.align`` imports in a fresh interpreter before ``pyft.train`` (it used to be a circular import)."""
    proc = subprocess.run([sys.executable, "-c", "import pyft.align.objectives"], check=False, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
