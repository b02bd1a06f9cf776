"""GGUF files for llama.cpp and Ollama, written by the Rust core.

- :func:`export_gguf`: an HF model directory (optionally with LoRA adapters merged on the fly) to
  one ``.gguf`` file in F32/F16/BF16/Q8_0/Q4_0 or llama.cpp's Q4_K_M/Q5_K_M/Q6_K mixes, tensor bytes
  identical to llama.cpp's own converter and quantizer.
- :func:`export_gguf_lora`: a PEFT LoRA adapter to a GGUF LoRA adapter (llama.cpp ``--lora``,
  Ollama ``ADAPTER``), with the rsLoRA scale and the Llama Q/K permutation handled.

The chat template written into the file is the one the model was trained with: an adapter's
``chat_template.jinja`` (pyft saves it next to the adapter) wins over the base model's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyft import _core
from pyft.io.files import check_model_files
from pyft.io.serving import end_of_turn_tokens, load_chat_template, special_tokens

PathLike = str | os.PathLike[str]

#: ``--qtype`` values of :func:`export_gguf`.
QTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
#: Tensor types of :func:`export_gguf_lora`.
LORA_DTYPES = ("f32", "f16", "bf16")


@dataclass
class GgufReport:
    """What an export wrote.

    Attributes:
        path: the ``.gguf`` file.
        arch: ``general.architecture``.
        qtype: the requested type (``q4_k_m``) or LoRA tensor type.
        tensors: tensors written.
        types: tensor count per ggml type (``{"Q4_K": 96, "Q6_K": 17, "F32": 33}``).
        bytes: file size.
        warnings: e.g. how the pre-tokenizer was chosen.
        pre: ``tokenizer.ggml.pre`` written (``None`` when omitted or for adapters).
        dequantized_nf4: weights read from a 4-bit NF4 base: dequantized, then written as ``qtype``
            (never as NF4).
    """

    path: Path
    arch: str
    qtype: str
    tensors: int
    types: dict[str, int]
    bytes: int
    warnings: list[str] = field(default_factory=list)
    pre: str | None = None
    dequantized_nf4: int = 0

    @classmethod
    def from_json(cls, text: str) -> GgufReport:
        d: dict[str, Any] = json.loads(text)
        return cls(Path(d["path"]), d["arch"], d["qtype"], d["tensors"], d["types"], d["bytes"],
                   d.get("warnings", []), d.get("pre"), d.get("dequantized_nf4", 0))


def _tokenizer_dir(dirs: list[Path]) -> Path:
    for d in dirs:
        if (d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file():
            return d
    raise _core.ConfigError(f"no tokenizer (tokenizer.json or tokenizer.model) in {', '.join(map(str, dirs))}")


def export_gguf(
    model: PathLike,
    out: PathLike,
    *,
    qtype: str = "f16",
    adapters: list[PathLike] | tuple[PathLike, ...] = (),
    weights: list[float] | None = None,
    method: str = "linear",
    density: float | None = None,
    seed: int = 0,
    svd_rank: int | None = None,
    name: str | None = None,
    pre: str | None = None,
    overwrite: bool = False,
) -> GgufReport:
    """Write ``model`` (+ ``adapters`` merged in f32) as one GGUF file.

    Args:
        model: HF model directory (``config.json``, safetensors, tokenizer files). Llama/Mistral,
            Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3/3.5/4, Granite, OLMo 2, SmolLM3, Mixtral,
            Qwen2-MoE and Qwen3-MoE architectures. A bitsandbytes NF4 base is dequantized exactly as
            bitsandbytes does, then written as ``qtype``.
        out: the ``.gguf`` file to write (staged under a unique new name beside it, renamed at the end).
        qtype: one of :data:`QTYPES`. ``q8_0`` and the float types match
            ``convert_hf_to_gguf.py --outtype``; ``q4_0``/``q4_k_m``/``q5_k_m``/``q6_k`` match
            ``llama-quantize`` (no imatrix) applied to a float GGUF of the same model.
        adapters: PEFT LoRA adapter directories merged on the fly (as ``pyft merge``).
        weights, method, density, seed, svd_rank: how several adapters combine (see ``pyft merge``).
        name: ``general.name`` (default: the model folder's name).
        pre: force ``tokenizer.ggml.pre`` (validated against the names llama.cpp knows).
        overwrite: replace an existing ``out``.
    """
    model = Path(model)
    adapter_dirs = [Path(a) for a in adapters]
    check_model_files(model, adapter_dirs)
    search = [*adapter_dirs, model]
    template = load_chat_template(*search)
    eot: int | None = None
    if template is not None:
        tok_dir = _tokenizer_dir(search)
        eos = special_tokens(tok_dir).get("eos_token")
        ends = [(text, i) for text, i in end_of_turn_tokens(template, tok_dir) if text != eos]
        eot = ends[0][1] if ends else None
    report = _core.export_gguf(
        os.fspath(model), os.fspath(out), qtype=qtype,
        adapters=[(os.fspath(a), w) for a, w in zip(adapter_dirs, weights or [1.0] * len(adapter_dirs), strict=True)],
        method=method, density=density, seed=seed, svd_rank=svd_rank, name=name, pre=pre,
        chat_template=template, eot_token_id=eot, overwrite=overwrite,
    )
    return GgufReport.from_json(report)


def export_gguf_lora(
    adapter: PathLike,
    base: PathLike,
    out: PathLike,
    *,
    dtype: str = "f32",
    name: str | None = None,
    overwrite: bool = False,
) -> GgufReport:
    """Write a PEFT LoRA adapter as a GGUF LoRA adapter for ``base``.

    Args:
        adapter: PEFT LoRA adapter directory (LoRA, rsLoRA, rank/alpha patterns, embedding LoRA).
            DoRA, ``modules_to_save`` and trained biases have no GGUF LoRA form: merge instead.
        base: the base model directory the adapter was trained on (for the architecture and
            shapes; convert the base itself with :func:`export_gguf`); may be a 4-bit NF4 base.
        out: the ``.gguf`` file to write.
        dtype: ``f32`` (llama.cpp's default), ``f16`` or ``bf16``.
        name: ``general.name`` (default: the adapter folder's name).
        overwrite: replace an existing ``out``.
    """
    check_model_files(base, [adapter])
    report = _core.export_gguf_lora(os.fspath(adapter), os.fspath(base), os.fspath(out), dtype=dtype, name=name,
                                    overwrite=overwrite)
    return GgufReport.from_json(report)
