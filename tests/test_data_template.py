"""The Rust chat-template renderer gives the same text and generation spans as transformers."""

from __future__ import annotations

import json

import pytest

from pyft import _core
from pyft.errors import TemplateError
from pyft.testing import TEMPLATES

from helpers import CONVERSATIONS

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

# Templates written for this test: they exercise the Jinja features real chat templates use.
EXTRA_TEMPLATES = {
    "tools_and_tojson": (
        "{%- if tools %}{{- 'Tools: ' + tools | tojson + '\\n' }}{%- for t in tools %}{{ t | tojson(indent=2) }}\n"
        "{%- endfor %}{%- endif %}"
        "{%- for m in messages %}{{ m.role | upper }}: {{ m.content | trim }}\n{%- endfor %}"
    ),
    "namespace_and_loop": (
        "{%- set ns = namespace(sys='', n=0) %}"
        "{%- for m in messages %}{%- if m['role'] == 'system' %}{%- set ns.sys = m['content'] %}{%- continue %}"
        "{%- endif %}{%- set ns.n = ns.n + 1 %}"
        "[{{ loop.index0 }}/{{ ns.n }}{{ '|last' if loop.last }}] {{ m.content.strip().replace('\\n', ' ') }}\n"
        "{%- if loop.last and m.role == 'assistant' %}{%- break %}{%- endif %}{%- endfor %}"
        "{{ ns.sys[:10] }}{% if add_generation_prompt %}<gen>{% endif %}"
    ),
    "string_methods": (
        "{%- for m in messages[1:] if m.role != 'system' %}"
        "{%- if m.content.startswith('What') or m.content.endswith('?') %}Q{% else %}S{% endif %}:"
        "{{ m.content.split(' ') | length }}:{{ m.content.lower().title()[:12] }}|"
        "{%- endfor %}{{ bos_token ~ eos_token }}"
    ),
}


def _hf_render(source, messages, add_generation_prompt=False, tools=None):
    from transformers.utils.chat_template_utils import render_jinja_template

    texts, spans = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=source, return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt, **SPECIAL,
    )
    return texts[0], [tuple(s) for s in spans[0]]


def _ours(source, messages, add_generation_prompt=False, tools=None):
    extra = json.dumps({"tools": tools}) if tools is not None else None
    text, spans = _core.render_template(source, json.dumps(messages), add_generation_prompt, json.dumps(SPECIAL), extra)
    return text, [tuple(s) for s in spans]


@pytest.mark.parametrize("name", ["chatml", "llama3", "alpaca", "zephyr"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_builtin_templates_match_transformers(name, add_generation_prompt):
    for messages in CONVERSATIONS:
        assert _ours(TEMPLATES[name], messages, add_generation_prompt) == _hf_render(TEMPLATES[name], messages, add_generation_prompt)


@pytest.mark.parametrize("name", ["mistral", "gemma"])
def test_alternating_templates_match_transformers(name):
    for messages in CONVERSATIONS:
        if any(m["role"] == "system" for m in messages) and name == "mistral":
            messages = messages[1:]
        assert _ours(TEMPLATES[name], messages) == _hf_render(TEMPLATES[name], messages)


@pytest.mark.parametrize("name", sorted(EXTRA_TEMPLATES))
def test_jinja_features_match_transformers(name):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter für eine Stadt 🌦",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}, "x": 1.5, "y": None, "z": True}}]
    for messages in CONVERSATIONS:
        for agp in (False, True):
            assert _ours(EXTRA_TEMPLATES[name], messages, agp, tools) == _hf_render(EXTRA_TEMPLATES[name], messages, agp, tools)


def test_raise_exception_becomes_template_error():
    src = "{{ raise_exception('roles must alternate user/assistant/user/assistant/...') }}"
    with pytest.raises(TemplateError, match="roles must alternate"):
        _ours(src, CONVERSATIONS[0])
