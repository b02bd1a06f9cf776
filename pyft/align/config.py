"""Options of the alignment objectives (``align:`` in a training config), TRL's names and defaults.

Defined here, beside the objectives that read it, so :mod:`pyft.align` needs nothing from
:mod:`pyft.train`; the training config (:mod:`pyft.train.config`) embeds it as its ``align`` section.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AlignSection:
    """Options of the alignment methods (names and defaults as TRL 1.16's configs).

    - ``beta``: β of DPO/KTO/CPO/SimPO, λ of ORPO (default 0.1).
    - ``loss_type``: DPO: ``sigmoid`` (default), ``ipo``, ``hinge``, ``robust``, ... or a list whose
      losses are added with ``loss_weights`` (see :data:`pyft.losses.DPO_LOSS_TYPES`); KTO: ``kto`` or
      ``apo_zero_unpaired``; CPO: ``sigmoid``, ``hinge``, ``ipo`` (``simpo`` is the ``simpo`` method).
    - ``label_smoothing``: ε for robust DPO (rDPO), conservative DPO (``sigmoid`` with ε > 0) and CPO.
    - ``f_divergence``/``f_alpha``: DPO's divergence (``reverse_kl`` default).
    - ``reference``: the reference model (also the base of SFT's ``train.kl_to_base``): ``auto``
      (the base with adapters disabled under LoRA/QLoRA, a frozen copy under full fine-tuning) or
      ``copy``; ``precompute_ref`` computes every reference log-prob in one pass before training
      (then no reference model is kept at all).
    - ``desirable_weight``/``undesirable_weight``: KTO's class weights.
    - ``simpo_gamma``: SimPO's margin γ; ``cpo_alpha``: weight of the chosen NLL (default 0 for
      ``simpo``, 1 for ``cpo``); ``alphapo``: AlphaPO's α (0 = off).
    - ``center_rewards_coefficient``: reward models: weight of ``(r_c + r_r)²``.
    - ``disable_dropout``: turn the model's dropout off (TRL's default).
    - ``layout``: how sequences are batched: ``auto`` (``flat`` under FlashAttention, ``padded``
      for ``rm``, else ``packed``), ``packed``, ``flat`` or ``padded``.
    """

    beta: float = 0.1
    loss_type: str | list[str] | None = None
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    f_divergence: str = "reverse_kl"
    f_alpha: float = 1.0
    reference: str = "auto"
    precompute_ref: bool = False
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    simpo_gamma: float = 0.5
    cpo_alpha: float | None = None
    alphapo: float = 0.0
    center_rewards_coefficient: float | None = None
    disable_dropout: bool = True
    layout: str = "auto"
