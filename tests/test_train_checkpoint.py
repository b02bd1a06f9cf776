"""Training checkpoints: no pickles anywhere (a planted one never runs), exact round trips of every
optimizer, scheduler and generator state, and a clear refusal of checkpoints from older pyft."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import pyft.data
from pyft.errors import ConfigError, DataError
from pyft.testing import make_tiny_model
from pyft.train import load_config, train
from pyft.train.checkpoint import load_state, rng_state, save_state, set_rng_state
from pyft.train.optim8bit import AdamW8bit, PagedAdamW, PagedAdamW8bit

from helpers import CONVERSATIONS, write_jsonl


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt")
    model = make_tiny_model(base / "model", tokenizer_dirs["chatml"], arch="qwen2")
    src = write_jsonl(base / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(2)])
    pyft.data.prepare(src, model, base / "data", seed=0)
    return {"model": model, "data": base / "data"}


def _cfg(setup, out, **train):
    t = {"lr": 1e-2, "max_steps": 2, "batch_size": 2, "seed": 3, "log_every": 100, "save_every": 1, **train}
    return load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out),
                       lora={"r": 4, "alpha": 8, "dropout": 0.0}, train=t)


class _Planted:
    """Unpickling this calls ``open(path, "w")``: the file appearing proves the pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_resume_never_runs_a_planted_pickle(setup, tmp_path, name):
    """A pickle planted in a checkpoint (as an older pyft wrote them) is refused unopened."""
    train(_cfg(setup, tmp_path / "run", max_steps=1))
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    canary = tmp_path / "pwned"
    # Older pyft wrote all three; keep the other two harmless so the old loader reaches the planted one.
    for other in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        if other != name and not (ckpt / other).exists():
            torch.save({}, ckpt / other)
    torch.save(_Planted(canary), ckpt / name)
    with pytest.raises(ConfigError, match=r"older pyft.*pickle") as err:
        train(_cfg(setup, tmp_path / "run", max_steps=2, resume=str(ckpt)))
    assert not canary.exists()
    assert str(ckpt) in str(err.value) and "optimizer.pt" in str(err.value)


def test_a_checkpoint_holds_only_json_and_safetensors(setup, tmp_path):
    train(_cfg(setup, tmp_path / "run", max_steps=1))
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["optimizer.json", "optimizer.safetensors", "rng.json", "rng.safetensors", "scheduler.json",
                     "state.json", "trainable.safetensors"]
    for p in ckpt.iterdir():
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", p  # neither a pickle nor torch.save's zip
        if p.suffix == ".json":
            json.loads(p.read_text())


def test_an_older_checkpoint_is_refused_unopened(setup, tmp_path, monkeypatch):
    train(_cfg(setup, tmp_path / "run", max_steps=1))
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.pt")
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    with pytest.raises(ConfigError, match=r"step-000001 was written by an older pyft: optimizer\.pt .*--overwrite"):
        train(_cfg(setup, tmp_path / "run", max_steps=2, resume="auto"))
    assert opened == []


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # 80 x 70 = 5600 elements: above the 8-bit optimizers' min_8bit_size (4096), so they quantize it;
    # the norm and bias keep float32 states.
    return torch.nn.Sequential(torch.nn.Linear(70, 80), torch.nn.LayerNorm(80))


def _step(model, optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()


def _same(a, b, where="state"):
    """Equal values of equal types all the way down; tensors equal in dtype, shape and every bit."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2),  # state {"momentum_buffer": None}
    "adamw_8bit": lambda ps: AdamW8bit(ps, lr=1e-2),
    "paged_adamw": lambda ps: PagedAdamW(ps, lr=1e-2),
    "paged_adamw_8bit": lambda ps: PagedAdamW8bit(ps, lr=1e-2),
}


@pytest.mark.filterwarnings("ignore:paged optimizer states need CUDA parameters")
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_round_trips_exactly(tmp_path, name):
    """The state reads back equal in every value and type, and the next update is bit-identical."""
    from pyft.train.optim import parameter_groups

    a, b = _model(0), _model(1)
    opt_a = OPTIMIZERS[name](parameter_groups(a, 0.1))
    for i in range(3):
        _step(a, opt_a, i)
    save_state(tmp_path, "optimizer", opt_a.state_dict())
    b.load_state_dict(a.state_dict())
    opt_b = OPTIMIZERS[name](parameter_groups(b, 0.1))
    opt_b.load_state_dict(load_state(tmp_path, "optimizer"))
    _same(opt_a.state_dict(), opt_b.state_dict())
    _step(a, opt_a, 9)
    _step(b, opt_b, 9)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_scheduler_and_generators_round_trip_exactly(tmp_path):
    from pyft.train.optim import build_scheduler

    def scheduler(model):
        return build_scheduler(torch.optim.AdamW(model.parameters(), lr=1e-3), 50, 5, "cosine")

    sched = scheduler(_model(0))
    for _ in range(7):
        sched.optimizer.step()
        sched.step()
    save_state(tmp_path, "scheduler", sched.state_dict())
    other = scheduler(_model(0))
    other.load_state_dict(load_state(tmp_path, "scheduler"))
    _same(sched.state_dict(), other.state_dict())
    for _ in range(3):
        for s in (sched, other):
            s.optimizer.step()
            s.step()
        assert sched.get_last_lr() == other.get_last_lr()

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # a cached Gaussian in both generators
    save_state(tmp_path, "rng", {"ranks": [rng_state()]})

    def draws():
        return random.random(), random.gauss(0, 1), np.random.standard_normal(4).tolist(), torch.rand(4).tolist()

    first = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    (saved,) = load_state(tmp_path, "rng")["ranks"]
    set_rng_state(saved)
    assert draws() == first


def test_state_encoding_keeps_types_and_refuses_what_it_cannot_store(tmp_path):
    state = {"d": {"__tuple__": 1, 0: (1.5, None), (2, "x"): [float("inf"), float("nan"), -0.0, 2**70]},
             "t": torch.arange(6, dtype=torch.bfloat16).view(2, 3), "s": torch.tensor(3.0),
             "a": np.arange(5, dtype=np.uint32), "e": torch.zeros(0)}
    save_state(tmp_path, "x", state)
    _same(load_state(tmp_path, "x"), state)
    assert isinstance(load_state(tmp_path, "x")["a"], np.ndarray)
    with pytest.raises(TypeError, match=r"`x\.f`: cannot store a function"):
        save_state(tmp_path, "x", {"f": lambda: 0})


@pytest.mark.parametrize("text,message", [
    ('{"a": {"__ndarray__": "x.a", "dtype": "O", "shape": [1]}}', "cannot restore a NumPy array of dtype object"),
    ('{"a": {"__ndarray__": "x.a", "dtype": "<f8", "shape": [2]}}', "does not hold a float64 array of shape"),
    ('{"a": {"__tensor__": "nope"}}', "refers to tensor 'nope'"),
    ('{"a": {"__items__": [[[1], 2]]}}', "a dict key must be"),
    ('{"a": ', "malformed JSON at line 1"),
    ('[{"a": 1}]', "expected a JSON object"),
    ('{"a": ' * 900 + "1" + "}" * 900, "nested too deeply"),
])
def test_a_hostile_state_file_is_refused_naming_it(tmp_path, text, message):
    save_state(tmp_path, "x", {"a": np.zeros(1)})
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_state(tmp_path, "x")
    assert str(tmp_path / "x.json") in str(err.value)


def test_a_corrupt_tensor_file_is_refused_naming_it(tmp_path):
    save_state(tmp_path, "x", {"a": np.zeros(1)})
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(DataError, match=r"x\.safetensors: not a valid safetensors file"):
        load_state(tmp_path, "x")
    (tmp_path / "x.safetensors").unlink()
    os.mkfifo(tmp_path / "x.safetensors")  # refused at once, never read (which would block)
    with pytest.raises(DataError, match=r"x\.safetensors: is a FIFO"):
        load_state(tmp_path, "x")


def _dead_pid() -> int:
    """A PID no process has: above the kernel's maximum."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_a_prune_cut_short_never_leaves_a_broken_checkpoint(tmp_path):
    """Pruning renames the oldest checkpoint to a staging name before deleting it, so a process killed
    part-way leaves no half-deleted `step-*`; what it left is removed once its owner is dead."""
    import pyft.train.checkpoint as ckpt
    from pyft.train.optim import build_scheduler

    model = _model(0)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = build_scheduler(optimizer, 10, 0, "constant")
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        ckpt.save_checkpoint(root, step, model, optimizer, scheduler, {"step": step}, keep_last=2)
    ckpt.save_checkpoint(root, 3, model, optimizer, scheduler, {"step": 3}, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003"], "pruned without leftovers"
    # What a process killed while deleting step-000002 leaves: the renamed directory, partly deleted.
    aside = root / f".step-000002.pyft-stage-{_dead_pid()}-0"
    (root / "step-000002").rename(aside)
    next(aside.iterdir()).unlink()
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000003"]
    live = root / f".step-000007.pyft-stage-{os.getppid()}-0"
    live.mkdir()
    ckpt.remove_stale_staging(root)
    assert sorted(p.name for p in root.iterdir()) == [live.name, "step-000003"]
