"""Training objectives as pure functions of model outputs and labels."""

from pyft.losses.logprobs import TokenLogps, sum_by_sequence, token_logps
from pyft.losses.preference import (CPO_LOSS_TYPES, DPO_LOSS_TYPES, F_DIVERGENCES, KTO_LOSS_TYPES, cpo_loss, dpo_loss,
                                    kto_kl_estimate, kto_loss, orpo_loss, reward_model_loss)
from pyft.losses.sft import IGNORE_INDEX, count_targets, token_nll_kl_sum, token_nll_sum

__all__ = [
    "IGNORE_INDEX", "count_targets", "token_nll_sum", "token_nll_kl_sum", "TokenLogps", "token_logps",
    "sum_by_sequence",
    "DPO_LOSS_TYPES", "F_DIVERGENCES", "KTO_LOSS_TYPES", "CPO_LOSS_TYPES", "dpo_loss", "kto_loss", "kto_kl_estimate",
    "orpo_loss", "cpo_loss", "reward_model_loss",
]
