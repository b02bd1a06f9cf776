"""AdamW parameter groups and learning-rate schedules (reference: transformers' schedulers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CONVERSATIONS, write_jsonl

import pyft
import pyft.data
from pyft.errors import ConfigError
from pyft.testing import make_tiny_model
from pyft.train import load_config, train
from pyft.train.checkpoint import load_state
from pyft.train.optim import build_optimizer, build_scheduler, parameter_groups, warmup_steps
from pyft.train.optim8bit import AdamW8bit, PagedAdamW, PagedAdamW8bit


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)}


@pytest.mark.parametrize("schedule,reference", [("linear", "get_linear_schedule_with_warmup"),
                                                ("cosine", "get_cosine_schedule_with_warmup"),
                                                ("constant", "get_constant_schedule_with_warmup")])
def test_schedules_match_transformers(schedule, reference):
    import transformers

    total, warm = 50, warmup_steps(0.1, 50)
    assert warm == 5
    ours_opt = build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0, (0.9, 0.999), 1e-8)
    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    ours = build_scheduler(ours_opt, total, warm, schedule)
    kwargs = {"num_warmup_steps": warm} if schedule == "constant" else {"num_warmup_steps": warm,
                                                                         "num_training_steps": total}
    ref = getattr(transformers, reference)(ref_opt, **kwargs)
    for _ in range(total):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
        ours_opt.step()
        ours.step()
        ref_opt.step()
        ref.step()


def test_shipped_configs_parse():
    from pyft.methods import method_names

    configs = sorted((Path(pyft.__file__).parent / "configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.model and cfg.data and cfg.method in method_names()
        assert path.read_text().startswith("#")  # header with the exact command


def test_build_optimizer_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))
    expected = {"adamw": torch.optim.AdamW, "adamw_torch": torch.optim.AdamW, "adamw_8bit": AdamW8bit,
                "paged_adamw": PagedAdamW, "paged_adamw_32bit": PagedAdamW, "paged_adamw_8bit": PagedAdamW8bit}
    for name, cls in expected.items():
        opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-6, name)
        assert type(opt) is cls
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
        assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["eps"] == 1e-6
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, 1e-3, 0.0, (0.9, 0.999), 1e-8, "sgd")


def test_optim_key_is_validated():
    assert load_config(model="m", data="d").train.optim == "adamw"
    assert load_config(model="m", data="d", overrides=["train.optim=paged_adamw_8bit"]).train.optim == "paged_adamw_8bit"
    with pytest.raises(ConfigError, match=r"train\.optim: expected one of adamw, adamw_8bit, paged_adamw, "
                                          r"paged_adamw_8bit, got 'adam8'"):
        load_config(model="m", data="d", overrides=["train.optim=adam8"])


@pytest.fixture(scope="module")
def run_setup(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("optim")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="qwen2")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(4)])
    pyft.data.prepare(src, model, base / "data", val_ratio=0.2, seed=0)
    return {"model": model, "data": base / "data"}


def _run(run_setup, out, **options):
    """Full fine-tuning of the tiny model: its matrices get 8-bit states, norms and biases float32 ones."""
    t = {"lr": 3e-3, "batch_size": 4, "seed": 3, "log_every": 1, "schedule": "constant", "weight_decay": 0.01, **options}
    cfg = load_config(model=str(run_setup["model"]), data=str(run_setup["data"]), output=str(out), method="full",
                      train=t)
    return train(cfg)


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def test_adamw_8bit_resumes_exactly(run_setup, tmp_path):
    common = {"optim": "adamw_8bit", "max_steps": 8, "save_every": 4, "keep_last": 1}
    _run(run_setup, tmp_path / "straight", **common)
    _run(run_setup, tmp_path / "stopped", **{**common, "max_steps": 6})
    state = load_state(tmp_path / "stopped" / "checkpoints" / "step-000004", "optimizer")
    dtypes = {str(v["state1"].dtype) for v in state["state"].values()}
    assert dtypes == {"torch.uint8", "torch.float32"}
    result = _run(run_setup, tmp_path / "stopped", **{**common, "resume": "auto"})
    assert result.steps == 8
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_adamw_8bit_trains_like_adamw(run_setup, tmp_path):
    curves = {}
    for optim in ("adamw", "adamw_8bit"):
        _run(run_setup, tmp_path / optim, optim=optim, max_steps=20)
        lines = (tmp_path / optim / "metrics.jsonl").read_text().splitlines()
        curves[optim] = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    fp32, q8 = curves["adamw"], curves["adamw_8bit"]
    assert len(fp32) == len(q8) == 20
    assert sum(q8[-5:]) < sum(q8[:5]) - 5 * 2.5  # learns: measured 8.1 -> 4.3 nats
    assert abs(sum(q8[-5:]) - sum(fp32[-5:])) < 0.01 * sum(fp32[-5:]), (fp32[-5:], q8[-5:])


def _lrs(scheduler, optimizer, steps):
    """The learning rate of each of ``steps`` updates."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("total,warm", [(50, 5), (37, 0), (20, 19)])
def test_cosine_min_lr_ratio_matches_transformers(ratio, total, warm):
    """The floor equals transformers' ``cosine_with_min_lr`` at every step, past the end too."""
    import transformers

    ours_opt = build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0, (0.9, 0.999), 1e-8)
    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    ours = build_scheduler(ours_opt, total, warm, "cosine", min_lr_ratio=ratio)
    ref = transformers.get_cosine_with_min_lr_schedule_with_warmup(ref_opt, num_warmup_steps=warm,
                                                                  num_training_steps=total, min_lr_rate=ratio)
    # Same formula in the same order of float64 operations: equal to the last bit, hence abs=1e-15·lr.
    assert _lrs(ours, ours_opt, total + 5) == pytest.approx(_lrs(ref, ref_opt, total + 5), abs=1e-18, rel=1e-15)
    assert min(_lrs(build_scheduler(ours_opt, total, warm, "cosine", ratio), ours_opt, total)[warm:]) >= ratio * 1e-3


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5])
def test_linear_min_lr_ratio_matches_wsd_decay(ratio):
    """transformers has no linear schedule with a floor; its WSD schedule with no stable phase and a
    linear decay is one past warmup (its warmup starts at the floor, ours at 0 as ``cosine_with_min_lr``)."""
    import transformers

    total, warm = 40, 6
    ours_opt = build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0, (0.9, 0.999), 1e-8)
    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    ours = _lrs(build_scheduler(ours_opt, total, warm, "linear", min_lr_ratio=ratio), ours_opt, total + 5)
    ref = _lrs(transformers.get_wsd_schedule(ref_opt, num_warmup_steps=warm, num_decay_steps=total - warm,
                                             num_stable_steps=0, decay_type="linear", min_lr_ratio=ratio),
               ref_opt, total + 5)
    assert ours[warm:] == pytest.approx(ref[warm:], abs=1e-18, rel=1e-15)
    assert ours[:warm] == pytest.approx([1e-3 * s / warm for s in range(warm)], abs=1e-18, rel=1e-15)
    # and the formula: floor + (1 - floor)·(1 - progress)
    assert ours[warm + 17] == pytest.approx(1e-3 * (ratio + (1 - ratio) * (1 - 17 / (total - warm))), rel=1e-15)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_min_lr_ratio_zero_is_bit_identical(schedule):
    """``min_lr_ratio=0`` gives the schedule without a floor, bit for bit (formula as before the floor)."""
    import math

    from pyft.train.optim import lr_factor

    def before(step, total, warmup):
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    for total, warm in ((50, 5), (37, 0), (3, 3)):
        for step in range(total + 4):
            assert lr_factor(step, total, warm, schedule, 0.0) == before(step, total, warm)
            assert lr_factor(step, total, warm, schedule) == before(step, total, warm)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        build_scheduler(build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0, (0.9, 0.999), 1e-8), 10, 0, "cosine", 1.5)


@pytest.mark.parametrize("key,value", [("label_smoothing", "1.0"), ("label_smoothing", "-0.1"),
                                       ("model_dropout", "1"), ("model_dropout", "-0.5"),
                                       ("min_lr_ratio", "1.5"), ("min_lr_ratio", "-0.1")])
def test_regularisation_keys_are_validated(key, value):
    cfg = load_config(model="m", data="d")
    assert (cfg.train.label_smoothing, cfg.train.model_dropout, cfg.train.min_lr_ratio) == (0.0, None, 0.0)
    ok = load_config(model="m", data="d", overrides=["train.label_smoothing=0.1", "train.model_dropout=0.2",
                                                     "train.min_lr_ratio=0.1"])
    assert (ok.train.label_smoothing, ok.train.model_dropout, ok.train.min_lr_ratio) == (0.1, 0.2, 0.1)
    with pytest.raises(ConfigError, match=rf"train\.{key}: must be in"):
        load_config(model="m", data="d", overrides=[f"train.{key}={value}"])
