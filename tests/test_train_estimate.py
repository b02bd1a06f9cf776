"""Memory estimates and method advice on a Llama-3-8B-shaped config (meta device, nothing loaded)."""

from __future__ import annotations

import pytest

from pyft.train.estimate import GIB, estimate, format_report, recommend


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("llama8b")
    LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False).save_pretrained(d)
    return d


def test_parameter_counts_and_bytes(llama8b):
    full = estimate(llama8b, "full", 2048, 1)
    assert full.params == 8_030_261_248  # Llama-3-8B
    assert full.weights == 4 * full.params and full.optimizer == 8 * full.params
    lora = estimate(llama8b, "lora", 2048, 1, r=16)
    # r * (in + out) over q, k, v, o, gate, up, down in 32 layers
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 2 + (14336 + 4096))
    assert lora.trainable == 32 * per_layer
    qlora = estimate(llama8b, "qlora", 2048, 1, r=16)
    assert 5.0 < qlora.weights / GIB < 5.6  # NF4 decoder + bf16 embeddings and head
    assert full.total > lora.total > qlora.total
    ckpt = estimate(llama8b, "lora", 2048, 1, r=16, gradient_checkpointing=True)
    assert ckpt.activations < lora.activations / 4


def test_recommendations(llama8b):
    est = {m: estimate(llama8b, m, 2048, 1) for m in ("full", "lora", "qlora")}
    ckpt = {m: estimate(llama8b, m, 2048, 1, gradient_checkpointing=True) for m in ("full", "lora", "qlora")}
    assert recommend(est, 16, 10_000, ckpt) == ("qlora with gradient checkpointing: only 4-bit base weights fit; "
                                                "LoRA on an NF4 base")
    assert recommend(est, 24, 10_000, ckpt).startswith("lora with gradient checkpointing: ")
    assert recommend(est, 80, 10_000, ckpt).startswith("lora: ")
    assert recommend(est, 80, 1_000_000, ckpt).startswith("lora: ")  # full (>128 GiB) does not fit in 80
    assert recommend(est, 200, 1_000_000, ckpt).startswith("full: ")
    assert recommend(est, 4, 1000, ckpt).startswith("nothing fits")
    report = format_report(llama8b, 2048, 1, ["full", "lora", "qlora"], 16, False, 24, 5000)
    assert "8,030.3M parameters" in report and "recommendation: lora with gradient checkpointing" in report
