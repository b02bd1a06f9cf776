"""AdamW parameter groups and learning-rate schedules (reference: transformers' schedulers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pyft
from pyft.train import load_config
from pyft.train.optim import build_optimizer, build_scheduler, parameter_groups, warmup_steps


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
    configs = sorted((Path(pyft.__file__).parent / "configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.model and cfg.data and cfg.method in ("lora", "full")
        assert path.read_text().startswith("#")  # header with the exact command
