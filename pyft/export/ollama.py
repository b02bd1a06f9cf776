"""``pyft.export.ollama``: an explicit Ollama ``TEMPLATE`` from a Jinja chat template, and the Modelfile.

Ollama renders prompts with a Go ``text/template``; it only picks one by itself when the GGUF's Jinja
template is within a small edit distance of one it ships (spec §3.2), so a fine-tuned model needs an
explicit ``TEMPLATE`` and ``PARAMETER stop`` lines (ollama#8363, #6371).

Translation works on *rendered output*, not template source, and knows no family: the Jinja template is
rendered (pyft's Rust renderer) on probe conversations (1 to 3 user turns, with and without a system
prompt, with the generation prompt) whose contents are sentinels. The text between two contents is read
as the text before a message, chosen by its situation: its role, the previous message's role, whether the
chat has a system prompt and whether it is the last message; the system prompt's place (its own block,
inside the first or the last user turn, ...) and today's date (``currentDate``) are marks in that text.
The Go template branches on exactly the situations the text depends on, and is checked against the
Jinja rendering of conversations it was not read from (4 turns; contents with spaces and newlines); a
template that numbers its turns, renders contents twice or changes them fails with the reason.

The Go template renders the Jinja prompt for ``add_generation_prompt=True`` minus a leading ``bos_token``:
llama.cpp (which Ollama runs) adds BOS itself when it tokenizes the prompt, as Ollama's own templates
assume. A chat ending with an assistant message gets no generation prompt (Ollama continues that
message). Reasoning templates (Qwen3, DeepSeek-R1) render earlier assistant turns without their ``<think>``
block; the Go template renders ``.Content`` only, as Ollama's own templates for those models do before
the last user turn. Differences that Go templates cannot express: Jinja ``| trim`` on contents (Ollama
passes contents as sent), tool definitions and tool calls, ``enable_thinking`` and other template
variables; Ollama merges consecutive messages of one role with a blank line and gathers all system
messages into ``.System``. ``FAMILY_STOPS`` only adds the usual turn markers to the stop list.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyft._atomic import atomic_file
from pyft.errors import ConfigError, TemplateError
from pyft.io.serving import (
    PROBE_SYSTEM,
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
        stops: ``PARAMETER stop`` values: end-of-turn tokens first, then the token ending an assistant
            turn, then the family's turn markers (``generic``: the markers opening a user turn).
        family: ``chatml``, ``llama3``, ``mistral``, ``llama2``, ``gemma``, ``alpaca``, ``zephyr``
            (:data:`FAMILY_STOPS`), or ``generic`` for any other template.
        strips_bos: the Jinja output starts with ``bos_token``, left to the runtime.
    """

    template: str
    stops: list[str]
    family: str
    strips_bos: bool


# --- reading the turn layout off rendered probes ---------------------------------------------------------

_SYSTEM_MARK = "\x00system\x00"  # where the system prompt goes, inside a piece of literal text
_MARK = re.compile(r"\x00([^\x00]*)\x00")
#: Date formats (``strftime``) that chat templates print (llama.cpp's corpus: Llama 3.2, Granite 3.3,
#: gpt-oss, Apertus, Mistral Small 3.2, ...); Go builds them from Ollama's ``currentDate``/``yesterdayDate``.
_DATE_FORMATS = ("%B %d, %Y", "%d %B %Y", "%b %d, %Y", "%d %b %Y", "%Y-%m-%d")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")

# A piece of text is chosen by the situation of the message it precedes. Dimensions, each with its values
# in the order they are tested (the last one is the `else` branch, which also covers unseen situations).
_BEFORE_DIMS = (
    ("role", ("user", "assistant")),
    ("prev", ("", "user", "assistant")),  # role of the previous message ("": none)
    ("system", (True, False)),  # the chat has a system prompt
    ("last", (True, False)),  # this is the last message
)
_AFTER_DIMS = (("prev", ("assistant", "user")), ("system", (True, False)))


class _Mismatch(Exception):
    """The template does not fit the layout being read."""


def _go_literal(text: str) -> str:
    """Literal text for a Go template (an action quoting it when it contains a delimiter)."""
    if "{{" in text or "}}" in text:
        return "{{ " + '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '" }}'
    return text


def _go_date(func: str, fmt: str) -> str:
    """Go actions printing Ollama's ``currentDate``/``yesterdayDate`` (``YYYY-MM-DD``) in ``fmt``."""
    if fmt == "%Y-%m-%d":
        return f"{{{{ {func} }}}}"
    day = f"({func})"
    out = []
    for part in re.split(r"(%[YmdbB])", fmt):
        if part == "%Y":
            out.append(f"{{{{ slice {day} 0 4 }}}}")
        elif part == "%m":
            out.append(f"{{{{ slice {day} 5 7 }}}}")
        elif part == "%d":
            out.append(f"{{{{ slice {day} 8 10 }}}}")
        elif part in ("%b", "%B"):
            names = [m[:3] if part == "%b" else m for m in _MONTHS]
            chain = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq (slice {day} 5 7) "{i + 1:02d}" }}}}{name}'
                            for i, name in enumerate(names))
            out.append(chain + "{{ end }}")
        else:
            out.append(_go_literal(part))
    return "".join(out)


def _mark_dates(text: str) -> str:
    """``text`` with today's and yesterday's dates (in the formats templates print) replaced by marks."""
    today = datetime.date.today()
    for func, day in (("currentDate", today), ("yesterdayDate", today - datetime.timedelta(days=1))):
        for fmt in _DATE_FORMATS:
            text = text.replace(day.strftime(fmt), f"\x00{func} {fmt}\x00")
    return text


def _go_text(text: str) -> str:
    """Go source printing a piece of text with its marks (system prompt, dates)."""
    parts = _MARK.split(text)
    out = [_go_literal(parts[0])]
    for mark, lit in zip(parts[1::2], parts[2::2], strict=True):
        if mark == "system":
            out.append("{{ $.System }}")
        else:
            func, fmt = mark.split(" ", 1)
            out.append(_go_date(func, fmt))
        out.append(_go_literal(lit))
    return "".join(out)


def _fill(text: str, system: str) -> str:
    """A piece of text as the Go template prints it: marks replaced by the system prompt and dates."""
    today = datetime.date.today()

    def value(m: re.Match[str]) -> str:
        if m.group(1) == "system":
            return system
        func, fmt = m.group(1).split(" ", 1)
        return (today if func == "currentDate" else today - datetime.timedelta(days=1)).strftime(fmt)

    return _MARK.sub(value, text)


# A decision tree: a piece of text, or (dimension, [(value, subtree), ...]) whose last entry is the `else`.
_Tree = str | tuple[str, list[tuple[Any, "_Tree"]]]


def _tree(cases: dict[tuple[Any, ...], str], dims: tuple[tuple[str, tuple[Any, ...]], ...]) -> _Tree:
    """The smallest tree (testing ``dims`` in order, skipping those the text does not depend on) giving each
    observed situation (key: one value per dimension) its text."""
    if len(set(cases.values())) == 1:
        return next(iter(cases.values()))
    for i, (name, order) in enumerate(dims):
        values = [v for v in order if any(k[i] == v for k in cases)]
        if len(values) < 2:
            continue
        projected: dict[tuple[Any, ...], str] = {}
        if i > 0 and all(projected.setdefault(k[:i] + k[i + 1:], t) == t for k, t in cases.items()):
            # the role (i == 0) always branches, so that each role reads as its own turn
            cases = {k[:i] + (None,) + k[i + 1:]: t for k, t in cases.items()}
            continue
        return name, [(v, _tree({k: t for k, t in cases.items() if k[i] == v}, dims)) for v in values]
    raise _Mismatch("inconsistent pieces")  # unreachable: all dimensions projected out leaves one case


def _pick(tree: _Tree, situation: dict[str, Any]) -> str:
    while not isinstance(tree, str):
        name, branches = tree
        tree = next((sub for v, sub in branches[:-1] if situation[name] == v), branches[-1][1])
    return tree


_GO_CONDITIONS = {
    "role": lambda v, yes=True: f'{"eq" if yes else "ne"} .Role "{v}"',
    "prev": lambda v, yes=True: f'{"eq" if yes else "ne"} $prev "{v}"',
    "system": lambda v, yes=True: "$.System" if v == yes else "not $.System",
    "last": lambda v, yes=True: "$last" if v == yes else "not $last",
}


def _common_ends(texts: list[str]) -> tuple[str, str]:
    """The longest prefix and suffix all ``texts`` share, cut after a line or a mark (so that a branch
    holds whole lines: ``<|im_start|>system`` is not split), not overlapping."""
    prefix = os.path.commonprefix(texts)
    while prefix and not prefix.endswith(("\n", "\x00")) or prefix.count("\x00") % 2:
        prefix = prefix[: max(prefix[:-1].rfind("\n"), prefix[:-1].rfind("\x00")) + 1]
    rest = [t[len(prefix):] for t in texts]
    suffix = os.path.commonprefix([t[::-1] for t in rest])[::-1]
    while suffix and not all(r[: len(r) - len(suffix)].endswith(("\n", "\x00")) or len(r) == len(suffix)
                             for r in rest) or suffix.count("\x00") % 2:
        cut = min(i for i in (suffix.find("\n", 1), suffix.find("\x00", 1), len(suffix)) if i > 0)
        suffix = suffix[cut + (suffix[cut:cut + 1] == "\n"):]
    return prefix, suffix


def _go_tree(tree: _Tree) -> str:
    """Go source for a tree: ``{{ if }}`` chains, with text that every branch starts or ends with outside."""
    if isinstance(tree, str):
        return _go_text(tree)
    name, branches = tree
    texts = [sub for _, sub in branches if isinstance(sub, str)]
    if len(texts) == len(branches):
        prefix, suffix = _common_ends(texts)
        if prefix or suffix:
            inner: list[tuple[Any, _Tree]] = [(v, t[len(prefix): len(t) - len(suffix)])
                                              for (v, _), t in zip(branches, texts, strict=True)]
            return _go_text(prefix) + _go_tree((name, inner)) + _go_text(suffix)
    if len(branches) == 2 and branches[0][1] == "":
        return f"{{{{ if {_GO_CONDITIONS[name](branches[0][0], False)} }}}}{_go_tree(branches[1][1])}{{{{ end }}}}"
    out = []
    for j, (v, sub) in enumerate(branches):
        body = _go_tree(sub)
        if j == 0:
            out.append(f"{{{{ if {_GO_CONDITIONS[name](v)} }}}}{body}")
        elif j < len(branches) - 1:
            out.append(f"{{{{ else if {_GO_CONDITIONS[name](v)} }}}}{body}")
        elif body:
            out.append(f"{{{{ else }}}}{body}")
    return "".join(out) + "{{ end }}"


def _uses(tree: _Tree, dim: str) -> bool:
    return not isinstance(tree, str) and (tree[0] == dim or any(_uses(sub, dim) for _, sub in tree[1]))


@dataclass(frozen=True)
class _Layout:
    """What the Go template prints around message contents, read off rendered probes."""

    before: _Tree  # the text before each user/assistant message's content
    after: _Tree  # the text after the last message (the generation prompt)
    system: bool  # the Jinja template accepts a system message


def _go_template(lay: _Layout) -> str:
    """The Go template for a layout. Lines are joined with ``{{-`` only after an action, so that no
    character of literal text is trimmed."""
    lines = ['{{ $prev := "" }}', "{{ range $i, $_ := .Messages }}",
             '{{ if or (eq .Role "user") (eq .Role "assistant") }}']
    if _uses(lay.before, "last"):
        lines.append("{{ $last := eq (len (slice $.Messages $i)) 1 }}")
    lines += [_go_tree(lay.before) + "{{ .Content }}{{ $prev = .Role }}", "{{ end }}", "{{ end }}",
              _go_tree(lay.after)]
    out = lines[0].replace("{{ ", "{{- ", 1)
    for line in lines[1:]:
        out += "\n{{- " + line[3:] if line.startswith("{{ ") else line
    return out


def _emulate(lay: _Layout, messages: list[dict[str, str]]) -> str:
    """What the Go template built by :func:`_go_template` renders for ``messages`` (Ollama's chat path:
    system messages gathered into ``.System``)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out, prev = [], ""
    for i, m in enumerate(messages):
        if m["role"] not in ("user", "assistant"):
            continue
        situation = {"role": m["role"], "prev": prev, "system": bool(system), "last": i == len(messages) - 1}
        out += [_fill(_pick(lay.before, situation), system), m["content"]]
        prev = m["role"]
    return "".join(out) + _fill(_pick(lay.after, {"prev": prev, "system": bool(system)}), system)


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


def _conversation(n_turns: int, system: bool, words: str = "") -> list[dict[str, str]]:
    """``system?``, then user/assistant pairs, ending with a user message: ``n_turns`` user messages.
    Contents are sentinels (``words`` appended: text a template should pass through unchanged)."""
    msgs = [{"role": "system", "content": PROBE_SYSTEM + words}] if system else []
    for i in range(n_turns):
        msgs.append({"role": "user", "content": f"pyftUSR{i + 1}{words}"})
        if i + 1 < n_turns:
            msgs.append({"role": "assistant", "content": f"pyftAST{i + 1}{words}"})
    return msgs


def _pieces(text: str, messages: list[dict[str, str]]) -> list[str]:
    """The text around each user/assistant content of a rendering (one more piece than contents), with the
    system prompt's place marked."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    if system:
        if text.count(system[0]) > 1:
            raise _Mismatch("it renders the system prompt more than once")
        text = text.replace(system[0], _SYSTEM_MARK)
    pieces, at = [], 0
    for m in messages:
        if m["role"] == "system":
            continue
        if text.count(m["content"]) != 1:
            raise _Mismatch(f"it renders a {m['role']} message's content {text.count(m['content'])} times")
        start = text.find(m["content"], at)
        if start < 0:
            raise _Mismatch("it renders messages out of order")
        pieces.append(text[at:start])
        at = start + len(m["content"])
    return [_mark_dates(p) for p in [*pieces, text[at:]]]


def _read_layout(r: _Renderer) -> _Layout:
    """The pieces around 1-, 2- and 3-turn conversations (with a system prompt when the template takes one)."""
    try:
        r(_conversation(1, True))
        system_ok = True
    except TemplateError:
        system_ok = False
    before: dict[tuple[Any, ...], str] = {}
    after: dict[tuple[Any, ...], str] = {}

    def record(table: dict[tuple[Any, ...], str], key: tuple[Any, ...], text: str, what: str) -> None:
        if table.setdefault(key, text) != text:
            raise _Mismatch(f"the text {what} depends on more than the roles around it, the last message "
                            "and the system prompt")

    for n in (1, 2, 3):
        for system in (False, True) if system_ok else (False,):
            msgs = _conversation(n, system)
            pieces = _pieces(r(msgs), msgs)
            roles = [m["role"] for m in msgs if m["role"] != "system"]
            for k, role in enumerate(roles):
                record(before, (role, roles[k - 1] if k else "", system, k == len(roles) - 1), pieces[k],
                       f"before a {role} message")
            record(after, (roles[-1], system), pieces[-1], "after the last message")
            # a chat ending with an assistant message: Ollama continues that message (prefill)
            after[("assistant", system)] = ""
    return _Layout(_tree(before, _BEFORE_DIMS), _tree(after, _AFTER_DIMS), system_ok)


def _check(r: _Renderer, lay: _Layout) -> None:
    """The layout renders what the Jinja template renders on conversations it was not read from."""
    for system in (False, True) if lay.system else (False,):
        what = "with" if system else "without"
        for n, words in ((4, ""), (2, " and\nmore words")):
            conv = _conversation(n, system, words)
            if r(conv) != _emulate(lay, conv):
                detail = "; it changes message contents" if words else ""
                raise _Mismatch(f"a {n}-turn conversation {what} a system prompt renders differently from the "
                                f"layout read off shorter ones{detail}")


def _family(lay: _Layout, eos_token: str | None) -> str | None:
    """The family named by the rendered turn markers (None: no family of :data:`FAMILY_STOPS`)."""
    texts = [_pick(lay.before, {"role": role, "prev": prev, "system": False, "last": False})
             for role, prev in (("user", "assistant"), ("assistant", "user"))]
    heads = "".join(texts) + _pick(lay.after, {"prev": "user", "system": False})
    if "<|im_start|>" in heads:
        return "chatml"
    if "<|start_header_id|>" in heads:
        return "llama3"
    if "<start_of_turn>" in heads:
        return "gemma"
    if "<|user|>" in heads and "<|assistant|>" in heads:
        # Zephyr ends turns with eos; Phi-3 (<|end|>) and GLM (no end marker) share its headers
        return "zephyr" if (eos_token or "</s>") in texts[0] else None
    if "### Instruction" in heads and "### Response" in heads:
        return "alpaca"
    if "[INST]" in heads:
        return "llama2" if "<<SYS>>" in _go_tree(lay.before) else "mistral"
    return None


_TOKEN = re.compile(r"<[^<>\s]+>|\[[A-Z_/]+\]")


def _stops(lay: _Layout, family: str | None, bos_token: str | None, eos_token: str | None,
           end_of_turn: list[str] | None) -> list[str]:
    """End-of-turn tokens, then the token ending an assistant turn (and eos when it follows), then the
    family's turn markers, or the markers of a user turn's header that an assistant header lacks."""
    after_assistant = _pick(lay.before, {"role": "user", "prev": "assistant", "system": False, "last": False})
    after_user = _pick(lay.before, {"role": "assistant", "prev": "user", "system": False, "last": False})
    tokens = [t for t in _TOKEN.findall(after_assistant) if t != bos_token] or after_assistant.split()[:1]
    stops = list(end_of_turn or []) + tokens[:1]
    if eos_token and eos_token in after_assistant:
        stops.append(eos_token)
    if family is not None:
        stops += FAMILY_STOPS[family]
    else:
        stops += [t for t in tokens[1:] if t not in _TOKEN.findall(after_user)]
    return list(dict.fromkeys(stops))


def _unsupported(template: str, why: str) -> ConfigError:
    first = next((line.strip() for line in template.splitlines() if line.strip()), "")
    return ConfigError(
        f"cannot translate the chat template starting {first[:80]!r} into an Ollama TEMPLATE ({why}). "
        "Pass a Go template explicitly (`--template` on the command line, `template=` in Python)"
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
        ConfigError: the template's turns cannot be expressed by a Go template (the reason is given).
    """
    r = _Renderer(template, bos_token, eos_token)
    try:
        lay = _read_layout(r)
        _check(r, lay)
    except (_Mismatch, TemplateError) as e:
        raise _unsupported(template, str(e)) from None
    family = _family(lay, eos_token)
    for role, prev in (("user", "assistant"), ("assistant", "user")):
        if not _pick(lay.before, {"role": role, "prev": prev, "system": False, "last": False}).strip():
            raise _unsupported(template, f"nothing marks where a {role} turn starts")
    stops = _stops(lay, family, bos_token, eos_token, end_of_turn)
    return OllamaTemplate(_go_template(lay), stops, family or "generic", r.saw_bos)


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
