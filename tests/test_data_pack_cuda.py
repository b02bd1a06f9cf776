"""Packed padding-free batches (:class:`pyft.data.PackedCollator`) on the attention kernels a GPU uses:
SDPA (fp32 and bf16) and FlashAttention-2 when ``flash_attn`` is importable.

Two checks per kernel. Isolation, exactly: a document's logits keep every bit when the other
documents of its packed row are replaced by different tokens (GEMMs, norms and RoPE work row by row
in a fixed order for a fixed shape; masked keys add exact zeros), so any attention across a
boundary shows. Equality with the unpadded documents (each run alone), to the rounding of the dtype.
The ``cpu`` cases run in the normal suite, the ``cuda`` ones in the GPU lane (``pytest -m gpu``).
"""

from __future__ import annotations

import pytest
import torch

import pyft.data
from pyft.data import PackedCollator
from pyft.testing import make_tiny_model

from devices import CUDA, UNIT_ROUNDOFF
from helpers import CONVERSATIONS, write_jsonl

CASES = [pytest.param("cpu", "sdpa", torch.float32, id="cpu-sdpa-f32"),
         pytest.param("cuda", "sdpa", torch.float32, marks=CUDA.marks, id="cuda-sdpa-f32"),
         pytest.param("cuda", "sdpa", torch.bfloat16, marks=CUDA.marks, id="cuda-sdpa-bf16"),
         pytest.param("cuda", "flash_attention_2", torch.bfloat16, marks=CUDA.marks, id="cuda-flash2-bf16")]


@pytest.fixture(scope="module")
def packed(tokenizer_dirs, tmp_path_factory):
    """A tiny Qwen2 (GQA) and one packed row holding every conversation, as the trainer collates it."""
    root = tmp_path_factory.mktemp("pack")
    model_dir = make_tiny_model(root / "m", tokenizer_dirs["chatml"], arch="qwen2")
    src = write_jsonl(root / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    pyft.data.prepare(src, model_dir, root / "packed", pack="bfd", max_len=512)
    ds = pyft.data.load(root / "packed")
    batch = PackedCollator()([ds[i] for i in range(len(ds))])
    return model_dir, batch


def _model(model_dir, attn, dtype, device):
    from transformers import AutoModelForCausalLM

    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn")
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=dtype).to(device).eval()


def _logits(model, batch, attn, device) -> torch.Tensor:
    keys = ("input_ids", "position_ids") + (("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
                                             if attn == "flash_attention_2" else ())
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k in keys}
    with torch.no_grad():
        # use_cache=False: with a KV cache transformers ignores the position resets
        return model(**inputs, use_cache=False).logits[0].float().cpu()


@pytest.mark.parametrize("device,attn,dtype", CASES)
def test_packed_documents_are_isolated_and_equal_unpadded(device, attn, dtype, packed):
    model_dir, batch = packed
    model = _model(model_dir, attn, dtype, device)
    cu = batch["cu_seq_lens_q"].tolist()
    assert len(cu) - 1 == len(CONVERSATIONS) and cu[-1] == batch["input_ids"].shape[1]
    logits = _logits(model, batch, attn, device)

    # isolation: change every other document's tokens (same lengths, same positions)
    vocab = model.config.vocab_size
    for d in range(len(cu) - 1):
        other = batch["input_ids"].clone()
        keep = torch.zeros(other.shape[1], dtype=torch.bool)
        keep[cu[d] : cu[d + 1]] = True
        other[0, ~keep] = (other[0, ~keep] * 7 + 13) % vocab
        swapped = _logits(model, {**batch, "input_ids": other}, attn, device)
        assert torch.equal(swapped[keep], logits[keep]), f"document {d} sees its neighbours"
        if d == 1:
            break  # two documents are enough: the first (no neighbour before it) and one in the middle

    # equality with each document run alone (no packing, no padding)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    for d in range(len(cu) - 1):
        a, b = cu[d], cu[d + 1]
        single = {"input_ids": ids[None, a:b], "position_ids": torch.arange(b - a)[None],
                  "cu_seq_lens_q": torch.tensor([0, b - a], dtype=torch.int32),
                  "cu_seq_lens_k": torch.tensor([0, b - a], dtype=torch.int32), "max_length_q": b - a,
                  "max_length_k": b - a}
        alone = _logits(model, single, attn, device)
        lab = labels[a + 1 : b]
        loss_packed = torch.nn.functional.cross_entropy(logits[a : b - 1], lab, ignore_index=-100, reduction="sum")
        loss_alone = torch.nn.functional.cross_entropy(alone[:-1], lab, ignore_index=-100, reduction="sum")
        tokens = int((lab != -100).sum())
        # The two runs differ only in GEMM shapes (summation order and split-K choices). fp32: each
        # token's loss goes through ~2 layers x (hidden 64 + 64 + MLP 176 + attention <= 512) sums and
        # a log-sum-exp over the vocabulary, so |delta| <= (2·816 + vocab)·u per unit of loss, which
        # is < 1e-3 for the ~4k-token fixture vocabulary. bf16: ~16 roundings (u = 2^-8) of the
        # activations between input and logits, each moving a token's loss by up to u per unit of its
        # size: 16·u ≈ 0.06 of the loss.
        u = UNIT_ROUNDOFF[dtype]
        rel = (2 * 816 + vocab) * u if dtype == torch.float32 else 16 * u
        assert tokens > 0
        assert abs(loss_packed.item() - loss_alone.item()) <= rel * abs(loss_alone.item()), d
