"""``pyft.io.serving``: chat template, end-of-turn tokens and the serving files of a model directory.

It sits in :mod:`pyft.io` because both merge (:mod:`pyft.io.merge`, which writes these files into a merged
directory) and every export target (:mod:`pyft.export`) need it; :mod:`pyft.export` imports it from here,
so imports only go from ``export`` to ``io``.

A served model stops generating when it emits one of the ids in ``generation_config.json:eos_token_id``
(vLLM, transformers) and renders prompts with the tokenizer's chat template. Tools disagree on where that
template lives (spec §2.3, §3.6): transformers prefers ``chat_template.jinja``, llama.cpp reads
``tokenizer_config.json`` first (and only when that file exists), Ollama's converter reads only
``tokenizer_config.json``. So a merged directory carries the template both inline and as a file, and every
token that ends an assistant turn is listed as an eos id.

End-of-turn tokens are found by rendering a probe conversation with pyft's Rust renderer
(:func:`pyft._core.render_template`) and reading the special token that follows the assistant's content;
nothing here matches template source text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyft import _core
from pyft.errors import ConfigError
from pyft.io.files import data_error, json_field, read_json_object, read_text

PathLike = str | os.PathLike[str]

#: The file pyft's trainer writes next to adapters and models (``{"system_prompt": ...}``).
RUN_FILE = "pyft_run.json"

_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")

# Sentinels used as message contents in probe conversations: plain ASCII words, no whitespace, so
# templates that trim content leave them unchanged and they cannot collide with template text.
PROBE_SYSTEM = "pyftSYS0"
PROBE_USER = ("pyftUSR1", "pyftUSR2", "pyftUSR3")
PROBE_ASSISTANT = ("pyftAST1", "pyftAST2", "pyftAST3")


def _read_json(path: Path) -> dict[str, Any]:
    """A model directory's JSON file, read by pyft's checked reader (a regular file holding an object)."""
    return read_json_object(path)


def _dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _template_from_value(value: Any, path: Path) -> str | None:
    """A ``chat_template`` value: a string, or HF's list of ``{"name", "template"}`` (the ``default`` one)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and entry.get("name") == "default" and isinstance(entry.get("template"), str):
                return entry["template"]
        names = [e.get("name") for e in value if isinstance(e, dict)]
        raise ConfigError(f"{path}: `chat_template` is a list of named templates without a `default` one ({names})")
    raise ConfigError(f"{path}: `chat_template` must be a string or a list of named templates, "
                      f"got {type(value).__name__}")


def load_chat_template(*dirs: PathLike) -> str | None:
    """The first chat template found, searching ``dirs`` in order.

    In each directory: ``chat_template.jinja``, then ``tokenizer_config.json["chat_template"]`` (a string, or
    the list-of-named-templates form, whose ``default`` entry is taken), then ``chat_template.json``
    (``{"chat_template": ...}``, as processors save it). This is transformers' order of preference.

    Returns:
        The Jinja source, or ``None`` when no directory has one.

    Raises:
        ConfigError: a file that should hold the template is malformed.
    """
    for d in map(Path, dirs):
        jinja = d / "chat_template.jinja"
        if jinja.is_file():
            return read_text(jinja)
        for name in ("tokenizer_config.json", "chat_template.json"):
            path = d / name
            if path.is_file():
                data = _read_json(path)
                if isinstance(data, dict):
                    template = _template_from_value(data.get("chat_template"), path)
                    if template is not None:
                        return template
    return None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_tokens(tokenizer_dir: PathLike) -> dict[str, str]:
    """``bos_token``/``eos_token``/``pad_token``/``unk_token`` texts from ``tokenizer_config.json``
    (falling back to ``special_tokens_map.json``); absent or null tokens are left out."""
    d = Path(tokenizer_dir)
    out: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = d / name
        if not path.is_file():
            continue
        data = _read_json(path)
        for key in _SPECIAL_KEYS:
            text = _token_text(data.get(key)) if isinstance(data, dict) else None
            if text is not None and key not in out:
                out[key] = text
    return out


class _Vocab:
    """Token text -> id from ``tokenizer.json`` (added tokens + model vocab) and ``tokenizer_config.json``
    (``added_tokens_decoder``), without loading a tokenizer library."""

    def __init__(self, tokenizer_dir: PathLike):
        d = Path(tokenizer_dir)
        self.added: dict[str, int] = {}
        self.vocab: dict[str, int] = {}
        tj = d / "tokenizer.json"
        if tj.is_file():
            data = _read_json(tj)
            for i, tok in enumerate(json_field(data, tj, "added_tokens", "list", [])):
                if not (isinstance(tok, dict) and isinstance(tok.get("content"), str) and _is_id(tok.get("id"))):
                    raise data_error(tj, f"field `added_tokens[{i}]` must be an object with a string `content` and "
                                         "an integer `id`", f"added_tokens[{i}]")
                self.added.setdefault(tok["content"], tok["id"])
            vocab = json_field(json_field(data, tj, "model", "object", {}), tj, "vocab", "object_or_list",
                               prefix="model.")
            if isinstance(vocab, dict):
                if not all(_is_id(v) for v in vocab.values()):
                    raise data_error(tj, "field `model.vocab` must map tokens to integer ids", "model.vocab")
                self.vocab = dict(vocab)
            elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
                if not all(isinstance(e, list) and e and isinstance(e[0], str) for e in vocab):
                    raise data_error(tj, "field `model.vocab` must be a list of [piece, score] pairs", "model.vocab")
                self.vocab = {entry[0]: i for i, entry in enumerate(vocab)}
        tc = d / "tokenizer_config.json"
        if tc.is_file():
            decoder = json_field(_read_json(tc), tc, "added_tokens_decoder", "object", {})
            for sid, tok in decoder.items():
                text = _token_text(tok)
                if text is not None:
                    if not sid.isdigit():
                        raise data_error(tc, f"field `added_tokens_decoder`: key {sid!r} is not a token id",
                                         "added_tokens_decoder")
                    self.added.setdefault(text, int(sid))

    def id(self, text: str) -> int | None:
        if text in self.added:
            return self.added[text]
        return self.vocab.get(text)

    def added_prefix(self, text: str) -> str | None:
        """The longest added token that ``text`` starts with."""
        best = None
        for tok in self.added:
            if tok and text.startswith(tok) and (best is None or len(tok) > len(best)):
                best = tok
        return best


def render(template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
           tokens: dict[str, str] | None = None) -> str:
    """Render ``messages`` with pyft's Rust renderer (thin wrapper over :func:`pyft._core.render_template`)."""
    text, _spans = _core.render_template(template, json.dumps(messages), add_generation_prompt,
                                         json.dumps(tokens or {}))
    return text


def _probe_conversations() -> Iterable[list[dict[str, str]]]:
    u, a = PROBE_USER, PROBE_ASSISTANT
    yield [{"role": "user", "content": u[0]}, {"role": "assistant", "content": a[0]}]
    yield [{"role": "user", "content": u[0]}, {"role": "assistant", "content": a[0]},
           {"role": "user", "content": u[1]}, {"role": "assistant", "content": a[1]}]


def end_of_turn_tokens(template: str, tokenizer_dir: PathLike) -> list[tuple[str, int]]:
    """Every token that ends an assistant turn under ``template``, with its id in the tokenizer.

    The template is rendered (pyft's renderer) on probe conversations; the added token right after each
    assistant message's content (leading whitespace skipped) is an end-of-turn token: ``<|im_end|>`` for
    ChatML, ``<|eot_id|>`` for Llama 3, ``</s>`` for Mistral/Llama 2/Alpaca/Zephyr, ``<end_of_turn>``
    for Gemma. The tokenizer's eos token comes first (transformers' ``generate`` pads with the first eos
    id), then the template's tokens in order of appearance, deduplicated. Texts that are not a single
    token of this tokenizer are left out (they cannot be eos ids).

    Args:
        template: Jinja chat template source.
        tokenizer_dir: directory with ``tokenizer.json`` and/or ``tokenizer_config.json``.

    Returns:
        ``[(token_text, token_id), ...]``.

    Raises:
        TemplateError: the template fails on a plain user/assistant conversation.
    """
    tokens = special_tokens(tokenizer_dir)
    vocab = _Vocab(tokenizer_dir)
    found: list[str] = []
    if "eos_token" in tokens:
        found.append(tokens["eos_token"])
    for messages in _probe_conversations():
        text = render(template, messages, tokens=tokens)
        for m in messages:
            if m["role"] != "assistant":
                continue
            at = text.find(m["content"])
            if at < 0:
                continue
            tok = vocab.added_prefix(text[at + len(m["content"]):].lstrip())
            if tok is not None:
                found.append(tok)
    out: list[tuple[str, int]] = []
    for text in dict.fromkeys(found):
        tid = vocab.id(text)
        if tid is not None:
            out.append((text, tid))
    return out


def default_system_prompt(*dirs: PathLike) -> str | None:
    """The system prompt recorded by pyft's trainer in ``pyft_run.json`` (first directory that has one)."""
    for d in map(Path, dirs):
        path = d / RUN_FILE
        if path.is_file():
            data = _read_json(path)
            prompt = data.get("system_prompt") if isinstance(data, dict) else None
            if prompt:
                if not isinstance(prompt, str):
                    raise ConfigError(f"{path}: `system_prompt` must be a string")
                return prompt
    return None


def _first_with(dirs: list[Path], *names: str) -> Path | None:
    for d in dirs:
        if any((d / n).is_file() for n in names):
            return d
    return None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ids(data: dict[str, Any], path: Path, key: str) -> list[int]:
    """``data[key]``: a token id or a list of them (``eos_token_id``), checked."""
    value = json_field(data, path, key, "int_or_int_list")
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def serving_files(model_dirs: list[PathLike]) -> dict[str, bytes]:
    """The files a merged or served model directory needs beyond the copied base files.

    ``model_dirs`` is searched in order (adapter directory first, then base) for the chat template, the
    tokenizer and ``generation_config.json``.

    Returns:
        ``{file name: content}``:

        - ``generation_config.json``: the base's (same keys, same order) with ``eos_token_id`` set to every
          end-of-turn id (the base's own ids first, a single int when there is only one), plus
          ``bos_token_id``/``pad_token_id`` when missing and known from the tokenizer or ``config.json``.
        - ``tokenizer_config.json``: the base's, with ``chat_template`` set inline (in the ``default`` entry
          when the base uses the list form); only when a template is found.
        - ``chat_template.jinja``: the template; only when one is found.
        - ``pyft_run.json``: the training run's template name and default system prompt, when a directory
          has one (so exports of the merged model still find the system prompt).
    """
    dirs = [Path(d) for d in model_dirs]
    template = load_chat_template(*dirs)
    tok_dir = _first_with(dirs, "tokenizer.json", "tokenizer_config.json")
    tokens = special_tokens(tok_dir) if tok_dir else {}
    vocab = _Vocab(tok_dir) if tok_dir else None
    files: dict[str, bytes] = {}

    gen_dir = _first_with(dirs, "generation_config.json")
    gen_path = gen_dir / "generation_config.json" if gen_dir else Path("generation_config.json")
    gen: dict[str, Any] = _read_json(gen_path) if gen_dir else {}
    cfg_dir = _first_with(dirs, "config.json")
    cfg_path = cfg_dir / "config.json" if cfg_dir else Path("config.json")
    model_cfg: dict[str, Any] = _read_json(cfg_path) if cfg_dir else {}

    eos = _ids(gen, gen_path, "eos_token_id")
    if template is not None and tok_dir is not None:
        eot = [tid for _, tid in end_of_turn_tokens(template, tok_dir)]
    elif vocab is not None and "eos_token" in tokens and vocab.id(tokens["eos_token"]) is not None:
        eot = [vocab.id(tokens["eos_token"])]  # type: ignore[list-item]
    else:
        eot = _ids(model_cfg, cfg_path, "eos_token_id")
    eos += [i for i in eot if i not in eos]
    if eos:
        gen["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    for key in ("bos_token_id", "pad_token_id"):
        if gen.get(key) is not None:
            continue
        text = tokens.get(key.removesuffix("_id"))
        tid = vocab.id(text) if (vocab is not None and text is not None) else None
        if tid is None and isinstance(model_cfg.get(key), int):
            tid = model_cfg[key]
        if tid is not None:
            gen[key] = tid
    if gen:
        files["generation_config.json"] = _dump_json(gen)

    if template is not None:
        tc_dir = _first_with(dirs, "tokenizer_config.json")
        tc: dict[str, Any] = _read_json(tc_dir / "tokenizer_config.json") if tc_dir else {}
        current = tc.get("chat_template")
        if isinstance(current, list):
            tc["chat_template"] = [dict(e, template=template) if isinstance(e, dict) and e.get("name") == "default"
                                   else e for e in current]
        else:
            tc["chat_template"] = template
        files["tokenizer_config.json"] = _dump_json(tc)
        files["chat_template.jinja"] = template.encode("utf-8")
    run_dir = _first_with(dirs, RUN_FILE)
    if run_dir is not None:
        files[RUN_FILE] = (run_dir / RUN_FILE).read_bytes()
    return files
