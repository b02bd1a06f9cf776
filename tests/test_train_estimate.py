"""Memory estimates and method advice on a Llama-3-8B-shaped config (meta device, nothing loaded)."""

from __future__ import annotations

import pytest

from pyft.errors import ConfigError
from pyft.train.estimate import GIB, NF4_BITS, OPTIMIZERS, estimate, format_report, optimizer_bytes, recommend


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


def test_nf4_double_quant_bits():
    # 4-bit codes + an 8-bit scale per 64 + a float32 scale per 256 scales (QLoRA's 0.127 bit/param)
    assert NF4_BITS == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(NF4_BITS, 3) == 4.127


def test_optimizer_bytes_per_optimizer():
    sizes = [4095, 4096, 100_000, 300]
    assert optimizer_bytes(sizes, "adamw") == (8 * sum(sizes), 0)
    eight = 8 * 4095 + (2 * 4096 + 8 * 16) + (2 * 100_000 + 8 * 391) + 8 * 300  # ceil(100000 / 256) = 391
    assert optimizer_bytes(sizes, "adamw_8bit") == (eight, 0)
    assert optimizer_bytes(sizes, "paged_adamw_8bit") == (eight - 2 * 100_000 - 8 * 391, 2 * 100_000 + 8 * 391)
    assert optimizer_bytes(sizes, "paged_adamw") == (8 * (4095 + 4096 + 300), 8 * 100_000)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        optimizer_bytes(sizes, "sgd")


def test_8bit_and_paged_optimizer_estimates(llama8b):
    from pyft.cli.main import build_parser
    from pyft.train import optim

    full, full8 = estimate(llama8b, "full", 2048, 1), estimate(llama8b, "full", 2048, 1, optim="adamw_8bit")
    # every Llama-3-8B tensor has >= 4096 elements: 2 bytes + 8 per 256 (2.03 B/param instead of 8)
    assert full8.optimizer / full8.params == pytest.approx(2 + 8 / 256, rel=1e-4)
    assert full.total - full8.total == full.optimizer - full8.optimizer
    lora, lora8 = estimate(llama8b, "qlora", 2048, 1), estimate(llama8b, "qlora", 2048, 1, optim="adamw_8bit")
    assert lora8.optimizer == pytest.approx(lora.optimizer * (2 + 8 / 256) / 8, rel=1e-3)
    paged = estimate(llama8b, "qlora", 2048, 1, optim="paged_adamw_8bit")
    # r=16: A of q/k/v/o/gate/up (16 x 4096) stay on the GPU, down's A (16 x 14336) and gate/up's B are paged
    assert paged.optimizer + paged.optimizer_cpu == lora8.optimizer
    assert paged.optimizer_cpu == 32 * 3 * (2 * 16 * 14336 + 8 * 16 * 14336 // 256)
    report = format_report(llama8b, 2048, 1, ["full", "qlora"], 16, False, 24, 5000, optim="adamw_8bit")
    assert "optimizer adamw_8bit" in report
    assert f"full {(full.optimizer - full8.optimizer) / GIB:.2f} GiB" in report  # 44.64 GiB saved
    assert "pinned CPU" in format_report(llama8b, 2048, 1, ["qlora"], 16, False, 24, 5000, optim="paged_adamw")
    assert OPTIMIZERS == optim.OPTIMIZERS
    for name in OPTIMIZERS:  # `pyft estimate --optim` takes the names train.optim takes
        assert build_parser().parse_args(["estimate", "--model", "m", "--optim", name]).optim == name


def test_alignment_objectives(llama8b):
    sft = estimate(llama8b, "lora", 1024, 4)
    dpo = estimate(llama8b, "lora", 1024, 4, method="dpo")
    assert dpo.reference == 0 and dpo.weights == sft.weights  # the base with adapters off, no copy
    two_rows = estimate(llama8b, "lora", 1024, 8)
    assert dpo.activations == two_rows.activations  # 4 pairs keep 8 sequences' activations
    kto = estimate(llama8b, "lora", 1024, 4, method="kto")
    assert kto.activations == sft.activations  # the KL pass keeps nothing for backward
    full = estimate(llama8b, "full", 1024, 4, method="dpo")
    assert full.reference == 4 * full.params and full.total == estimate(llama8b, "full", 1024, 8).total + full.reference
    assert estimate(llama8b, "full", 1024, 4, method="dpo", precompute_ref=True).reference == 0
    assert estimate(llama8b, "full", 1024, 4, method="orpo").reference == 0
    report = format_report(llama8b, 1024, 4, ["full", "lora"], 16, False, None, None, method="dpo")
    assert "dpo: batch 4 pairs (chosen + rejected: 8 sequences)" in report and "ref." in report
    assert "frozen copy (align.precompute_ref: true removes it)" in report
    with pytest.raises(ConfigError, match="method: unknown method 'ppo'"):
        estimate(llama8b, "lora", 1024, 4, method="ppo")
