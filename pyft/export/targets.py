"""``pyft-export`` targets: what each serving stack needs, written in one call.

- :func:`to_gguf` / :func:`to_gguf_lora`: one ``.gguf`` file (model, or LoRA adapter).
- :func:`to_ollama`: a directory with the GGUF(s) and a ``Modelfile`` (explicit ``TEMPLATE``
  translated from the chat template, ``PARAMETER stop`` for every end-of-turn token, ``SYSTEM`` from
  the data's default system prompt) plus the ``ollama create`` command. With adapters: base GGUF +
  GGUF LoRA + ``ADAPTER``, or one merged GGUF with ``merge=True``.
- :func:`to_vllm`: a merged HF directory with the serving files (all end-of-turn ids in
  ``generation_config.json``, the chat template inline and as ``chat_template.jinja``), or an
  adapter directory checked against vLLM's LoRA limits, plus the exact ``vllm serve`` command.

Each returns an :class:`ExportResult` listing the files written and the commands to serve them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pyft._atomic import atomic_directory, check_output_disjoint
from pyft.errors import ConfigError
from pyft.export.gguf import GgufReport, export_gguf, export_gguf_lora
from pyft.export.ollama import ollama_create_command, template_for, write_modelfile
from pyft.export.vllm import (
    check_vllm_adapter,
    required_max_lora_rank,
    vllm_adapter_error_message,
    vllm_serve_command,
)
from pyft.io.files import json_field, read_json_object
from pyft.io.serving import default_system_prompt

PathLike = str | os.PathLike[str]


@dataclass
class ExportResult:
    """Files written by an export and how to serve them.

    Attributes:
        files: every file or directory written.
        commands: shell commands that serve the result (``ollama create ...``, ``vllm serve ...``).
        reports: GGUF reports, when GGUF files were written.
        notes: anything the user should know (guessed pre-tokenizer, ...).
    """

    files: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    reports: list[GgufReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_adapter_dir(path: PathLike) -> bool:
    """Whether ``path`` is a PEFT adapter directory."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter: PathLike, base: PathLike | None = None) -> Path:
    """The base model directory of ``adapter``: ``base`` if given, else its ``base_model_name_or_path``
    when that is a local directory or a Hugging Face Hub id (fetched at the adapter's ``revision``,
    see :mod:`pyft.hub`)."""
    from pyft.hub import hub_ref, resolve_model

    if base is not None:
        return resolve_model(base)
    cfg_path = Path(adapter) / "adapter_config.json"
    cfg = read_json_object(cfg_path)
    name = json_field(cfg, cfg_path, "base_model_name_or_path", "str")
    if name and (Path(name) / "config.json").is_file():
        return Path(name)
    found = hub_ref(name) if name else None
    if found is not None:
        repo_id, inline = found
        # PEFT records the base model's revision in `revision`.
        return resolve_model(repo_id, revision=inline or json_field(cfg, cfg_path, "revision", "str"))
    raise ConfigError(f"{cfg_path}: base_model_name_or_path {name!r} is neither a local model directory nor a "
                      "Hub id; pass the base model with --base")


def _notes(report: GgufReport) -> list[str]:
    notes = [f"{report.path.name}: {w}" for w in report.warnings]
    if report.dequantized_nf4:
        notes.append(f"{report.path.name}: {report.dequantized_nf4} weights dequantized from the 4-bit NF4 base and "
                     f"written as {report.qtype.upper()} (not re-quantized to NF4)")
    return notes


def to_gguf(model: PathLike, out: PathLike, *, qtype: str = "f16", adapters: list[PathLike] | None = None,
            overwrite: bool = False, **merge_options) -> ExportResult:
    """One GGUF model file (``adapters`` merged on the fly)."""
    report = export_gguf(model, out, qtype=qtype, adapters=adapters or [], overwrite=overwrite, **merge_options)
    return ExportResult(files=[report.path], reports=[report], notes=_notes(report),
                        commands=[f"llama-cli -m {report.path}", f"llama-server -m {report.path}"])


def to_gguf_lora(adapter: PathLike, out: PathLike, *, base: PathLike | None = None, dtype: str = "f32",
                 overwrite: bool = False) -> ExportResult:
    """One GGUF LoRA adapter file for ``adapter`` over its base."""
    base_dir = adapter_base(adapter, base)
    report = export_gguf_lora(adapter, base_dir, out, dtype=dtype, overwrite=overwrite)
    return ExportResult(files=[report.path], reports=[report],
                        commands=[f"llama-cli -m BASE.gguf --lora {report.path}"],
                        notes=[f"convert the base with: pyft-export {base_dir} --to gguf --out BASE.gguf"])


def to_ollama(model: PathLike, out_dir: PathLike, *, qtype: str = "q8_0", adapters: list[PathLike] | None = None,
              merge: bool = False, model_name: str | None = None, system: str | None = None,
              num_ctx: int | None = None, lora_dtype: str = "f32", overwrite: bool = False,
              **merge_options) -> ExportResult:
    """A directory Ollama imports with ``ollama create NAME -f DIR/Modelfile``."""
    model = Path(model)
    adapters = [Path(a) for a in adapters or []]
    search = [*adapters, model]
    tmpl = template_for(*search)
    if system is None:
        system = default_system_prompt(*search)
    name = model_name or Path(out_dir).resolve().name
    result = ExportResult()
    check_output_disjoint(out_dir, [model, *adapters])
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        if adapters and not merge:
            if len(adapters) > 1:
                raise ConfigError("Ollama takes one ADAPTER per model: pass --merge to merge several adapters")
            base = export_gguf(model, tmp / "model.gguf", qtype=qtype)
            lora = export_gguf_lora(adapters[0], model, tmp / "adapter.gguf", dtype=lora_dtype)
            result.reports += [base, lora]
            adapter_file: str | None = "./adapter.gguf"
        else:
            report = export_gguf(model, tmp / "model.gguf", qtype=qtype, adapters=adapters, **merge_options)
            result.reports.append(report)
            adapter_file = None
        write_modelfile(tmp / "Modelfile", from_="./model.gguf", adapter=adapter_file, template=tmpl.template,
                        stops=tmpl.stops, system=system, num_ctx=num_ctx)
    out = Path(out_dir)
    result.files = [out / "model.gguf", *([out / "adapter.gguf"] if adapter_file else []), out / "Modelfile"]
    result.commands = [ollama_create_command(name, out / "Modelfile"), f"ollama run {name}"]
    result.notes = [n for r in result.reports for n in _notes(r)] + [f"chat template family: {tmpl.family}"]
    for r in result.reports:
        r.path = out / r.path.name
    return result


def to_vllm(model: PathLike, out_dir: PathLike, *, adapters: list[PathLike] | None = None, merge: bool = False,
            served_name: str | None = None, dtype: str = "auto", overwrite: bool = False,
            **merge_options) -> ExportResult:
    """A directory vLLM serves: merged model, or the adapter checked against vLLM's LoRA rules."""
    from pyft.io.merge import merge as merge_model
    from pyft.io.merge import nf4_note

    model = Path(model)
    adapters = [Path(a) for a in adapters or []]
    out = Path(out_dir)
    result = ExportResult(files=[out])
    if adapters and not merge:
        if len(adapters) > 1:
            raise ConfigError("vLLM serves each adapter by name: export them one at a time, or pass --merge")
        check_output_disjoint(out, [model, *adapters])
        problems = check_vllm_adapter(adapters[0])
        if problems:
            raise ConfigError(vllm_adapter_error_message(problems, adapters[0]))
        with atomic_directory(out, overwrite=overwrite) as tmp:
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(adapters[0] / f, tmp / f)
        rank = required_max_lora_rank(out)
        result.commands = [vllm_serve_command(str(model.resolve()), adapter_dir=out, adapter_name=served_name or out.name,
                                              max_lora_rank=rank)]
        return result
    report = merge_model(model, adapters, out, dtype=dtype, overwrite=overwrite, **merge_options)
    note = nf4_note(report)
    result.notes = [note] if note else []
    result.commands = [vllm_serve_command(str(out.resolve()), served_name=served_name)]
    return result
