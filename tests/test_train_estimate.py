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


# -- several processes: DDP and FSDP per GPU ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Llama of 7,248 parameters whose shapes make the FSDP sums easy by hand: embeddings and output
    layer (64, 16), final norm (16,); per layer q/k/v/o (16, 16), gate/up (32, 16), down (16, 32) and
    two norms (16,): 2,592 parameters per layer, 2 layers."""
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("tiny")
    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(d)
    return d


def test_fsdp_full_fine_tuning_follows_the_formulas(tiny):
    """Rank 0's shards, the gathered working set and the activations of the tiny model, by hand."""
    whole = estimate(tiny, "full", 8, 1)
    assert whole.params == 1024 + 1024 + 16 + 2 * 2592 == 7248
    e = estimate(tiny, "full", 8, 1, nproc=2, parallel="fsdp")
    assert (e.parallel, e.nproc) == ("fsdp", 2)
    # Every dim 0 is even: each rank holds exactly half, in float32, with float32 gradients and AdamW moments.
    assert (e.weights, e.gradients, e.optimizer) == (4 * 3624, 4 * 3624, 8 * 3624)
    # Gathered in bf16: the root's weights and gradients (embeddings, output layer, final norm: 2,064
    # elements), two layers' weights, one layer's gradients (bf16) and its float32 reduce-scatter buffer.
    assert e.gathered == 2 * 2064 * 2 + 2 * 2592 * 2 + 2592 * (2 + 4)
    # Activations per process, as on one: 2 layers x 8 tokens x 2 bytes x (10 h + 3 i) + logits chunk (fp32, x2).
    assert e.activations == whole.activations == 2 * 8 * 2 * (10 * 16 + 3 * 32) + 8 * 64 * 4 * 2
    assert e.total == e.weights + e.gradients + e.optimizer + e.gathered + e.activations
    assert e.loading == whole.weights == 4 * 7248  # read whole into CPU memory before sharding
    # fp32 gathers in float32 and keeps float32 activations.
    f = estimate(tiny, "full", 8, 1, nproc=2, parallel="fsdp", precision="fp32")
    assert f.gathered == 2 * 2064 * 4 + 2 * 2592 * 4 + 2592 * (4 + 4)
    assert f.activations == 2 * 8 * 4 * (10 * 16 + 3 * 32) + 8 * 64 * 4 * 2
    assert (f.weights, f.gradients, f.optimizer) == (e.weights, e.gradients, e.optimizer)


def test_fsdp_shards_are_padded_as_fsdp2_pads_them(tiny):
    """3 processes: dim 0 splits in ceil(rows / 3)-row chunks (rank 0's, the largest): 64 -> 22 rows,
    32 -> 11, 16 -> 6; the reduce-scatter buffer holds 3 padded shards."""
    e = estimate(tiny, "full", 8, 1, nproc=3, parallel="fsdp")
    layer = 4 * 6 * 16 + 2 * 11 * 16 + 6 * 32 + 2 * 6  # q/k/v/o, gate/up, down, norms
    assert layer == 940
    shard = 2 * 22 * 16 + 6 + 2 * layer
    assert (e.weights, e.gradients, e.optimizer) == (4 * shard, 4 * shard, 8 * shard)
    assert shard > 7248 / 3
    assert e.gathered == 2 * 2064 * 2 + 2 * 2592 * 2 + 2592 * 2 + 4 * 3 * layer


@pytest.mark.parametrize("tuning", ["full", "lora", "qlora"])
def test_fsdp_sharded_parts_scale_as_one_over_n(tiny, tuning):
    """Weights, gradients and optimizer states fall as 1/N (the tiny dims and LoRA's r=8 divide by 2, 4
    and 8); the
    gathered working set and the activations do not depend on N; DDP keeps everything whole."""
    one = estimate(tiny, tuning, 8, 2, r=8)
    for n in (2, 4, 8):
        e = estimate(tiny, tuning, 8, 2, r=8, nproc=n, parallel="fsdp")
        assert e.gradients * n == one.gradients and e.optimizer * n == one.optimizer
        assert e.weights * n == pytest.approx(one.weights, abs=n)  # qlora: NF4 bytes rounded down once per rank
        assert e.activations == one.activations and e.trainable == one.trainable
        assert e.gathered == estimate(tiny, tuning, 8, 2, r=8, nproc=2, parallel="fsdp").gathered
        ddp = estimate(tiny, tuning, 8, 2, r=8, nproc=n, parallel="ddp")
        assert (ddp.parallel, ddp.gathered, ddp.total) == ("ddp", 0, one.total)
    assert estimate(tiny, tuning, 8, 2, r=8, nproc=4).parallel == "ddp"  # the default with several


def test_fsdp_lora_gathers_the_frozen_base_and_reduces_only_adapters(tiny):
    """LoRA r=2 under FSDP on 2 processes: the bf16 base and the fp32 adapters are sharded; only the
    adapters have gradients, so one layer's gradients are its adapters' (A (2, in), B (out, 2))."""
    e = estimate(tiny, "lora", 8, 1, r=2, nproc=2, parallel="fsdp")
    adapter_layer = 4 * 2 * (16 + 16) + 2 * 2 * (16 + 32) + 2 * (32 + 16)  # q/k/v/o, gate/up, down
    assert adapter_layer == 544 and e.trainable == 2 * adapter_layer
    # Shards: the base in bf16 (2 B), adapters in fp32; A (2, in) splits into 1-row halves, B (out, 2) too.
    assert e.weights == 2 * 7248 // 2 + 4 * adapter_layer
    assert (e.gradients, e.optimizer) == (4 * adapter_layer, 8 * adapter_layer)
    # Gathered: root weights only (nothing trained there), two layers' base + adapters in bf16, one
    # layer's adapter gradients in bf16 plus their float32 reduce-scatter buffer.
    assert e.gathered == 2 * 2064 + 2 * 2 * (2592 + adapter_layer) + adapter_layer * (2 + 4)


def test_fsdp_cpu_offload_moves_the_shards_off_the_gpu(tiny):
    e = estimate(tiny, "full", 8, 1, nproc=4, parallel="fsdp")
    off = estimate(tiny, "full", 8, 1, nproc=4, parallel="fsdp", cpu_offload=True)
    assert off.offloaded == e.weights + e.gradients + e.optimizer
    assert (off.weights, off.gradients, off.optimizer) == (0, 0, 0)
    assert off.total == e.gathered + e.activations and off.loading == e.loading


def test_parallel_advice_ladder(llama8b):
    """ddp when the whole model fits, else fsdp, else a lighter tuning (lora, then qlora) the same way;
    gradient checkpointing when only it makes the difference; else 'does not fit'."""
    from pyft.train.estimate import ladder, recommend_parallel

    assert ladder("full") == ["full", "lora", "qlora"] and ladder("lora") == ["lora", "qlora"]
    assert ladder("ia3") == ["ia3", "lora", "qlora"]
    keys = [(t, p) for t in ("full", "lora", "qlora") for p in ("ddp", "fsdp")]
    est = {(t, p): estimate(llama8b, t, 2048, 4, nproc=8, parallel=p) for t, p in keys}
    ckpt = {(t, p): estimate(llama8b, t, 2048, 4, gradient_checkpointing=True, nproc=8, parallel=p) for t, p in keys}

    def gpu_for(e):  # a GPU just big enough for e (90 % usable)
        return e.total / GIB / 0.9 + 0.01

    def advice(gib, first="full"):
        return recommend_parallel(est, gib, 8, first, ckpt)

    assert advice(gpu_for(est[("full", "ddp")])).startswith("ddp with full: ")
    assert advice(gpu_for(est[("full", "fsdp")])).startswith("fsdp with full: ")
    assert "each GPU holding 1/8 of the weights" in advice(gpu_for(est[("full", "fsdp")]))
    assert advice(gpu_for(ckpt[("full", "fsdp")])).startswith("fsdp with full with gradient checkpointing: ")
    # Down the ladder from lora (4 x 2048 tokens per GPU: activations dominate, so checkpointing decides):
    # each step's GPU is too small for the ones before it.
    # (QLoRA under DDP needs more than LoRA under FSDP here, so LoRA/FSDP is advised before it.)
    steps = [(ckpt, "lora", "ddp"), (ckpt, "lora", "fsdp"), (ckpt, "qlora", "fsdp")]
    assert ckpt[("qlora", "ddp")].total > ckpt[("lora", "fsdp")].total
    peaks = [table[(t, p)].total for table, t, p in steps]
    assert peaks == sorted(peaks, reverse=True) and est[("lora", "fsdp")].total > peaks[0]
    for table, t, p in steps:
        assert advice(gpu_for(table[(t, p)]), "lora").startswith(f"{p} with {t} with gradient checkpointing: ")
    assert advice(gpu_for(ckpt[("qlora", "fsdp")]) - 0.1, "lora").startswith("does not fit on 8 GPUs of ")
    assert recommend_parallel(est, None, 8, "full", ckpt).startswith("give --gpu-memory")
    # FSDP reads the whole fp32 model into CPU memory, never onto one GPU.
    assert ckpt[("full", "fsdp")].loading == est[("full", "ddp")].weights > ckpt[("full", "fsdp")].total


def test_parallel_report_shows_the_per_gpu_split(tiny, capsys):
    from pyft.cli.main import main

    assert main(["estimate", "--model", str(tiny), "--tuning", "full", "--seq-len", "8", "--batch", "1",
                 "--nproc", "2", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "per process" in out and "2 processes, one GPU each" in out and "(GiB per GPU)" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("full ")}
    assert set(rows) == {"ddp", "fsdp"} and "gathered" in out
    assert "recommendation (2 GPUs of 80 GiB): ddp with full: " in out
    assert main(["estimate", "--model", str(tiny), "--tuning", "full", "--nproc", "4", "--parallel", "fsdp",
                 "--cpu-offload", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "CPU" in out and "--cpu-offload: the shards" in out and "precision fp32" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("full ")] == ["fsdp"]
    # One process: the single-GPU table and advice, as before.
    assert main(["estimate", "--model", str(tiny), "--tuning", "full"]) == 0
    out = capsys.readouterr().out
    assert "engine" not in out and "recommendation: " in out


@pytest.mark.parametrize("flags, kwargs, message", [
    (["--parallel", "fsdp"], {"parallel": "fsdp"}, "--parallel fsdp: needs --nproc 2 or more"),
    (["--nproc", "0"], {"nproc": 0}, "--nproc: expected 1 or more processes, got 0"),
    (["--nproc", "2", "--cpu-offload"], {"nproc": 2, "cpu_offload": True}, "--cpu-offload: needs --parallel fsdp"),
    (["--nproc", "2", "--parallel", "ddp", "--cpu-offload"], {"nproc": 2, "parallel": "ddp", "cpu_offload": True},
     "--cpu-offload: needs --parallel fsdp"),
    (["--nproc", "2", "--parallel", "fsdp", "--optim", "adamw_8bit"],
     {"nproc": 2, "parallel": "fsdp", "optim": "adamw_8bit"}, "--optim adamw_8bit: not available with --parallel fsdp"),
])
def test_bad_parallel_flags_are_refused(tiny, capsys, flags, kwargs, message):
    """The CLI says what is wrong (exit 1, the flag named); the API raises the same ConfigError."""
    from pyft.cli.main import main

    assert main(["estimate", "--model", str(tiny), "--tuning", "full", *flags]) == 1
    assert f"pyft: error: {message}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=message):
        estimate(tiny, "full", 8, 1, **kwargs)


def test_parallel_choices_match_training(tiny, capsys):
    from pyft.cli.main import build_parser, main
    from pyft.train.estimate import PRECISIONS
    from pyft.train.parallel import PARALLEL_MODES

    est_parser = build_parser()._subparsers._group_actions[0].choices["estimate"]
    choices = {a.dest: a.choices for a in est_parser._actions}
    assert tuple(choices["parallel"]) == PARALLEL_MODES and tuple(choices["precision"]) == PRECISIONS
    with pytest.raises(SystemExit):
        main(["estimate", "--model", str(tiny), "--nproc", "2", "--parallel", "zero3"])
    assert "invalid choice: 'zero3'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        estimate(tiny, "full", 8, 1, precision="fp8")


@pytest.mark.slow
def test_bench_fsdp_smoke_state_matches_the_estimate(tmp_path):
    """``tools/bench_fsdp.py`` on the tiny shape, 1 and 2 processes, one step: every rank's parameters,
    gradients and AdamW states (local FSDP shards) are what ``estimate`` predicts, up to AdamW's
    4-byte ``step`` tensors, and FSDP halves them."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, str(root / "tools" / "bench_fsdp.py"), "--shape", "tiny", "--steps", "1",
                        "--procs", "1,2", "--json", str(out)], capture_output=True, text=True, env=env, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert {(row["nproc"], row["mode"]) for row in summary["rows"]} == {(1, "single"), (2, "ddp"), (2, "fsdp")}
    for row in summary["rows"]:
        assert 0 <= row["state"] - row["est_state"] <= 4 * 64, row  # one float32 step per parameter tensor
    assert summary["fsdp_state_fraction"]["2"] == pytest.approx(0.5, abs=1e-3)
