"""Every real chat template that llama.cpp ships (``models/templates/*.jinja``, about 70 published
models' templates) renders in pyft's Rust renderer exactly as transformers' ``apply_chat_template``
renders it (Jinja2), or fails where transformers fails.

Plain chats cover a system message (where the template allows one), several turns, non-ASCII text
and ``add_generation_prompt`` both ways. Templates that only render with tools or custom variables
get the smallest such value (``tools=[]``, ``functions`` and ``datetime``). A second test renders tool
definitions and tool calls.
"""

from __future__ import annotations

import json
import time

import pytest

from pyft import _core
from pyft.errors import TemplateError

from real_vocab import template_names, template_source

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

SYSTEM = {"role": "system", "content": "Tu es un assistant concis. Réponds en français."}
TURNS = [
    {"role": "user", "content": "Grüß dich! Wie geht's? 你好，世界 🌍"},
    {"role": "assistant", "content": "Mir geht's gut — danke! Ça va très bien. 😊\n\nПривет!"},
    {"role": "user", "content": "Et la capitale du Brésil ?\tMerci."},
    {"role": "assistant", "content": "Brasília.  "},
]
CHATS = {
    "system+multi-turn": [SYSTEM, *TURNS],
    "multi-turn": TURNS,
    "system+first-question": [SYSTEM, TURNS[0]],
    "first-question": TURNS[:1],
    "one-exchange": TURNS[:2],
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Wetter für eine Stadt 🌦",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Stadt"}},
                   "required": ["city"]}}}]
TOOL_CHAT = [
    SYSTEM,
    {"role": "user", "content": "Wie ist das Wetter in Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [{
        "type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "content": '{"temp": 21.5}', "name": "get_weather", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "21,5 °C in Zürich."},
]

# Templates that fail in transformers without these variables (they iterate over `tools`, or add
# `functions` and `datetime` to a string): the plain chats get the smallest value that renders.
PLAIN_CHAT_VARIABLES = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": {"tools": []},
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": {"tools": []},
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": {"tools": []},
    "fireworks-ai-llama-3-firefunction-v2.jinja": {"functions": "[]", "datetime": "2024-07-26"},
}

# Where pyft and transformers part ways with tools (plain chats render identically).
#: Templates pyft refuses (with a clear error) for tool chats, rather than render differently.
TOOL_REFUSALS = {
    # `"..."|safe + value`: Jinja2 HTML-escapes `value` when it is added to a Markup string
    # (`{"name": ...}` becomes `{&#34;name&#34;: ...}`); minijinja would concatenate as is.
    "meetkai-functionary-medium-v3.1.jinja": "&#34;",
}
TOOL_DIVERGENCES = {
    # `tools | map(attribute='function') | tojson`: Jinja2's map is a generator, which transformers'
    # tojson cannot serialize; pyft's map gives a list and renders it.
    "llama-cpp-deepseek-r1.jinja": "transformers cannot serialize a generator; pyft renders the list",
}


@pytest.fixture(scope="module", autouse=True)
def utc():
    """Templates that print today's date (`strftime_now`) get it in UTC in pyft; make Python agree."""
    import os

    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _hf(source: str, messages: list[dict], agp: bool, variables: dict) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    variables = dict(variables)
    tools = variables.pop("tools", None)
    texts, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=source,
                                     add_generation_prompt=agp, **SPECIAL, **variables)
    return texts[0]


def _ours(source: str, messages: list[dict], agp: bool, variables: dict) -> str:
    extra = json.dumps(variables) if variables else None
    text, _ = _core.render_template(source, json.dumps(messages), agp, json.dumps(SPECIAL), extra)
    return text


def _outcome(render, *args) -> tuple[str, str]:
    try:
        return "text", render(*args)
    except Exception as e:  # noqa: BLE001 - the exception is the outcome compared
        return "error", f"{type(e).__name__}: {e}"


def _compare(name: str, messages: list[dict], agp: bool, variables: dict) -> bool:
    """Assert pyft's outcome equals transformers'; return whether the chat rendered."""
    source = template_source(name)
    hf_kind, hf = _outcome(_hf, source, messages, agp, variables)
    ours_kind, ours = _outcome(_ours, source, messages, agp, variables)
    assert ours_kind == hf_kind, f"transformers: {hf!r}\npyft: {ours!r}"
    if hf_kind == "text":
        assert ours == hf
    else:
        # A refusal is pyft's TemplateError; a template's own raise_exception message comes through.
        assert ours.startswith("TemplateError: "), ours
        if hf.startswith("TemplateError: "):
            assert hf[len("TemplateError: "):] in ours
    return hf_kind == "text"


def test_all_templates_are_covered():
    names = template_names()
    assert len(names) >= 60, names
    assert set(PLAIN_CHAT_VARIABLES) | set(TOOL_DIVERGENCES) | set(TOOL_REFUSALS) <= set(names)


@pytest.mark.parametrize("name", template_names())
@pytest.mark.parametrize("add_generation_prompt", [False, True], ids=["no-gen", "gen"])
def test_plain_chats_render_as_transformers(name, add_generation_prompt):
    variables = PLAIN_CHAT_VARIABLES.get(name, {})
    rendered = []
    for label, messages in CHATS.items():
        try:
            if _compare(name, messages, add_generation_prompt, variables):
                rendered.append(label)
        except AssertionError as e:
            raise AssertionError(f"{name} / {label}: {e}") from None
    # Every template renders the chats without a system message at least.
    assert {"multi-turn", "first-question", "one-exchange"} <= set(rendered), rendered


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=TOOL_DIVERGENCES[n], strict=True))
    if n in TOOL_DIVERGENCES else n
    for n in template_names()
])
def test_tools_and_tool_calls_render_as_transformers(name):
    variables = {**PLAIN_CHAT_VARIABLES.get(name, {}), "tools": TOOLS}
    if "functions" in variables:  # firefunction takes its tool list as a JSON string
        variables["functions"] = json.dumps(TOOLS, ensure_ascii=False)
    if name in TOOL_REFUSALS:  # transformers' text has Jinja2's escaping; pyft refuses to differ
        hf = _hf(template_source(name), TOOL_CHAT, False, variables)
        assert TOOL_REFUSALS[name] in hf
        with pytest.raises(TemplateError, match="Markup"):
            _ours(template_source(name), TOOL_CHAT, False, variables)
        return
    rendered = 0
    for messages in (TOOL_CHAT, TOOL_CHAT[1:], TOOL_CHAT[1:2]):
        for agp in (False, True):
            rendered += _compare(name, messages, agp, variables)
    assert rendered, "transformers renders none of the tool chats"


def test_most_templates_render_and_system_refusals_match():
    """Sanity of the comparison itself: nearly all templates render these chats, and the one
    that rejects system messages (Gemma 2) is refused by both with its own message."""
    rendered = 0
    for name in template_names():
        try:
            variables = PLAIN_CHAT_VARIABLES.get(name, {})
            _ours(template_source(name), CHATS["system+multi-turn"], False, variables)
            rendered += 1
        except TemplateError:
            pass
    assert rendered >= len(template_names()) - 2
    with pytest.raises(TemplateError, match="System role not supported"):
        _ours(template_source("google-gemma-2-2b-it.jinja"), CHATS["system+multi-turn"], False, {})
