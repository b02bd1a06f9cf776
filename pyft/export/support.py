"""``pyft.export.support``: what pyft can ship per model architecture, for ``pyft inspect --support``,
``pyft inspect MODEL`` and the README's support table.

- **GGUF** and **GGUF LoRA** come from the Rust export's own tables (``_core.gguf_support``): the GGUF
  architecture each HF architecture exports as, the PEFT modules a GGUF LoRA adapter carries, and the
  routed experts whose LoRA must be merged first.
- **Ollama** (>= 0.30) runs GGUF models and GGUF LoRA adapters through llama-server (spec
  ``adapters-and-serving.md`` §3.2, ``gguf.md`` §5.3), so it serves what llama.cpp loads; its ``TEMPLATE`` is
  translated per chat template, not per architecture (:mod:`pyft.export.ollama`).
  :data:`FAMILY_TEMPLATES` names each family's published chat templates in llama.cpp's
  ``models/templates`` corpus and :data:`TEMPLATE_REFUSALS` the ones that do not translate; the test suite
  translates each against the corpus, so these cannot drift either.
- **vLLM** serves the merged HF model directory and PEFT adapters: :data:`VLLM_ARCHITECTURES`.

Pure data and formatting: no torch, no model files read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from pyft import _core

__all__ = ["FAMILY_TEMPLATES", "TEMPLATE_REFUSALS", "VLLM_ARCHITECTURES", "SupportRow", "lora_text",
           "refused_architectures", "support_for", "support_rows", "support_table", "templates_text"]

#: Published chat templates of each family in llama.cpp's ``models/templates`` corpus, as (label, file).
FAMILY_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "LlamaForCausalLM": (
        ("Llama 3.1", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
        ("Llama 3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
        ("Llama 3.3", "meta-llama-Llama-3.3-70B-Instruct.jinja"),
        ("DeepSeek-R1-Distill-Llama", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
        ("Hermes 2 Pro", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja"),
        ("Hermes 3", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"),
        ("Functionary 3.1", "meetkai-functionary-medium-v3.1.jinja"),
        ("Functionary 3.2", "meetkai-functionary-medium-v3.2.jinja"),
        ("FireFunction v2", "fireworks-ai-llama-3-firefunction-v2.jinja"),
    ),
    "MistralForCausalLM": (("Mistral-Nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),),
    "Qwen2ForCausalLM": (
        ("Qwen2.5", "Qwen-Qwen2.5-7B-Instruct.jinja"),
        ("QwQ", "Qwen-QwQ-32B.jinja"),
        ("DeepSeek-R1-Distill-Qwen", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
    ),
    "Qwen3ForCausalLM": (("Qwen3", "Qwen-Qwen3-0.6B.jinja"),),
    "Qwen3MoeForCausalLM": (("Qwen3", "Qwen-Qwen3-0.6B.jinja"), ("Qwen3-Coder", "Qwen3-Coder.jinja")),
    "Gemma2ForCausalLM": (("Gemma 2", "google-gemma-2-2b-it.jinja"),),
    "GraniteForCausalLM": (("Granite 3.3", "ibm-granite-granite-3.3-2B-Instruct.jinja"),),
    "SmolLM3ForCausalLM": (("SmolLM3", "HuggingFaceTB-SmolLM3-3B.jinja"),),
    "Phi3ForCausalLM": (("Phi-3.5-mini", "microsoft-Phi-3.5-mini-instruct.jinja"),),
}

#: Corpus templates that do not translate to an Ollama TEMPLATE, and why (tests pin the error).
TEMPLATE_REFUSALS: dict[str, str] = {
    "fireworks-ai-llama-3-firefunction-v2.jinja": "needs a `functions` variable (tools as a JSON string) that "
                                                  "Ollama cannot pass",
}

#: How vLLM serves each architecture: its own implementation or the Transformers modeling backend, and
#: whether it serves LoRA adapters on it (vLLM's supported-models table, docs/models/supported_models.md).
VLLM_ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("vLLM", True),
    "MistralForCausalLM": ("vLLM", True),
    "MixtralForCausalLM": ("vLLM", True),
    "Qwen2ForCausalLM": ("vLLM", True),
    "Qwen3ForCausalLM": ("vLLM", True),
    "Gemma2ForCausalLM": ("vLLM", True),
    "Gemma3ForCausalLM": ("vLLM", True),
    "Qwen2MoeForCausalLM": ("vLLM", True),
    "Qwen3MoeForCausalLM": ("vLLM", True),
    "GraniteForCausalLM": ("vLLM", True),
    "Olmo2ForCausalLM": ("Transformers backend", True),
    "SmolLM3ForCausalLM": ("Transformers backend", True),
    "Phi3ForCausalLM": ("vLLM", True),
}


@dataclass(frozen=True)
class SupportRow:
    """What pyft can ship for one HF architecture.

    Attributes:
        hf_architecture: ``config.json`` ``architectures[0]``.
        gguf_architecture: ``general.architecture`` of the GGUF file.
        moe: the model has routed experts.
        lora_modules: PEFT module paths (relative to ``model.layers.N.``, or ``embed_tokens``/``lm_head``)
            that a GGUF LoRA adapter carries (``lm_head`` only when the base does not tie it).
        merge_only: module paths (routed experts, index ``*``) whose LoRA must be merged before export.
        templates: the family's corpus templates as (label, file, translates).
        vllm: ``"vLLM"`` or ``"Transformers backend"``; ``None`` when not in :data:`VLLM_ARCHITECTURES`.
        vllm_lora: vLLM serves LoRA adapters on it.
    """

    hf_architecture: str
    gguf_architecture: str
    moe: bool
    lora_modules: tuple[str, ...]
    merge_only: tuple[str, ...]
    templates: tuple[tuple[str, str, bool], ...]
    vllm: str | None
    vllm_lora: bool

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable form (for ``pyft inspect --json``)."""
        return {"hf_architecture": self.hf_architecture, "gguf_architecture": self.gguf_architecture,
                "moe": self.moe, "gguf_lora_modules": list(self.lora_modules), "merge_only": list(self.merge_only),
                "ollama_templates": [{"label": lab, "file": f, "translates": ok} for lab, f, ok in self.templates],
                "vllm": self.vllm, "vllm_lora": self.vllm_lora}


@cache
def _core_table() -> dict[str, list[dict[str, object]]]:
    table: dict[str, list[dict[str, object]]] = json.loads(_core.gguf_support())
    return table


def support_rows() -> list[SupportRow]:
    """One row per architecture the GGUF export supports, in the export's order."""
    rows = []
    for r in _core_table()["architectures"]:
        name = str(r["hf_architecture"])
        vllm, vllm_lora = VLLM_ARCHITECTURES.get(name, (None, False))
        templates = tuple((label, f, f not in TEMPLATE_REFUSALS) for label, f in FAMILY_TEMPLATES.get(name, ()))
        rows.append(SupportRow(name, str(r["gguf_architecture"]), bool(r["moe"]),
                               tuple(map(str, r["lora_modules"])),  # type: ignore[call-overload]
                               tuple(map(str, r["merge_only"])),  # type: ignore[call-overload]
                               templates, vllm, vllm_lora))
    return rows


def refused_architectures() -> dict[str, str]:
    """HF architectures the GGUF export refuses with a specific reason, and the reason."""
    return {str(r["hf_architecture"]): str(r["reason"]) for r in _core_table()["refused"]}


def support_for(architecture: str) -> SupportRow | None:
    """The row of one HF architecture (``config.json`` ``architectures[0]``), or ``None``."""
    return next((r for r in support_rows() if r.hf_architecture == architecture), None)


def _short(module: str) -> str:
    for prefix in ("self_attn.", "mlp.", "block_sparse_moe."):
        module = module.removeprefix(prefix)
    return module


def lora_text(row: SupportRow) -> str:
    """The GGUF LoRA cell: the modules it carries, and what needs a merge first."""
    text = ", ".join(f"`{_short(m)}`" for m in row.lora_modules)
    if row.merge_only:
        text += "; routed experts (" + ", ".join(f"`{_short(m)}`" for m in row.merge_only) + "): merge first"
    return text


def templates_text(row: SupportRow) -> str:
    """The Ollama TEMPLATE cell: the family's corpus templates, each translated (✓) or refused (✗)."""
    if not row.templates:
        return "none in the corpus (any template is translated or refused with the reason)"
    return ", ".join(f"{label} {'✓' if ok else '✗'}" for label, _, ok in row.templates)


def support_table() -> str:
    """The README's support table (Markdown), generated from the export's tables."""
    lines = [
        ("| Architecture | GGUF (llama.cpp, Ollama) | GGUF LoRA (llama.cpp `--lora`, Ollama `ADAPTER`) | "
         "Ollama TEMPLATE (family templates in llama.cpp's corpus) | vLLM (model; LoRA) |"),
        "|---|---|---|---|---|",
    ]
    for r in support_rows():
        vllm = "—" if r.vllm is None else ("✓" if r.vllm == "vLLM" else f"✓ ({r.vllm})") + \
            ("; LoRA ✓" if r.vllm_lora else "; LoRA: merge")
        lines.append(f"| `{r.hf_architecture}` | `{r.gguf_architecture}`{' (MoE)' if r.moe else ''} | "
                     f"{lora_text(r)} | {templates_text(r)} | {vllm} |")
    lines.append("")
    for name, why in refused_architectures().items():
        lines.append(f"Refused with the reason: `{name}`: {why}.")
    return "\n".join(lines)
