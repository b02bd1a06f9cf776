"""Shared pieces for calling TRL's own loss code as a test oracle (importable: ``pythonpath = ["tests"]``).

TRL's trainers compute losses in methods that read a few attributes of ``self``; these helpers give
them a one-process CPU stand-in, so the tests run TRL's real code on chosen inputs.
"""

from __future__ import annotations

import inspect
import types
from collections import defaultdict

import torch


class CpuAccelerator:
    """One process on the CPU: gathers are the identity."""

    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def trainer_stub(cls: type | None = None, methods: tuple[str, ...] = (), **attrs) -> types.SimpleNamespace:
    """A stand-in trainer ``self``: what TRL's loss methods read besides their options, plus ``cls``'s
    ``methods`` bound to it."""
    stub = types.SimpleNamespace(model=types.SimpleNamespace(training=True), accelerator=CpuAccelerator(),
                                 _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                                 aux_loss_enabled=False, is_encoder_decoder=False, **attrs)
    for name in methods:
        attr = inspect.getattr_static(cls, name)
        setattr(stub, name, attr.__func__ if isinstance(attr, staticmethod) else types.MethodType(attr, stub))
    return stub


def trl_kl_rotation():
    """TRL's own KTO KL pairing: ``add_kl_completion_ids``, defined inside ``KTOTrainer._prepare_dataset``
    (it closes over nothing, so its code object runs as is). Maps ``{"completion_ids": [...]}`` of a batch
    to ``{"KL_completion_ids": [...]}``."""
    import pytest

    trl_kto = pytest.importorskip("trl.trainer.kto_trainer")

    def find(code):
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                if c.co_name == "add_kl_completion_ids":
                    return c
                if (found := find(c)) is not None:
                    return found
        return None

    return types.FunctionType(find(trl_kto.KTOTrainer._prepare_dataset.__code__), {})
