"""Summaries of model files for ``pyft inspect``: GGUF files, safetensors files, HF model directories
and PEFT adapter directories. Pure I/O and formatting: tensor data is never loaded (GGUF headers are
parsed and validated by ``_core.gguf_read_metadata``, safetensors headers and model indexes by
:mod:`pyft.io.safetensors`), and torch is not imported.

- :func:`inspect_path` — detect what ``path`` is and return a JSON-serialisable summary.
- :func:`format_summary` — the human-readable text of such a summary.
- :func:`read_safetensors_header` — the validated header of one safetensors file.

Every malformed input raises :class:`pyft.errors.DataError` naming the file (``.file``) and the
defect; a missing path raises :class:`FileNotFoundError`. Only regular files are read (symlinks
followed): a FIFO or a device is refused before it is opened for reading, so nothing blocks or
reads without end.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pyft.errors import DataError
from pyft.io.files import check_adapter_config, check_regular, data_error, open_regular, read_json_object
from pyft.io.safetensors import model_files, read_header

__all__ = [
    "LLAMA_FILE_TYPES",
    "VLLM_MAX_LORA_RANKS",
    "format_summary",
    "inspect_path",
    "read_safetensors_header",
]

#: ``general.file_type`` values (llama.cpp's ``llama_ftype``, as in gguf 0.19.0); ids 4-6, 33-35 were removed.
LLAMA_FILE_TYPES: dict[int, str] = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0", 41: "MOSTLY_Q2_0",
    1024: "GUESSED",
}

#: The values vLLM accepts for ``--max-lora-rank``.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: modules_to_save entries vLLM can serve (the output head); anything else is rejected.
_VLLM_HEADS = frozenset({"lm_head"})

_CONFIG_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                "max_position_embeddings", "rope_theta", "tie_word_embeddings", "dtype")


def _bad(path: str | os.PathLike[str], message: str) -> DataError:
    return data_error(path, message)


# ---------------------------------------------------------------------------------------------
# Reading


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated header of a safetensors file, without reading tensor data (validated by the
    Rust core through :func:`pyft.io.safetensors.read_header`, as merge and export validate it).

    Returns:
        ``{"metadata": {...}, "tensors": [{"name", "dtype", "shape", "nbytes"}, ...] (data order),
        "file_size": int}``.

    Raises:
        DataError: the file is not a valid safetensors file (message names the file).
    """
    header = read_header(path)
    return {"metadata": header.metadata, "file_size": header.file_size,
            "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes}
                        for t in header.tensors]}


def _detect(path: Path) -> str:
    if path.is_dir():
        # `exists`, not `is_file`: a FIFO or device under one of these names is refused when read,
        # not taken for a missing file.
        if (path / "adapter_config.json").exists() or (path / "pyft_hybrid.json").exists():
            return "adapter"
        if ((path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
                or (path / "config.json").exists()):
            return "model"
        raise _bad(path, "unknown kind: a directory without adapter_config.json, config.json or "
                         "model.safetensors")
    with open_regular(path) as f:
        magic = f.read(4)
    if magic == b"GGUF" or path.suffix == ".gguf":
        return "gguf"
    if path.suffix == ".safetensors":
        return "safetensors"
    raise _bad(path, "unknown kind: expected a .gguf or .safetensors file, an HF model directory or a PEFT "
                     "adapter directory")


def inspect_path(path: str | os.PathLike[str], *, tensors: bool = False) -> dict[str, Any]:
    """Detect what ``path`` is and summarise it (JSON-serialisable).

    Args:
        path: a ``.gguf`` file, a ``.safetensors`` file, an HF model directory (``model.safetensors``
            or shards with ``model.safetensors.index.json``) or a PEFT adapter directory.
        tensors: also list every tensor (name, type, shape).

    Returns:
        A dict with ``kind`` (``gguf``, ``safetensors``, ``model``, ``adapter``), ``path`` and the
        kind's fields (see the ``_summarise_*`` functions).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: unknown kind, or a malformed file (the message names it).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if not p.is_dir():
        check_regular(p)  # before anything opens it: the GGUF reader too
    kind = _detect(p)
    summarise = {"gguf": _summarise_gguf, "safetensors": _summarise_safetensors, "model": _summarise_model,
                 "adapter": _summarise_adapter}[kind]
    return {"kind": kind, "path": str(p), **summarise(p, tensors)}


# ---------------------------------------------------------------------------------------------
# GGUF


def _kv_value(kv: dict[str, dict[str, Any]], key: str) -> Any:
    entry = kv.get(key)
    return None if entry is None else entry["value"]


def _summarise_gguf(path: Path, with_tensors: bool) -> dict[str, Any]:
    from pyft import _core

    meta = json.loads(_core.gguf_read_metadata(str(path), 16))
    kv = {e["key"]: e for e in meta["kv"]}
    arch = _kv_value(kv, "general.architecture")
    file_type = _kv_value(kv, "general.file_type")
    tok_model = _kv_value(kv, "tokenizer.ggml.model")
    tokens, merges = kv.get("tokenizer.ggml.tokens", {}), kv.get("tokenizer.ggml.merges", {})
    tokenizer = None
    if tok_model is not None or "tokenizer.ggml.tokens" in kv:
        template = _kv_value(kv, "tokenizer.chat_template")
        tokenizer = {
            "model": tok_model,
            "pre": _kv_value(kv, "tokenizer.ggml.pre"),
            "vocab_size": tokens.get("length"),
            "merges": merges.get("length"),
            **{name: _kv_value(kv, f"tokenizer.ggml.{name}_token_id")
               for name in ("bos", "eos", "eot", "eom", "pad", "unknown")
               if f"tokenizer.ggml.{name}_token_id" in kv},
            "chat_template": None if not isinstance(template, str) else {
                "length": len(template), "first_line": template.splitlines()[0] if template else ""},
        }
    adapter = None
    if _kv_value(kv, "general.type") == "adapter":
        adapter = {"type": _kv_value(kv, "adapter.type"), "lora_alpha": _kv_value(kv, "adapter.lora.alpha")}
    histogram: dict[str, dict[str, int]] = {}
    for t in meta["tensors"]:
        h = histogram.setdefault(t["type"], {"count": 0, "bytes": 0, "parameters": 0})
        h["count"] += 1
        h["bytes"] += t["nbytes"]
        h["parameters"] += math.prod(t["ne"])
    out: dict[str, Any] = {
        "version": meta["version"],
        "alignment": meta["alignment"],
        "file_size": path.stat().st_size,
        "architecture": arch,
        "name": _kv_value(kv, "general.name"),
        "type": _kv_value(kv, "general.type"),
        "file_type": None if file_type is None else {
            "id": file_type, "name": LLAMA_FILE_TYPES.get(file_type, f"UNKNOWN_{file_type}")},
        "hparams": {k: e["value"] for k, e in kv.items() if arch and k.startswith(f"{arch}.")},
        "tokenizer": tokenizer,
        "adapter": adapter,
        "kv_count": len(meta["kv"]),
        "tensor_count": len(meta["tensors"]),
        "parameters": sum(h["parameters"] for h in histogram.values()),
        "total_bytes": sum(h["bytes"] for h in histogram.values()),
        "types": dict(sorted(histogram.items(), key=lambda kv_: -kv_[1]["bytes"])),
    }
    if with_tensors:
        out["tensors"] = [{"name": t["name"], "type": t["type"], "shape": t["shape"]}
                          for t in meta["tensors"]]
    return out


# ---------------------------------------------------------------------------------------------
# safetensors files and HF model directories


def _tensor_stats(tensors: list[dict[str, Any]], with_tensors: bool) -> dict[str, Any]:
    histogram: dict[str, dict[str, int]] = {}
    for t in tensors:
        h = histogram.setdefault(t["dtype"], {"count": 0, "bytes": 0, "parameters": 0})
        h["count"] += 1
        h["bytes"] += t["nbytes"]
        h["parameters"] += math.prod(t["shape"])
    out: dict[str, Any] = {
        "tensor_count": len(tensors),
        "parameters": sum(h["parameters"] for h in histogram.values()),
        "total_bytes": sum(h["bytes"] for h in histogram.values()),
        "dtypes": dict(sorted(histogram.items(), key=lambda kv: -kv[1]["bytes"])),
    }
    if with_tensors:
        out["tensors"] = [{"name": t["name"], "dtype": t["dtype"], "shape": t["shape"]} for t in tensors]
    return out


def _summarise_safetensors(path: Path, with_tensors: bool) -> dict[str, Any]:
    header = read_safetensors_header(path)
    return {"file_size": header["file_size"], "metadata": header["metadata"],
            **_tensor_stats(header["tensors"], with_tensors)}


def _config_highlights(config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs keep the language model's shape under `text_config`.
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    out = {}
    for key in _CONFIG_KEYS:
        value = config.get(key, text.get(key))
        if key == "dtype" and value is None:
            value = config.get("torch_dtype", text.get("torch_dtype"))  # transformers < 4.56 spelling
        if value is not None:
            out[key] = value
    return out


def _summarise_model(path: Path, with_tensors: bool) -> dict[str, Any]:
    config_path = path / "config.json"
    config = _config_highlights(read_json_object(config_path)) if config_path.exists() else None
    shards = model_files(path)
    tensors: list[dict[str, Any]] = []
    shard_info = []
    for shard in shards:
        header = read_safetensors_header(shard)
        tensors.extend(header["tensors"])
        shard_info.append({"file": shard.name, "tensors": len(header["tensors"]),
                           "bytes": header["file_size"]})
    index = path / "model.safetensors.index.json"
    if index.exists():
        listed = set(read_json_object(index)["weight_map"])
        found = {t["name"] for t in tensors}
        if listed != found:
            missing, extra = sorted(listed - found), sorted(found - listed)
            raise _bad(index, f"weight_map disagrees with the shards: {len(missing)} listed but absent "
                              f"{missing[:3]}, {len(extra)} present but unlisted {extra[:3]}")
    names = [t["name"] for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _bad(path, f"tensor `{dup}` is stored in more than one shard")
    raw = read_json_object(config_path) if config_path.exists() else {}
    return {"config": config, "shards": shard_info, "export": _export_support(path, raw),
            **_tensor_stats(tensors, with_tensors)}


def _export_support(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """What pyft can export this model to: its row of the support table (:mod:`pyft.export.support`) and
    whether its own chat template translates to an Ollama TEMPLATE."""
    from pyft.errors import ConfigError
    from pyft.export.ollama import template_for
    from pyft.export.support import refused_architectures, support_for

    names = config.get("architectures")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    row = support_for(name) if name else None
    out: dict[str, Any] = {"architecture": name, "support": row.as_dict() if row else None}
    if row is None:
        out["gguf_refused"] = refused_architectures().get(name or "", "not an architecture the GGUF export supports")
    try:
        t = template_for(path)
        out["ollama_template"] = {"ok": True, "family": t.family}
    except (ConfigError, DataError) as e:
        out["ollama_template"] = {"ok": False, "reason": str(e)}
    return out


# ---------------------------------------------------------------------------------------------
# PEFT adapters


def _serving_targets(cfg: dict[str, Any], max_rank: int) -> dict[str, dict[str, Any]]:
    """Which serving stacks accept the adapter, and why not."""
    peft_type = cfg.get("peft_type")
    mts = [m for m in cfg.get("modules_to_save") or []]
    vllm, gguf = [], []
    if peft_type != "LORA":
        vllm.append(f"peft_type {peft_type} (only LORA)")
        gguf.append(f"peft_type {peft_type} (only LORA)")
    if cfg.get("use_dora"):
        vllm.append("DoRA is not supported")
        gguf.append("DoRA is not supported")
    other = [m for m in mts if m.split(".")[-1] not in _VLLM_HEADS]
    if other:
        vllm.append(f"modules_to_save {other} (only {sorted(_VLLM_HEADS)})")
    if mts:
        gguf.append(f"modules_to_save {mts} is not supported")
    if cfg.get("alpha_pattern"):
        gguf.append("alpha_pattern is not supported (one adapter.lora.alpha per file)")
    vllm_rank = next((r for r in VLLM_MAX_LORA_RANKS if r >= max_rank), None)
    if vllm_rank is None:
        vllm.append(f"rank {max_rank} exceeds vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}")
    return {"vllm": {"ok": not vllm, "max_lora_rank": vllm_rank, "problems": vllm},
            "gguf_lora": {"ok": not gguf, "problems": gguf}}


#: The settings shown for adapter kinds other than LoRA (``peft_type`` -> config fields).
_KIND_FIELDS = {
    "IA3": ("target_modules", "feedforward_modules"),
    "OFT": ("target_modules", "r", "oft_block_size", "use_cayley_neumann", "coft", "block_share"),
    "PROMPT_TUNING": ("num_virtual_tokens", "token_dim", "prompt_tuning_init"),
    "P_TUNING": ("num_virtual_tokens", "token_dim", "encoder_reparameterization_type"),
    "PREFIX_TUNING": ("num_virtual_tokens", "num_layers", "token_dim", "prefix_projection"),
    "PYFT_BOTTLENECK": ("kind", "reduction_factor", "non_linearity", "placement", "bottleneck_size"),
}


def _other_serving(peft_type: Any) -> dict[str, dict[str, Any]]:
    """Serving verdicts of an adapter that is not LoRA: vLLM and llama.cpp load LoRA adapters only;
    mergeable kinds serve after ``pyft merge``, the others with the base + adapter in transformers."""
    from pyft.methods import TUNING_TABLE

    mergeable = any(t.mergeable for t in TUNING_TABLE.values() if t.peft_type == peft_type)
    why = (f"peft_type {peft_type} (only LORA): " + (
        "merge it into the base first (pyft merge), then export the merged model" if mergeable else
        "it cannot be merged into the weights; serve the base + adapter with transformers (pyft generate)"))
    return {"vllm": {"ok": False, "max_lora_rank": None, "problems": [why]},
            "gguf_lora": {"ok": False, "problems": [why]}}


def _summarise_other_adapter(path: Path, cfg: dict[str, Any], header: dict[str, Any],
                             with_tensors: bool) -> dict[str, Any]:
    from pyft.methods import TUNING_TABLE

    peft_type = cfg.get("peft_type")
    # the adapted module of each tensor: its path before the adapter's own parameter names
    modules = {re.split(r"\.(?:ia3_l|oft_R|bottleneck)(?:\.|$)", t["name"])[0] for t in header["tensors"]
               if t["name"].startswith("base_model.model.")}
    out = {
        "peft_type": peft_type,
        "task_type": cfg.get("task_type"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "settings": {k: cfg.get(k) for k in _KIND_FIELDS.get(peft_type, ())},
        "adapted_modules": len(modules) or None,  # None: virtual tokens, no module is adapted
        "mergeable": any(t.mergeable for t in TUNING_TABLE.values() if t.peft_type == peft_type),
        "serving": _other_serving(peft_type),
        **_tensor_stats(header["tensors"], with_tensors),
    }
    out["adapter_parameters"] = out.pop("parameters")
    return out


def _summarise_hybrid(path: Path, with_tensors: bool) -> dict[str, Any]:
    from pyft.peft.hybrid import read_hybrid_parts

    try:
        names = read_hybrid_parts(path)
    except ValueError as e:
        raise _bad(path, str(e)) from None
    parts = {name: _summarise_adapter(path / name, with_tensors) for name in names}
    dtypes: dict[str, dict[str, int]] = {}
    for p in parts.values():
        for dtype, v in p["dtypes"].items():
            acc = dtypes.setdefault(dtype, {k: 0 for k in v})
            for k, n in v.items():
                acc[k] = acc.get(k, 0) + n
    why = "a hybrid adapter: serve the base + adapter with pyft generate, or load each part with PEFT"
    return {"peft_type": "hybrid", "task_type": None, "parts": parts,
            "mergeable": all(p["mergeable"] for p in parts.values()),
            "serving": {"vllm": {"ok": False, "max_lora_rank": None, "problems": [why]},
                        "gguf_lora": {"ok": False, "problems": [why]}},
            "tensor_count": sum(p["tensor_count"] for p in parts.values()),
            "adapter_parameters": sum(p["adapter_parameters"] for p in parts.values()),
            "total_bytes": sum(p["total_bytes"] for p in parts.values()), "dtypes": dtypes}


def _summarise_adapter(path: Path, with_tensors: bool) -> dict[str, Any]:
    if (path / "pyft_hybrid.json").exists() and not (path / "adapter_config.json").exists():
        return _summarise_hybrid(path, with_tensors)
    cfg = read_json_object(path / "adapter_config.json")
    lora = cfg.get("peft_type") == "LORA"
    # `r` is LoRA's rank; other kinds have their own meaning for it (OFT's is 0 when unset)
    check_adapter_config(cfg if lora else {k: v for k, v in cfg.items() if k != "r"}, path / "adapter_config.json")
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise _bad(path, "no adapter_model.safetensors (only safetensors adapters can be inspected)")
    header = read_safetensors_header(weights)
    if not lora:
        return _summarise_other_adapter(path, cfg, header, with_tensors)
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not (type(r) is int and r > 0 and isinstance(alpha, (int, float)) and not isinstance(alpha, bool)):
        raise _bad(path / "adapter_config.json", f"`r` ({r!r}) must be a positive integer and `lora_alpha` "
                                                 f"({alpha!r}) a number")
    rslora = bool(cfg.get("use_rslora"))
    modules, ranks = set(), []
    for t in header["tensors"]:
        for marker in (".lora_A.weight", ".lora_embedding_A"):
            if t["name"].endswith(marker) and len(t["shape"]) == 2:
                modules.add(t["name"][: -len(marker)])
                ranks.append(t["shape"][0])
    rank_pattern = cfg.get("rank_pattern") or {}
    max_rank = max([r, *ranks, *(v for v in rank_pattern.values() if type(v) is int)])
    lora_params = sum(math.prod(t["shape"]) for t in header["tensors"] if ".lora_" in t["name"])
    out = {
        "peft_type": cfg.get("peft_type"),
        "task_type": cfg.get("task_type"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "scaling": alpha / math.sqrt(r) if rslora else alpha / r,
        "use_dora": bool(cfg.get("use_dora")),
        "target_modules": cfg.get("target_modules"),
        "modules_to_save": cfg.get("modules_to_save"),
        "rank_pattern": rank_pattern,
        "alpha_pattern": cfg.get("alpha_pattern") or {},
        "adapted_modules": len(modules),
        "max_rank": max_rank,
        "lora_parameters": lora_params,
        "mergeable": True,
        "serving": _serving_targets(cfg, max_rank),
        **_tensor_stats(header["tensors"], with_tensors),
    }
    out["adapter_parameters"] = out.pop("parameters")
    return out


# ---------------------------------------------------------------------------------------------
# Text


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def _count(n: int) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _histogram(lines: list[str], title: str, hist: dict[str, dict[str, int]]) -> None:
    lines.append(f"  {title}")
    for name, h in hist.items():
        lines.append(f"    {name:<10} {h['count']:>6} tensors  {_count(h['parameters']):>9} params  "
                     f"{_bytes(h['bytes']):>11}")


def _tensor_lines(lines: list[str], tensors: list[dict[str, Any]], type_key: str) -> None:
    width = max((len(t["name"]) for t in tensors), default=0)
    lines.append("  tensors:")
    for t in tensors:
        lines.append(f"    {t['name']:<{width}}  {t[type_key]:<7} {list(t['shape'])}")


def _field(lines: list[str], label: str, value: Any) -> None:
    if value is not None:
        lines.append(f"  {label:<22} {value}")


def _export_lines(lines: list[str], e: dict[str, Any]) -> None:
    from pyft.export.support import lora_text, support_for, templates_text

    lines.append("  export (pyft inspect --support: every architecture)")
    row = support_for(e["architecture"]) if e["architecture"] else None
    if row is None:
        lines.append(f"    {'GGUF':<24} no: {e['gguf_refused']}")
    else:
        lines.append(f"    {'GGUF':<24} {row.gguf_architecture}{' (MoE)' if row.moe else ''}")
        lines.append(f"    {'GGUF LoRA':<24} {lora_text(row).replace('`', '')}")
        lines.append(f"    {'family templates':<24} {templates_text(row)}")
        vllm = "no entry" if row.vllm is None else f"{row.vllm}; LoRA {'yes' if row.vllm_lora else 'merge first'}"
        lines.append(f"    {'vLLM':<24} {vllm}")
    t = e["ollama_template"]
    verdict = f"translates ({t['family']})" if t["ok"] else f"no: {t['reason']}"
    lines.append(f"    {'Ollama TEMPLATE':<24} {verdict}")


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable text of a summary from :func:`inspect_path`."""
    kinds = {"gguf": "GGUF file", "safetensors": "safetensors file", "model": "HF model directory",
             "adapter": "PEFT adapter directory"}
    lines = [f"{s['path']}: {kinds[s['kind']]}"]
    if s["kind"] == "gguf":
        lines[0] += f" (v{s['version']}, alignment {s['alignment']}, {_bytes(s['file_size'])})"
        _field(lines, "architecture", s["architecture"])
        _field(lines, "name", s["name"])
        _field(lines, "type", s["type"])
        if s["file_type"]:
            _field(lines, "file type", f"{s['file_type']['name']} ({s['file_type']['id']})")
        if s["adapter"]:
            _field(lines, "adapter", f"{s['adapter']['type']}, lora_alpha {s['adapter']['lora_alpha']}")
        if s["hparams"]:
            lines.append("  hparams")
            for k, v in s["hparams"].items():
                # FLOAT32 values print at float32 precision (1e-05, not 9.999999747378752e-06)
                lines.append(f"    {k:<44} {f'{v:.7g}' if isinstance(v, float) else v}")
        if s["tokenizer"]:
            t = s["tokenizer"]
            ids = ", ".join(f"{k} {t[k]}" for k in ("bos", "eos", "eot", "eom", "pad", "unknown") if k in t)
            merges = f", {t['merges']} merges" if t["merges"] is not None else ""
            _field(lines, "tokenizer", f"{t['model']} (pre {t['pre']}), {t['vocab_size']} tokens{merges}"
                   + (f"; {ids}" if ids else ""))
            if t["chat_template"]:
                _field(lines, "chat template", f"{t['chat_template']['length']} chars: "
                                               f"{t['chat_template']['first_line'][:80]!r}")
        _field(lines, "metadata keys", s["kv_count"])
        _field(lines, "tensors", f"{s['tensor_count']}, {_count(s['parameters'])} parameters, "
                                 f"{_bytes(s['total_bytes'])}")
        _histogram(lines, "by type", s["types"])
        if "tensors" in s:
            _tensor_lines(lines, s["tensors"], "type")
        return "\n".join(lines)
    if s["kind"] == "adapter" and s["peft_type"] == "hybrid":
        _field(lines, "peft type", f"pyft hybrid of {', '.join(s['parts'])} (one adapter directory per part)")
        for name, part in s["parts"].items():
            _field(lines, f"part {name}", f"{part['peft_type']}, {_count(part['adapter_parameters'])} parameters, "
                                          f"{part['adapted_modules'] or 'no'} adapted modules")
        _field(lines, "merges into weights", "yes" if s["mergeable"] else "no")
        _field(lines, "vLLM / GGUF LoRA", "no: " + s["serving"]["vllm"]["problems"][0])
    elif s["kind"] == "adapter" and s["peft_type"] != "LORA":
        _field(lines, "peft type", f"{s['peft_type']} ({s['task_type']})")
        _field(lines, "base model", s["base_model_name_or_path"])
        for k, v in s["settings"].items():
            _field(lines, k.replace("_", " "), v)
        _field(lines, "adapted modules", s["adapted_modules"] or "none (virtual tokens)")
        _field(lines, "merges into weights", "yes (pyft merge)" if s["mergeable"] else "no")
        _field(lines, "vLLM / GGUF LoRA", "no: " + s["serving"]["vllm"]["problems"][0])
    elif s["kind"] == "adapter":
        _field(lines, "peft type", f"{s['peft_type']} ({s['task_type']})")
        _field(lines, "base model", s["base_model_name_or_path"])
        _field(lines, "rank / alpha", f"r {s['r']}, lora_alpha {s['lora_alpha']}, scaling {s['scaling']:.4g}"
                                      + (" (rsLoRA: alpha/sqrt(r))" if s["use_rslora"] else " (alpha/r)"))
        _field(lines, "DoRA", "yes" if s["use_dora"] else "no")
        _field(lines, "target modules", s["target_modules"])
        _field(lines, "modules to save", s["modules_to_save"] or None)
        _field(lines, "rank pattern", s["rank_pattern"] or None)
        _field(lines, "alpha pattern", s["alpha_pattern"] or None)
        _field(lines, "adapted modules", f"{s['adapted_modules']} (max rank {s['max_rank']})")
        _field(lines, "parameters",
               f"{_count(s['adapter_parameters'])} ({_count(s['lora_parameters'])} LoRA)")
        for target, label in (("vllm", "vLLM"), ("gguf_lora", "GGUF LoRA (llama.cpp)")):
            v = s["serving"][target]
            verdict = "yes" if v["ok"] else "no: " + "; ".join(v["problems"])
            if target == "vllm" and v["ok"]:
                verdict += f" (--max-lora-rank {v['max_lora_rank']})"
            _field(lines, label, verdict)
    elif s["kind"] == "model":
        if s["config"]:
            lines.append("  config.json")
            for k, v in s["config"].items():
                lines.append(f"    {k:<24} {v}")
        _field(lines, "shards", ", ".join(f"{sh['file']} ({sh['tensors']} tensors, {_bytes(sh['bytes'])})"
                                          for sh in s["shards"]))
        _export_lines(lines, s["export"])
    else:
        _field(lines, "file size", _bytes(s["file_size"]))
        _field(lines, "metadata", s["metadata"] or None)
    params_key = "adapter_parameters" if s["kind"] == "adapter" else "parameters"
    _field(lines, "tensors",
           f"{s['tensor_count']}, {_count(s[params_key])} parameters, {_bytes(s['total_bytes'])}")
    _histogram(lines, "by dtype", s["dtypes"])
    if "tensors" in s:
        _tensor_lines(lines, s["tensors"], "dtype")
    return "\n".join(lines)
