"""``pyft.export``: what serving a fine-tuned model needs beyond its weights.

- :mod:`pyft.io.serving` (re-exported here) — chat template lookup, end-of-turn tokens, ``generation_config.json`` /
  ``tokenizer_config.json`` / ``chat_template.jinja`` for a merged model directory.
- :mod:`pyft.export.ollama` — Jinja chat template to Ollama Go ``TEMPLATE`` + stops; Modelfile writer.
- :mod:`pyft.export.vllm` — what vLLM would refuse in an adapter; the ``vllm serve`` command.
- :mod:`pyft.export.gguf` — GGUF model files and GGUF LoRA adapters (Rust core).
- :mod:`pyft.export.targets` — ``pyft-export``'s targets: gguf, gguf-lora, ollama, vllm.
- :mod:`pyft.export.support` — the support table (architecture × GGUF / GGUF LoRA / Ollama / vLLM).
"""

from pyft.export.gguf import LORA_DTYPES, QTYPES, GgufReport, export_gguf, export_gguf_lora
from pyft.export.ollama import (
    SUPPORTED_FAMILIES,
    OllamaTemplate,
    ollama_create_command,
    template_for,
    translate_template,
    write_modelfile,
)
from pyft.export.vllm import (
    MAX_LORA_RANKS,
    check_vllm_adapter,
    required_max_lora_rank,
    vllm_adapter_error_message,
    vllm_serve_command,
)
from pyft.io.serving import (
    default_system_prompt,
    end_of_turn_tokens,
    load_chat_template,
    serving_files,
    special_tokens,
)

__all__ = [
    "QTYPES",
    "LORA_DTYPES",
    "GgufReport",
    "export_gguf",
    "export_gguf_lora",
    "load_chat_template",
    "end_of_turn_tokens",
    "default_system_prompt",
    "serving_files",
    "special_tokens",
    "OllamaTemplate",
    "SUPPORTED_FAMILIES",
    "translate_template",
    "template_for",
    "write_modelfile",
    "ollama_create_command",
    "MAX_LORA_RANKS",
    "check_vllm_adapter",
    "required_max_lora_rank",
    "vllm_serve_command",
    "vllm_adapter_error_message",
]
