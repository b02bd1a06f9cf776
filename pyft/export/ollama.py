"""``pyft.export.ollama``: an explicit Ollama ``TEMPLATE`` from a Jinja chat template, and the Modelfile.

Ollama renders prompts with a Go ``text/template``; it only picks one by itself when the GGUF's Jinja
template is within a small edit distance of one it ships (spec §3.2), so a fine-tuned model needs an
explicit ``TEMPLATE`` and ``PARAMETER stop`` lines (ollama#8363, #6371).

Translation works on *rendered output*, not template source: the Jinja template is rendered (pyft's Rust
renderer) on probe conversations with sentinel contents, the text around each sentinel gives the turn
layout (prefix, per-role header/footer, where the system prompt goes, the generation prompt), a Go
template is built from that layout, and the layout is checked against the Jinja rendering of further
probe conversations. Supported families: ChatML, Llama 3, Mistral, Llama 2, Gemma, Alpaca, Zephyr.

The Go template renders the Jinja prompt for ``add_generation_prompt=True`` minus a leading ``bos_token``:
llama.cpp (which Ollama runs) adds BOS itself when it tokenizes the prompt, as Ollama's own templates
assume. Differences that Go templates cannot express: Jinja ``| trim`` on contents (Ollama passes contents
as sent), and Ollama merges consecutive messages of one role with a blank line and gathers all system
messages into ``.System``.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyft._atomic import atomic_file
from pyft.errors import ConfigError, TemplateError
from pyft.io.serving import (
    PROBE_ASSISTANT,
    PROBE_SYSTEM,
    PROBE_USER,
    end_of_turn_tokens,
    load_chat_template,
    render,
    special_tokens,
)

PathLike = str | os.PathLike[str]

#: Turn markers Ollama's own templates stop on (template/*.json), per family; end-of-turn tokens are added.
FAMILY_STOPS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "mistral": ("[INST]", "[/INST]"),
    "llama2": ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "alpaca": ("### Instruction:", "### Response:"),
    "zephyr": ("<|system|>", "<|user|>", "<|assistant|>"),
}
SUPPORTED_FAMILIES = tuple(FAMILY_STOPS)


@dataclass(frozen=True)
class OllamaTemplate:
    """An Ollama Go template translated from a Jinja chat template.

    Attributes:
        template: the Go ``text/template`` source for the Modelfile's ``TEMPLATE``.
        stops: ``PARAMETER stop`` values: end-of-turn tokens first, then the family's turn markers.
        family: ``chatml``, ``llama3``, ``mistral``, ``llama2``, ``gemma``, ``alpaca`` or ``zephyr``.
        strips_bos: the Jinja output starts with ``bos_token``, left to the runtime.
    """

    template: str
    stops: list[str]
    family: str
    strips_bos: bool


@dataclass
class _Layout:
    """Turn layout read off rendered probes (texts as Ollama should produce them, leading BOS removed)."""

    prefix: str  # before the first turn when there is no system prompt
    user_first: str  # header of the first user turn (no system prompt)
    user: str  # header of later user turns
    user_end: str
    assistant: str
    assistant_end: str
    generation: str  # the generation prompt
    system_mode: str  # "block" (own block before the turns), "folded" (inside the first user turn), "none"
    system_open: str = ""  # block: everything before the system text; folded: between user_first and the text
    system_close: str = ""  # block: between the system text and the first user header; folded: before the content
    user_first_after_system: str = ""  # block mode: header of the first user turn after the system block


def _split(text: str, marker: str) -> tuple[str, str]:
    at = text.find(marker)
    if at < 0:
        raise _Mismatch(f"probe text {marker!r} not in the rendering")
    return text[:at], text[at + len(marker):]


class _Mismatch(Exception):
    """The template does not fit the layout being read."""


def _go_literal(text: str) -> str:
    """Literal text for a Go template (an action quoting it when it contains a delimiter)."""
    if "{{" in text or "}}" in text:
        return "{{ " + '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '" }}'
    return text


class _Renderer:
    def __init__(self, template: str, bos_token: str | None, eos_token: str | None):
        self.template = template
        self.tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
        self.bos = bos_token or ""
        self.saw_bos = False

    def __call__(self, messages: list[dict[str, str]], generation: bool = True) -> str:
        text = render(self.template, messages, add_generation_prompt=generation, tokens=self.tokens)
        if self.bos and text.startswith(self.bos):
            self.saw_bos = True
            text = text[len(self.bos):]
        return text


def _conversation(n_turns: int, system: bool) -> list[dict[str, str]]:
    """``system?``, then user/assistant pairs, ending with a user message: ``n_turns`` user messages."""
    msgs = [{"role": "system", "content": PROBE_SYSTEM}] if system else []
    for i in range(n_turns):
        msgs.append({"role": "user", "content": PROBE_USER[i]})
        if i + 1 < n_turns:
            msgs.append({"role": "assistant", "content": PROBE_ASSISTANT[i]})
    return msgs


def _read_layouts(r: _Renderer) -> list[_Layout]:
    """Candidate layouts (block, folded or no system) read from a handful of probe renderings."""
    u1, u2 = PROBE_USER[0], PROBE_USER[1]
    a1 = PROBE_ASSISTANT[0]
    only_user = r(_conversation(1, False), generation=False)
    with_gen = r(_conversation(1, False))
    if not with_gen.startswith(only_user):
        raise _Mismatch("the generation prompt is not appended at the end")
    generation = with_gen[len(only_user):]
    before_u1, user_end = _split(only_user, u1)
    ua = r([{"role": "user", "content": u1}, {"role": "assistant", "content": a1}], generation=False)
    if not ua.startswith(only_user):
        raise _Mismatch("an assistant turn changes the text before it")
    assistant, assistant_end = _split(ua[len(only_user):], a1)
    uau = r(_conversation(2, False), generation=False)
    _, after_a1 = _split(uau, a1)
    if not after_a1.startswith(assistant_end):
        raise _Mismatch("an assistant turn ends differently when it is not the last one")
    user, _ = _split(after_a1[len(assistant_end):], u2)
    if before_u1.endswith(user):
        prefix, user_first = before_u1[: len(before_u1) - len(user)], user
    else:
        prefix, user_first = "", before_u1
    base = dict(prefix=prefix, user_first=user_first, user=user, user_end=user_end, assistant=assistant,
                assistant_end=assistant_end, generation=generation)
    try:
        su = r(_conversation(1, True), generation=False)
    except TemplateError:
        return [_Layout(system_mode="none", **base)]
    before_s, after_s = _split(su, PROBE_SYSTEM)
    between, _ = _split(after_s, u1)
    layouts = []
    for head in (user, user_first):  # block: the system block is followed by a user header
        if between.endswith(head):
            layouts.append(_Layout(system_mode="block", system_open=before_s,
                                   system_close=between[: len(between) - len(head)], user_first_after_system=head,
                                   **base))
    if before_s.startswith(prefix + user_first):
        layouts.append(_Layout(system_mode="folded", system_open=before_s[len(prefix + user_first):],
                               system_close=between, **base))
    return layouts


def _emulate(lay: _Layout, messages: list[dict[str, str]]) -> str:
    """What the Go template built by :func:`_go_template` renders for ``messages`` (Ollama's chat path)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if lay.system_mode == "none":
        system = ""
    out = [lay.system_open + system + lay.system_close if (system and lay.system_mode == "block") else lay.prefix]
    first = True
    for m in messages:
        if m["role"] == "user":
            if first and system and lay.system_mode == "block":
                out.append(lay.user_first_after_system)
            elif first:
                out.append(lay.user_first)
                if system and lay.system_mode == "folded":
                    out.append(lay.system_open + system + lay.system_close)
            else:
                out.append(lay.user)
            out.append(m["content"] + lay.user_end)
            first = False
        elif m["role"] == "assistant":
            out.append(lay.assistant + m["content"] + lay.assistant_end)
            first = False
    out.append(lay.generation)
    return "".join(out)


def _go_template(lay: _Layout) -> str:
    """The Go template for a layout (no whitespace trimming: every character of literal text is output)."""
    lit = _go_literal
    block = lay.system_mode == "block"
    if block:
        head = f"{{{{ if .System }}}}{lit(lay.system_open)}{{{{ .System }}}}{lit(lay.system_close)}"
        head += f"{{{{ else }}}}{lit(lay.prefix)}{{{{ end }}}}" if lay.prefix else "{{ end }}"
        variants = {lay.user_first, lay.user_first_after_system, lay.user}
    else:
        head = lit(lay.prefix)
        variants = {lay.user_first, lay.user}
    needs_first = len(variants) > 1 or lay.system_mode == "folded"
    if not needs_first:
        user_head = lit(lay.user)
    else:
        if block and lay.user_first != lay.user_first_after_system:
            first = (f"{{{{ if $.System }}}}{lit(lay.user_first_after_system)}"
                     f"{{{{ else }}}}{lit(lay.user_first)}{{{{ end }}}}")
        else:
            first = lit(lay.user_first_after_system if block else lay.user_first)
        system = f"{lit(lay.system_open)}{{{{ $.System }}}}{lit(lay.system_close)}{{{{ end }}}}"
        if lay.system_mode == "folded" and lay.user_first == lay.user:
            user_head = f"{lit(lay.user)}{{{{ if and $first $.System }}}}{system}"
        else:
            if lay.system_mode == "folded":
                first += f"{{{{ if $.System }}}}{system}"
            user_head = f"{{{{ if $first }}}}{first}{{{{ else }}}}{lit(lay.user)}{{{{ end }}}}"
        head += "{{ $first := true }}"
    reset = "{{ $first = false }}" if needs_first else ""
    return (
        f"{head}{{{{ range .Messages }}}}"
        f'{{{{ if eq .Role "user" }}}}{user_head}{{{{ .Content }}}}{lit(lay.user_end)}{reset}'
        f'{{{{ else if eq .Role "assistant" }}}}{lit(lay.assistant)}{{{{ .Content }}}}{lit(lay.assistant_end)}{reset}'
        f"{{{{ end }}}}{{{{ end }}}}{lit(lay.generation)}"
    )


def _family(lay: _Layout, eos_token: str | None) -> str | None:
    """The family named by the rendered turn markers."""
    heads = lay.user + lay.assistant + lay.generation
    if "<|im_start|>" in heads:
        return "chatml"
    if "<|start_header_id|>" in heads:
        return "llama3"
    if "<start_of_turn>" in heads:
        return "gemma"
    if "<|user|>" in heads and "<|assistant|>" in heads:
        # Zephyr ends turns with eos; Phi-3 (same headers, <|end|>) is another family
        return "zephyr" if (eos_token or "</s>") in lay.assistant_end else None
    if "### Instruction" in heads and "### Response" in heads:
        return "alpaca"
    if "[INST]" in heads:
        return "llama2" if "<<SYS>>" in lay.system_open else "mistral"
    return None


def _validation_probes(system_ok: bool) -> list[list[dict[str, str]]]:
    probes = [_conversation(n, False) for n in (1, 2, 3)]
    if system_ok:
        probes += [_conversation(n, True) for n in (1, 2, 3)]
    return probes


def _unsupported(template: str, why: str) -> ConfigError:
    first = next((line.strip() for line in template.splitlines() if line.strip()), "")
    return ConfigError(
        f"cannot translate the chat template starting {first[:80]!r} into an Ollama TEMPLATE ({why}); "
        f"supported families: {', '.join(SUPPORTED_FAMILIES)}. Pass a Go template explicitly "
        "(`--template` on the command line, `template=` in Python)"
    )


def translate_template(
    template: str,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    end_of_turn: list[str] | None = None,
) -> OllamaTemplate:
    """Translate a Jinja chat template into an Ollama Go ``TEMPLATE`` and its ``PARAMETER stop`` list.

    Args:
        template: Jinja chat template source (as in ``tokenizer_config.json``).
        bos_token: the tokenizer's BOS text (rendered by ``{{ bos_token }}``; a leading one is dropped).
        eos_token: the tokenizer's EOS text (``{{ eos_token }}``, e.g. ``</s>`` in Mistral/Alpaca/Zephyr).
        end_of_turn: extra stop texts (e.g. from :func:`pyft.io.serving.end_of_turn_tokens`).

    Returns:
        An :class:`OllamaTemplate`.

    Raises:
        ConfigError: the template is not one of the supported families, or its layout cannot be expressed.
    """
    r = _Renderer(template, bos_token, eos_token)
    try:
        layouts = _read_layouts(r)
    except (_Mismatch, TemplateError) as e:
        raise _unsupported(template, str(e)) from None
    for lay in layouts:
        probes = _validation_probes(lay.system_mode != "none")
        try:
            if all(r(p) == _emulate(lay, p) for p in probes):
                break
        except TemplateError:
            continue
    else:
        raise _unsupported(template, "its turns do not follow a fixed per-role layout")
    family = _family(lay, eos_token)
    if family is None:
        raise _unsupported(template, f"unrecognized turn markers {lay.user.strip()!r}/{lay.assistant.strip()!r}")
    stops: list[str] = list(end_of_turn or [])
    end = lay.assistant_end.strip()
    if re.fullmatch(r"<[^<>\s]+>", end):
        stops.append(end)
    if eos_token and eos_token in lay.assistant_end:
        stops.append(eos_token)
    stops += FAMILY_STOPS[family]
    return OllamaTemplate(_go_template(lay), list(dict.fromkeys(stops)), family, r.saw_bos)


def template_for(*dirs: PathLike) -> OllamaTemplate:
    """:func:`translate_template` for the chat template and tokenizer found in ``dirs`` (searched in order).

    Raises:
        ConfigError: no directory has a chat template, or it cannot be translated.
    """
    template = load_chat_template(*dirs)
    if template is None:
        raise ConfigError(f"no chat template in {', '.join(map(str, dirs))}: pass a Go template explicitly "
                          "(`--template` on the command line, `template=` in Python)")
    tok_dir = next((Path(d) for d in dirs if (Path(d) / "tokenizer_config.json").is_file()), None)
    tokens = special_tokens(tok_dir) if tok_dir else {}
    eot = [t for t, _ in end_of_turn_tokens(template, tok_dir)] if tok_dir else []
    return translate_template(template, bos_token=tokens.get("bos_token"), eos_token=tokens.get("eos_token"),
                              end_of_turn=eot)


# --- Modelfile -------------------------------------------------------------------------------------------


def _parsed_value(raw: str) -> str | None:
    """The value Ollama's Modelfile parser reads from ``raw`` (the text after ``COMMAND ``), or None when it
    would stop early: a value ends at the first newline where the trimmed text so far unquotes."""
    def unquote(s: str) -> str | None:
        if s.startswith('"""'):
            return s[3:-3] if len(s) >= 6 and s.endswith('"""') else None
        if s.startswith('"'):
            return s[1:-1] if len(s) >= 2 and s.endswith('"') else None
        return s

    for at in [i for i, c in enumerate(raw) if c == "\n"] + [len(raw)]:
        value = unquote(raw[:at].strip(" \t\n\r\f\v"))
        if value is not None:
            return value if at == len(raw) else None
    return None


def _modelfile_value(name: str, value: str, *, block: bool = False) -> str:
    """``value`` quoted so that Ollama's parser reads it back exactly: bare when that is safe, else in
    double quotes, else in triple double quotes (tried first with ``block=True``: templates, system prompts)."""
    if any(ord(c) < 32 and c not in "\n\t" for c in value) or "\x7f" in value:
        raise ConfigError(f"Modelfile {name}: control characters cannot be written ({value!r})")
    forms = [f'"""{value}"""', f'"{value}"'] if block else [value, f'"{value}"', f'"""{value}"""']
    for raw in forms:
        if raw == value and (not value or value != value.strip() or value.startswith('"') or value.startswith("#")):
            continue
        if _parsed_value(raw) == value:
            return raw
    raise ConfigError(f"Modelfile {name}: {value!r} cannot be quoted for Ollama's parser (a line ends with a quote)")


def write_modelfile(
    path: PathLike,
    *,
    from_: PathLike,
    adapter: PathLike | None = None,
    template: str,
    stops: list[str],
    system: str | None = None,
    num_ctx: int | None = None,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Write an Ollama Modelfile atomically (staged beside it, then renamed).

    Args:
        path: the Modelfile to write.
        from_: ``FROM``: a GGUF file, a safetensors directory or an Ollama model name. Relative paths are
            resolved by Ollama against the Modelfile's directory.
        adapter: ``ADAPTER``: a GGUF LoRA file (spec §3.3).
        template: ``TEMPLATE``: the Go template (see :func:`translate_template`).
        stops: one ``PARAMETER stop`` line each.
        system: ``SYSTEM``: default system prompt (Ollama prepends it when a chat has none).
        num_ctx: ``PARAMETER num_ctx``: context length.
        parameters: other ``PARAMETER name value`` lines (e.g. ``{"temperature": 0.6}``); a list value
            gives one line per item.

    Returns:
        ``path``.

    Raises:
        ConfigError: a value cannot be written so that Ollama reads it back unchanged.
    """
    lines = [f"FROM {_modelfile_value('FROM', os.fspath(from_))}"]
    if adapter is not None:
        lines.append(f"ADAPTER {_modelfile_value('ADAPTER', os.fspath(adapter))}")
    lines.append(f"TEMPLATE {_modelfile_value('TEMPLATE', template, block=True)}")
    if system:
        lines.append(f"SYSTEM {_modelfile_value('SYSTEM', system, block=True)}")
    params: list[tuple[str, Any]] = [("stop", s) for s in stops]
    if num_ctx is not None:
        params.append(("num_ctx", int(num_ctx)))
    for name, value in (parameters or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ConfigError(f"Modelfile PARAMETER name {name!r}: letters, digits and '_' only")
        params += [(name, v) for v in value] if isinstance(value, list | tuple) else [(name, value)]
    for name, value in params:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        # stop values are always quoted, as in Ollama's docs (they often start or end with spaces)
        quoted = f'"{text}"' if name == "stop" and _parsed_value(f'"{text}"') == text else _modelfile_value(name, text)
        lines.append(f"PARAMETER {name} {quoted}")
    path = Path(path)
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return path


def ollama_create_command(model_name: str, modelfile_path: PathLike) -> str:
    """``ollama create <name> -f <absolute Modelfile path>``, shell-quoted."""
    return f"ollama create {shlex.quote(model_name)} -f {shlex.quote(str(Path(modelfile_path).absolute()))}"
