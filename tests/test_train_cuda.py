"""Training on CUDA: a QLoRA step and a DPO step in bf16, fp16 with the gradient scaler, and the 8-bit
and paged AdamW against bitsandbytes' CUDA optimizers and PyTorch reference update.

Tests that take a ``device`` run their ``cpu`` case in the normal suite and their ``cuda`` case in the
GPU lane (``pytest -m gpu``, see ``tools/gpu-check``); the others are CUDA-only. The models are the tiny
random-init fixtures of :mod:`pyft.testing`; what is checked is that the CUDA code paths run and do
the right thing (finite loss, adapters move, frozen weights keep every bit), not that they learn.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import pyft.data
from pyft.quant import NF4Linear
from pyft.testing import make_tiny_model
from pyft.testing.preference import rule_task
from pyft.train import build_trainer, load_config
from pyft.train.blockwise8 import BLOCK, code_map
from pyft.train.optim8bit import AdamW8bit, PagedAdamW8bit

from devices import CUDA, DEVICES, requires_cuda
from helpers import demo_task, perturb_adapters

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sft_task(tokenizer_dirs, tmp_path_factory) -> tuple[Path, Path]:
    """A small Llama (hidden 128) and 60 prepared single-turn demo conversations."""
    return demo_task(tmp_path_factory.mktemp("sft"), tokenizer_dirs["chatml"], n=60)


@pytest.fixture(scope="module")
def pref_task(tokenizer_dirs, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny Llama and the preference pairs of :func:`pyft.testing.preference.rule_task`."""
    root = tmp_path_factory.mktemp("pref")
    files = rule_task(root / "task")
    model = make_tiny_model(root / "model", tokenizer_dirs["chatml"], arch="llama")
    pyft.data.prepare(files["pref"], model, root / "data", val_ratio=0.2, seed=0)
    return model, root / "data"


def _config(model, data, out, method, device, precision, **sections):
    train = {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "schedule": "constant", "log_every": 1000,
             "precision": precision, "device": device, "seed": 0, **sections.pop("train", {})}
    return load_config(model=str(model), data=str(data), output=str(out), method=method,
                       lora={"r": 8, "alpha": 16, "dropout": 0.0}, train=train, **sections)


def _snapshot(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(trainable, frozen)`` copies on the CPU: trainable parameters, and every frozen parameter and buffer."""
    trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not p.requires_grad}
    frozen |= {f"buffer:{n}": b.detach().cpu().clone() for n, b in model.named_buffers()}
    return trainable, frozen


def _assert_trained_adapters_only(model, before) -> None:
    """Every LoRA B (zero at the start) and A moved; every frozen parameter and buffer kept its bits."""
    trainable, frozen = _snapshot(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable), sorted(trainable)[:5]
    moved = [n for n in trainable if not torch.equal(trainable[n], before[0][n])]
    assert sorted(moved) == sorted(trainable), sorted(set(trainable) - set(moved))[:5]
    assert all(trainable[n].abs().max() > 0 for n in trainable if ".lora_B." in n)
    assert sorted(frozen) == sorted(before[1])
    changed = [n for n in frozen if not torch.equal(frozen[n], before[1][n])]
    assert changed == [], changed[:5]


@pytest.fixture
def triton_calls(monkeypatch) -> list:
    """Devices of the Triton NF4 dequant calls made during the test (none off CUDA)."""
    calls: list = []
    try:
        import pyft.quant.triton_dequant as td
    except ImportError:  # no Triton: the dispatcher never calls the kernel
        return calls
    real = td.dequantize_nf4_triton
    monkeypatch.setattr(td, "dequantize_nf4_triton", lambda *a, **k: calls.append(a[0].device.type) or real(*a, **k))
    return calls


@pytest.mark.parametrize("device", DEVICES)
def test_qlora_steps_in_bf16(device, sft_task, tmp_path, triton_calls):
    """QLoRA in bf16: NF4 base on the device (dequantized by the Triton kernel on CUDA, in forward and
    backward), finite loss and gradient norm, adapters trained, the 4-bit base unchanged."""
    model, data = sft_task
    trainer = build_trainer(_config(model, data, tmp_path, "qlora", device, "bf16"))
    assert trainer.precision == "bf16" and trainer.device.type == device
    nf4 = [m for m in trainer.model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 7 * trainer.model.config.num_hidden_layers
    assert all(m.weight.device.type == device and m.compute_dtype == torch.bfloat16 for m in nf4)
    before = _snapshot(trainer.model)
    for _ in range(3):
        metrics = trainer.train_step()
        assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"]) and metrics["tokens"] > 0
    _assert_trained_adapters_only(trainer.model, before)
    if device == "cuda":
        assert triton_calls and set(triton_calls) == {"cuda"}
        assert 0 < torch.cuda.max_memory_allocated()


@requires_cuda
def test_qlora_gradients_on_cuda_equal_cpu(sft_task, tmp_path):
    """fp32 QLoRA: the first step's loss and adapter gradients on CUDA (Triton dequant, cuBLAS, SDPA
    kernels) equal the CPU's up to summation order. Bound: float32 (u = 6e-8) over ~10 chained
    reductions of length <= 352, the token sum (~500) and the vocabulary's log-sum-exp (~8k terms):
    (9·352 + 500 + 8192)·u ≈ 7e-4 of each tensor's largest entry; 1e-3."""
    grads, losses = {}, {}
    for device in ("cpu", "cuda"):
        trainer = build_trainer(_config(sft_task[0], sft_task[1], tmp_path / device, "qlora", device, "fp32"))
        perturb_adapters(trainer.model)  # the same non-zero A and B on both (each device has its own RNG)
        metrics, _ = trainer.accumulate_gradients()
        losses[device] = metrics["loss"]
        grads[device] = {n: p.grad.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-3)
    assert sorted(grads["cuda"]) == sorted(grads["cpu"])
    for name, g in grads["cpu"].items():
        scale = g.abs().max().clamp_min(1e-30)
        assert (grads["cuda"][name] - g).abs().max() <= 1e-3 * scale, name


@pytest.mark.parametrize("device,tuning", [("cpu", "lora"), pytest.param("cuda", "lora", marks=CUDA.marks),
                                           pytest.param("cuda", "qlora", marks=CUDA.marks)])
def test_dpo_steps_in_bf16(device, tuning, pref_task, tmp_path):
    """DPO (sigmoid) in bf16 with the policy's adapters off as the reference: finite loss and
    rewards, adapters trained, base frozen (no second copy of the weights)."""
    from pyft.align.reference import AdapterDisabledReference

    model, data = pref_task
    trainer = build_trainer(_config(model, data, tmp_path, "dpo", device, "bf16", tuning=tuning))
    assert isinstance(trainer.objective.reference, AdapterDisabledReference)
    assert trainer.device.type == device
    before = _snapshot(trainer.model)
    for _ in range(3):
        metrics = trainer.train_step()
        for key in ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert math.isfinite(metrics[key]), (key, metrics)
    _assert_trained_adapters_only(trainer.model, before)


@requires_cuda
def test_fp16_with_the_grad_scaler(sft_task, tmp_path):
    """fp16 autocast with dynamic loss scaling: fp32 master adapters, finite loss, the scale stays at
    its start (2^16) while nothing overflows, and the adapters train."""
    trainer = build_trainer(_config(*sft_task, tmp_path, "lora", "cuda", "fp16"))
    assert trainer.scaler is not None and trainer.precision == "fp16"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    before = _snapshot(trainer.model)
    for _ in range(3):
        metrics = trainer.train_step()
        assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    assert trainer.scaler.get_scale() == 2.0**16
    _assert_trained_adapters_only(trainer.model, before)


@requires_cuda
def test_fp16_overflow_skips_the_step_and_halves_the_scale(sft_task, tmp_path, monkeypatch):
    """What a gradient scaler is for: a step whose scaled fp16 gradients overflow is skipped (no
    parameter changes), the scale halves, and training goes on."""
    trainer = build_trainer(_config(*sft_task, tmp_path, "lora", "cuda", "fp16"))
    trainer.train_step()
    scale = trainer.scaler.get_scale()
    before = _snapshot(trainer.model)
    real_loss = trainer.objective.loss

    def huge(model, batch, totals):  # x 1e30: finite in float32, infinite once cast to fp16 in backward
        loss, part = real_loss(model, batch, totals)
        return loss * 1e30, part

    monkeypatch.setattr(trainer.objective, "loss", huge)
    trainer.train_step()
    after = _snapshot(trainer.model)
    assert all(torch.equal(after[0][n], before[0][n]) for n in before[0]), "an overflowing step changed parameters"
    assert trainer.scaler.get_scale() == scale / 2
    monkeypatch.setattr(trainer.objective, "loss", real_loss)
    metrics = trainer.train_step()
    assert math.isfinite(metrics["loss"])
    assert any(not torch.equal(p.detach().cpu(), before[0][n]) for n, p in trainer.model.named_parameters()
               if p.requires_grad)


# -- optimizers --------------------------------------------------------------------------------------------
HYPER = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
# 8-bit states: a remainder block, a bf16 tensor, a tensor above page_min_size (1e5); float32 states below 4096
SHAPES = [(64, 300), (BLOCK * 20 + 3,), (512, 256), (400_000,), (37, 11)]
DTYPES = [torch.float32, torch.float32, torch.bfloat16, torch.float32, torch.float32]


def _params(device, seed=0, dtypes=DTYPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(d).to(device)) for s, d in zip(SHAPES, dtypes)]


def _grad_stream(device, steps, seed=2):
    """Per step, gradients with a fixed per-element magnitude (neighbours differ, steps agree)."""
    gen = torch.Generator().manual_seed(seed)
    scale = [torch.rand(s, generator=gen) + 0.1 for s in SHAPES]
    for _ in range(steps):
        yield [(torch.randn(s, generator=gen) * m * 1e-2).to(device) for s, m in zip(SHAPES, scale)]


@pytest.mark.parametrize("device", DEVICES)
def test_8bit_adamw_step_equals_bitsandbytes_reference_update(device):
    """pyft's 8-bit AdamW on the device against bitsandbytes' pure-PyTorch 8-bit update run eagerly on
    the same device, one step at a time from the same states (10 steps): the parameters and scales
    are bit-identical (the same float32 operations; CUDA's elementwise kernels round like the CPU's:
    IEEE float32, correctly rounded sqrt and division). The new codes are too, except where the
    normalised state lies within an ulp of a midpoint between two codes (pyft compares with the
    midpoint, the reference takes an ``argmin`` of distances): there the codes are neighbours."""
    kernels = pytest.importorskip("bitsandbytes.backends.triton.kernels_optim")
    shapes, dtypes = [(64, 300), (BLOCK * 20 + 3,), (128, 256)], [torch.float32, torch.float32, torch.bfloat16]
    gen = torch.Generator().manual_seed(0)
    ours_p = [torch.nn.Parameter(torch.randn(s, generator=gen).to(d).to(device)) for s, d in zip(shapes, dtypes)]
    ref_p = [p.detach().clone() for p in ours_p]
    ours = AdamW8bit(ours_p, **HYPER)
    ref = [{"state1": torch.zeros(p.shape, dtype=torch.uint8, device=device),
            "state2": torch.zeros(p.shape, dtype=torch.uint8, device=device),
            "absmax1": torch.zeros(-(-p.numel() // BLOCK), device=device),
            "absmax2": torch.zeros(-(-p.numel() // BLOCK), device=device)} for p in ref_p]
    maps = (code_map(True).to(device), code_map(False).to(device))
    scale = [torch.rand(s, generator=gen) + 0.1 for s in shapes]
    ties = total = 0
    with torch.compiler.set_stance("force_eager"):
        for step in range(1, 11):
            grads = [(torch.randn(s, generator=gen) * m * 1e-2).to(device) for s, m in zip(shapes, scale)]
            for p, r, g, st in zip(ours_p, ref_p, grads, ref):
                if step > 1:  # start from the reference's states
                    for k, v in st.items():
                        ours.state[p][k].copy_(v)
                p.grad = g.to(p.dtype)
            ours.step()
            for p, g, st in zip(ref_p, grads, ref):
                kernels.optimizer_update_8bit_blockwise_pytorch(
                    p, g.to(p.dtype), st["state1"], st["state2"], 0.9, 0.999, 0.0, 0.0, HYPER["eps"], step,
                    HYPER["lr"], maps[0], maps[1], st["absmax1"], st["absmax2"], HYPER["weight_decay"], 1.0, False,
                    optimizer_name="adam")
            for i, (p, r, st) in enumerate(zip(ours_p, ref_p, ref)):
                s = ours.state[p]
                assert s["state1"].device.type == device and s["state1"].dtype == torch.uint8
                assert torch.equal(p.detach(), r), (step, shapes[i])
                assert torch.equal(s["absmax1"], st["absmax1"]) and torch.equal(s["absmax2"], st["absmax2"])
                for k in ("state1", "state2"):
                    differ = s[k] != st[k]
                    assert ((s[k].int() - st[k].int()).abs() <= 1).all(), (step, k)
                    ties, total = ties + int(differ.sum()), total + differ.numel()
    assert ties <= 1e-4 * total, (ties, total)


@requires_cuda
@pytest.mark.parametrize("paged", [False, True], ids=["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_adamw_tracks_bitsandbytes_fused_cuda_optimizer(paged):
    """Against bitsandbytes' fused CUDA ``AdamW8bit`` / ``PagedAdamW8bit`` (its own rounding to the
    8-bit codes, weight decay applied after the update), free-running for 20 steps at lr 1e-3: the
    parameters move by up to 20·lr = 0.02; the two stay within 1e-3 of each other and of float32
    AdamW, as pyft and bitsandbytes' CPU optimizer do (measured there: <= 7e-4)."""
    bnb = pytest.importorskip("bitsandbytes")
    ours_p, theirs_p, fp32_p, start = (_params("cuda", dtypes=[torch.float32] * len(SHAPES)) for _ in range(4))
    opts = [(PagedAdamW8bit if paged else AdamW8bit)(ours_p, **HYPER),
            (bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit)(theirs_p, **HYPER),
            torch.optim.AdamW(fp32_p, **HYPER)]
    for grads in _grad_stream("cuda", 20):
        for group in (ours_p, theirs_p, fp32_p):
            for p, g in zip(group, grads):
                p.grad = g.to(p.dtype)
        for opt in opts:
            opt.step()
    torch.cuda.synchronize()
    for a, b, c, s in zip(ours_p, theirs_p, fp32_p, start):
        assert 0.01 < (c - s).abs().max().item() <= 0.0201
        assert (a - c).abs().max().item() < 1e-3 and (a - b).abs().max().item() < 1e-3


@requires_cuda
def test_paged_states_take_no_gpu_memory_between_steps():
    """Paged 8-bit states live in pinned host memory: after a step the GPU holds no more than before
    it (the plain optimizer keeps 2 bytes per parameter there), and the step's peak holds two slices
    of states and their float32 temporaries instead of the whole tensor's."""
    n = 64 * 2**20  # 64M parameters: 16 slices of 4M
    results = {}
    for name, cls in (("plain", AdamW8bit), ("paged", PagedAdamW8bit)):
        p = torch.nn.Parameter(torch.zeros(n, device="cuda"))
        p.grad = torch.full((n,), 1e-3, device="cuda")
        opt = cls([p], **HYPER)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        results[name] = (torch.cuda.memory_allocated() - before, torch.cuda.max_memory_allocated() - before)
        assert opt.state[p]["state1"].is_pinned() == (name == "paged")
        del p, opt
        torch.cuda.empty_cache()
    (plain_resident, plain_peak), (paged_resident, paged_peak) = results["plain"], results["paged"]
    mib = {k: f"resident {r / 2**20:.1f} MiB, peak {p / 2**20:.1f} MiB" for k, (r, p) in results.items()}
    assert plain_resident >= 2 * n, mib  # two uint8 states (+ scales) stay on the GPU
    assert paged_resident <= 2**20, mib  # nothing but rounding of the allocator's blocks
    # 2n bytes of resident states less two slices in flight (2 x 8 MiB): at least n bytes lower
    assert paged_peak < plain_peak - n, mib
