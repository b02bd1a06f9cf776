"""Parameter-efficient fine-tuning methods, implemented by pyft on top of transformers models.

- :class:`LoraConfig`, :func:`apply_lora` — LoRA, rsLoRA and DoRA layers injected by module
  replacement (PEFT's matching rules and parameter names), plus ``modules_to_save``;
- :func:`save_adapter`, :func:`load_adapter` — PEFT's on-disk adapter format, both ways;
- :func:`adapters_disabled` — run the base model (reference model without a second copy);
- :func:`merge_lora` — fold adapters into the base weights;
- :mod:`pyft.peft.ia3` — (IA)³ (:class:`Ia3Config`, :func:`apply_ia3`, :func:`merge_ia3`,
  :func:`save_ia3_adapter`), saved in PEFT's ``IA3`` format; :func:`load_adapter` loads every kind;
- :mod:`pyft.peft.bottleneck` — Houlsby/Pfeiffer bottleneck adapters (:class:`BottleneckConfig`,
  :func:`apply_bottleneck`, :func:`save_bottleneck_adapter`), in pyft's ``PYFT_BOTTLENECK`` format;
- :mod:`pyft.peft.prompt` — prompt tuning and P-tuning (:class:`PromptTuningConfig`, :class:`PTuningConfig`,
  :func:`apply_prompt_tuning`, :func:`apply_p_tuning`, :func:`save_prompt_adapter`), PEFT's ``PROMPT_TUNING`` /
  ``P_TUNING`` formats; not mergeable;
- :mod:`pyft.peft.oft` — OFT (:class:`OftConfig`, :func:`apply_oft`, :func:`merge_oft`,
  :func:`save_oft_adapter`), saved in PEFT's ``OFT`` format;
- :mod:`pyft.peft.prefix` — prefix tuning and P-tuning v2 (:class:`PrefixConfig`, :func:`apply_prefix_tuning`,
  :func:`save_prefix_adapter`), saved in PEFT's ``PREFIX_TUNING`` format.

HF ``peft`` is not imported: it is only a test oracle.
"""

from pyft.peft.bottleneck import BottleneckConfig, apply_bottleneck, save_bottleneck_adapter
from pyft.peft.ia3 import Ia3Config, Ia3Linear, apply_ia3, merge_ia3, save_ia3_adapter
from pyft.peft.oft import OftConfig, OftLinear, apply_oft, merge_oft, save_oft_adapter
from pyft.peft.prefix import PrefixConfig, apply_prefix_tuning, prefix_config_for, save_prefix_adapter
from pyft.peft.adapter_io import adapter_tensors, load_adapter, read_adapter_config, save_adapter
from pyft.peft.lora import (
    LoraConfig,
    LoraLinear,
    ModulesToSave,
    adapters_disabled,
    apply_lora,
    lora_modules,
    merge_lora,
    trainable_parameters,
    trainable_parameters_report,
)
from pyft.peft.prompt import (
    PromptTuningConfig,
    PTuningConfig,
    apply_p_tuning,
    apply_prompt_tuning,
    load_prompt_into,
    save_prompt_adapter,
)

__all__ = [
    "BottleneckConfig",
    "apply_bottleneck",
    "save_bottleneck_adapter",
    "Ia3Config",
    "Ia3Linear",
    "apply_ia3",
    "merge_ia3",
    "save_ia3_adapter",
    "PromptTuningConfig",
    "PTuningConfig",
    "apply_prompt_tuning",
    "apply_p_tuning",
    "save_prompt_adapter",
    "load_prompt_into",
    "OftConfig",
    "OftLinear",
    "apply_oft",
    "merge_oft",
    "save_oft_adapter",
    "PrefixConfig",
    "apply_prefix_tuning",
    "prefix_config_for",
    "save_prefix_adapter",
    "LoraConfig",
    "LoraLinear",
    "ModulesToSave",
    "apply_lora",
    "adapters_disabled",
    "lora_modules",
    "merge_lora",
    "save_adapter",
    "load_adapter",
    "adapter_tensors",
    "read_adapter_config",
    "trainable_parameters",
    "trainable_parameters_report",
]
