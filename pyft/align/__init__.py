"""Alignment after SFT: DPO family, KTO, ORPO, CPO/SimPO and reward models in pyft's training loop.

Select one with ``method:`` in the training config (``dpo``, ``kto``, ``orpo``, ``simpo``, ``cpo``,
``rm``) and the trained weights with ``tuning:`` (``lora``, ``qlora``, ``full``). The losses are pure
functions in :mod:`pyft.losses.preference`; this package adds the forward passes
(:mod:`pyft.losses.forward`), reference models (:mod:`pyft.align.reference`) and the objectives the
loop runs (:mod:`pyft.align.objectives`).
"""

from pyft.align.config import AlignSection
from pyft.align.objectives import CpoObjective, DpoObjective, KtoObjective, OrpoObjective, RewardObjective
from pyft.align.reference import (
    AdapterDisabledReference,
    FrozenCopyReference,
    PrecomputedReference,
    Reference,
)
from pyft.losses.forward import SequenceLogps, sequence_logps

__all__ = [
    "AlignSection", "SequenceLogps", "sequence_logps", "DpoObjective", "KtoObjective", "OrpoObjective", "CpoObjective",
    "RewardObjective", "Reference", "AdapterDisabledReference", "FrozenCopyReference", "PrecomputedReference",
]
