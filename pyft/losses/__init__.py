"""Training objectives as pure functions of model outputs and labels."""

from pyft.losses.sft import IGNORE_INDEX, count_targets, token_nll_sum

__all__ = ["IGNORE_INDEX", "count_targets", "token_nll_sum"]
