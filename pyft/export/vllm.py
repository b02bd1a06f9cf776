"""``pyft.export.vllm``: will vLLM 0.33 serve this LoRA adapter, and the ``vllm serve`` command for it.

The checks mirror what vLLM's ``PEFTHelper`` and LoRA loader refuse (spec §2.1): DoRA, ``modules_to_save``
other than a classifier head, LoRA bias, trained base biases, base-mutating init schemes (PiSSA, OLoRA,
CorDA, LoftQ), aLoRA, layer replication, BD-LoRA, QA-LoRA, ranks above 512, and tensors that are not LoRA
A/B matrices. Such an adapter can still be served after merging it into the base model (``--merge``).
Only ``adapter_config.json`` and the safetensors header are read: no torch, no weights loaded.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from pyft.errors import ConfigError
from pyft.io.files import check_adapter_config, read_json_object
from pyft.io.safetensors import read_header

PathLike = str | os.PathLike[str]

#: Values ``--max-lora-rank`` accepts (vllm/config/lora.py); the default is 16.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16

# init_lora_weights strings vLLM accepts; the others (pissa*, olora, corda, loftq) change the base weights.
_INIT_OK = {"gaussian", "eva", "orthogonal", "mica", "lora_ga"}
_MODULES_TO_SAVE_OK = {"classifier", "score"}
_REQUIRED = ("r", "lora_alpha", "target_modules")
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
_SKIPPED = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")


#: Adapter kinds that add tokens or activations rather than change weights: nothing to merge, and
#: vLLM/llama.cpp do not load them (the Rust merge refuses them with the same reasons).
UNMERGEABLE = {
    "PROMPT_TUNING": "prompt tuning prepends learned virtual-token embeddings to the input",
    "MULTITASK_PROMPT_TUNING": "prompt tuning prepends learned virtual-token embeddings to the input",
    "P_TUNING": "P-tuning prepends virtual-token embeddings (made by its prompt encoder) to the input",
    "PREFIX_TUNING": "prefix tuning (and P-tuning v2) adds learned key/value vectors in front of every attention "
                     "layer's keys and values",
    "ADAPTION_PROMPT": "adaption prompts add learned, gated prompt tokens to the top attention layers",
    "PYFT_BOTTLENECK": "bottleneck adapters add new down-projection/non-linearity/up-projection modules to every layer",
}

#: Adapter kinds vLLM does not serve as adapters but that merge into the base weights.
MERGEABLE_NOT_LORA = ("IA3", "OFT")


def unmergeable_message(peft_type: str, label: str | None = None) -> str | None:
    """Why an adapter of ``peft_type`` (called ``label`` in the message) can be neither merged nor
    served by vLLM/llama.cpp, and what serves it; ``None`` for the other kinds."""
    reason = UNMERGEABLE.get(peft_type)
    if reason is None:
        return None
    label = label or peft_type
    return (f"a {label} adapter cannot be merged or exported as merged weights: {reason}, which no change of the "
            "base model's weights reproduces (there is no weight to fold it into). Serve the base model with the "
            "adapter in transformers/PEFT (PeftModel.from_pretrained(base, adapter), or pyft generate/eval with the "
            f"adapter); vLLM and llama.cpp/Ollama do not load {peft_type} adapters. Mergeable adapters: LORA, IA3, "
            "OFT")


def _config(adapter_dir: PathLike) -> dict[str, Any]:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter directory)")
    cfg = read_json_object(path)
    check_adapter_config(cfg, path)
    return cfg


def _max_rank(cfg: dict[str, Any]) -> int:
    ranks = [int(cfg.get("r") or 0)] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    return max(ranks)


def safetensors_names(path: PathLike) -> list[str]:
    """Tensor names in a safetensors file, in data order, from its header as the Rust core validates it.

    Raises:
        DataError: not a valid safetensors file (``.file`` and the message name ``path``).
    """
    return read_header(path).names()


def _tensor_problems(adapter_dir: Path) -> list[str]:
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        if (adapter_dir / "adapter_model.bin").is_file() or (adapter_dir / "adapter_model.pt").is_file():
            return []  # vLLM loads these too; their tensor names are not checked here (needs torch)
        return ["no adapter_model.safetensors (or .bin/.pt) in the adapter directory"]
    bad = []
    for name in safetensors_names(path):
        short = name.removeprefix("base_model.model.")
        if short.endswith(_SKIPPED) or short.endswith(_SUFFIXES):
            continue
        bad.append(name)
    if not bad:
        return []
    shown = ", ".join(f"`{n}`" for n in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return [f"tensors that are not LoRA A/B matrices ({shown}): vLLM stops with 'is unsupported LoRA weight'"]


def check_vllm_adapter(adapter_dir: PathLike) -> list[str]:
    """What vLLM 0.33 would refuse in a PEFT LoRA adapter directory.

    Args:
        adapter_dir: directory with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        One sentence per problem; empty when vLLM can serve the adapter as it is (with
        ``--max-lora-rank`` at least :func:`required_max_lora_rank`).

    Raises:
        ConfigError: ``adapter_config.json`` is missing, or the adapter is of a kind that neither vLLM
            serves nor merging turns into weights (prompt/prefix tuning, P-tuning, bottleneck adapters:
            the message says why and what serves them).
        DataError: ``adapter_config.json`` is not JSON, or ``adapter_model.safetensors`` is not a valid
            safetensors file (the message names the file).
    """
    d = Path(adapter_dir)
    cfg = _config(d)
    problems: list[str] = []
    peft_type = cfg.get("peft_type", "LORA")
    label = None
    if "peft_type" not in cfg and (isinstance(cfg.get("config"), dict) or str(cfg.get("version", "")).startswith(
            ("adapters.", "adapter-transformers"))):
        peft_type, label = "PYFT_BOTTLENECK", "bottleneck (AdapterHub)"  # the `adapters` library's layout
    refusal = unmergeable_message(peft_type, label) if isinstance(peft_type, str) else None
    if refusal is not None:
        raise ConfigError(f"{d / 'adapter_config.json'}: {refusal}")
    if peft_type != "LORA":
        hint = f" (an {peft_type} adapter merges into the base weights: pass --merge)" \
            if peft_type in MERGEABLE_NOT_LORA else ""
        return [f"`peft_type` is {peft_type!r}: vLLM serves LoRA adapters only{hint}"]
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        problems.append(f"adapter_config.json lacks {', '.join(f'`{k}`' for k in missing)} (vLLM requires them)")
    if cfg.get("use_dora"):
        problems.append("DoRA (`use_dora: true`): vLLM does not support DoRA")
    mts = cfg.get("modules_to_save")
    mts = [mts] if isinstance(mts, str) else mts
    if mts and not set(mts) <= _MODULES_TO_SAVE_OK:
        problems.append(f"`modules_to_save` {sorted(mts)}: vLLM only allows `classifier` or `score`")
    if cfg.get("lora_bias"):
        problems.append("`lora_bias: true`: vLLM does not support a bias on lora_B")
    if cfg.get("bias", "none") != "none":
        problems.append(f"`bias: {cfg['bias']!r}`: vLLM needs `none` (trained base biases are not LoRA weights)")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init not in _INIT_OK:
        problems.append(f"`init_lora_weights: {init!r}` changes the base weights; vLLM refuses it "
                        f"(accepted: true, false, {', '.join(sorted(_INIT_OK))})")
    if cfg.get("alora_invocation_tokens"):
        problems.append("aLoRA (`alora_invocation_tokens`): not supported by vLLM")
    if cfg.get("layer_replication"):
        problems.append("`layer_replication`: not supported by vLLM")
    if cfg.get("use_bdlora"):
        problems.append("BD-LoRA (`use_bdlora`): not supported by vLLM")
    if cfg.get("use_qalora"):
        problems.append("QA-LoRA (`use_qalora: true`): not supported by vLLM")
    if "r" in cfg and _max_rank(cfg) > MAX_LORA_RANKS[-1]:
        problems.append(f"rank {_max_rank(cfg)} (max of `r` and `rank_pattern`) is above vLLM's limit of "
                        f"{MAX_LORA_RANKS[-1]}")
    problems += _tensor_problems(d)
    return problems


def required_max_lora_rank(adapter_dir: PathLike) -> int:
    """The smallest ``--max-lora-rank`` value (one of :data:`MAX_LORA_RANKS`) that fits the adapter's
    largest rank (``r`` and ``rank_pattern`` values).

    Raises:
        ConfigError: the rank is above 512.
    """
    cfg = _config(adapter_dir)
    if "r" not in cfg:
        raise ConfigError(f"{adapter_dir}/adapter_config.json: no `r`")
    rank = _max_rank(cfg)
    for allowed in MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(f"{adapter_dir}: LoRA rank {rank} is above vLLM's limit of {MAX_LORA_RANKS[-1]}: "
                      "merge the adapter into the base model (--merge)")


def _model_arg(model: str) -> str:
    """A local model directory as an absolute path; a Hub id as it is."""
    return str(Path(model).absolute()) if Path(model).exists() else model


def vllm_serve_command(
    model: str,
    *,
    adapter_dir: PathLike | None = None,
    adapter_name: str | None = None,
    max_lora_rank: int | None = None,
    served_name: str | None = None,
) -> str:
    """The ``vllm serve`` command (spec §2.2), one option per line, absolute paths, shell-quoted.

    Args:
        model: base (or merged) model: a local directory or a Hub id.
        adapter_dir: a LoRA adapter to serve on top of ``model`` (``--enable-lora --lora-modules``).
        adapter_name: the name requests use as ``"model"`` (default: the adapter directory's name).
        max_lora_rank: ``--max-lora-rank`` (default: :func:`required_max_lora_rank`; omitted when it is
            vLLM's default 16).
        served_name: ``--served-model-name`` for the base model.

    Raises:
        ConfigError: ``max_lora_rank`` is not a value vLLM accepts or is below the adapter's rank.
    """
    parts = [["vllm", "serve", _model_arg(model)]]
    if served_name:
        parts.append(["--served-model-name", served_name])
    if adapter_dir is not None:
        adapter = Path(adapter_dir).absolute()
        needed = required_max_lora_rank(adapter)
        rank = needed if max_lora_rank is None else max_lora_rank
        if rank not in MAX_LORA_RANKS:
            raise ConfigError(f"max_lora_rank {rank}: vLLM accepts {', '.join(map(str, MAX_LORA_RANKS))}")
        if rank < needed:
            raise ConfigError(f"max_lora_rank {rank} is below the adapter's rank (needs {needed})")
        name = adapter_name or adapter.name
        if "=" in name or not name.strip():
            raise ConfigError(f"adapter name {name!r}: must be non-empty and without '='")
        parts.append(["--enable-lora"] + (["--max-lora-rank", str(rank)] if rank != DEFAULT_MAX_LORA_RANK else []))
        parts.append(["--lora-modules", f"{name}={adapter}"])
    return " \\\n  ".join(" ".join(shlex.quote(p) for p in line) for line in parts)


def vllm_adapter_error_message(problems: list[str], adapter_dir: PathLike | None = None) -> str:
    """The message shown when vLLM cannot serve an adapter: the problems, and merging as the way out."""
    where = f" in {adapter_dir}" if adapter_dir is not None else ""
    lines = [f"vLLM 0.33 cannot serve the LoRA adapter{where}:"]
    lines += [f"  - {p}" for p in problems]
    lines.append("Merge it into the base model and serve the merged model instead (--merge): merging folds "
                 "DoRA, modules_to_save, biases and any rank into plain weights.")
    return "\n".join(lines)
