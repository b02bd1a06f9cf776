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


# Two nested loops of 99999: about 10^10 steps, hours of work with no bound.
RUNAWAY = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"


def test_runaway_template_stops_within_a_second():
    import subprocess
    import sys

    # In a subprocess, so that a render without bounds fails the test at the timeout.
    code = (
        "import json, time\n"
        "from pyft import _core\n"
        "t = time.perf_counter()\n"
        "try:\n"
        f"    _core.render_template({RUNAWAY!r}, '[]', False, '{{}}', None)\n"
        "    print(json.dumps(['rendered', time.perf_counter() - t]))\n"
        "except Exception as e:\n"
        "    print(json.dumps([f'{type(e).__name__}: {e}', time.perf_counter() - t]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    outcome, seconds = json.loads(r.stdout)
    assert outcome == ("TemplateError: chat template: the chat template ran past the limit of 10000000 steps "
                       "for one conversation (a loop that does not end?)")
    # 10 million steps take about 0.4 s in a release build; a debug build is several times slower.
    assert seconds < (1.0 if _core.build_profile() == "release" else 10.0), seconds


@pytest.mark.parametrize("source", [
    "{% for i in range(17) %}{{ 'x' * 1048576 }}{% endfor %}",               # printed values
    "{% for i in range(17408) %}" + "y" * 1024 + "{% endfor %}",             # the template's own text
    "{% macro d(n) %}{% if n %}{% set x = d(n - 1) %}{{ x }}{{ x }}{% else %}x{% endif %}{% endmacro %}"
    "{{ d(25) | length }}",                                                  # 32 MiB captured, not printed
], ids=["values", "literal", "captured"])
def test_huge_output_is_refused(source):
    with pytest.raises(TemplateError, match="wrote more than 16 MiB of text for one conversation, the limit"):
        _ours(source, CONVERSATIONS[0])


def test_limit_errors_name_the_template_file_or_the_tokenizer(tokenizer_dirs, tmp_path):
    import shutil
    import subprocess
    import sys

    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"messages": CONVERSATIONS[0]}) + "\n", encoding="utf-8")
    template = tmp_path / "loop.jinja"
    template.write_text(RUNAWAY, encoding="utf-8")
    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dirs["chatml"], tok)
    (tok / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((tok / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = RUNAWAY
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")

    def prepare(*extra):
        return subprocess.run([sys.executable, "-m", "pyft.cli.main", "data", "prepare", str(src), "--tokenizer",
                               str(tok), "--out", str(tmp_path / "o"), "--quiet", *extra],
                              capture_output=True, text=True, timeout=120)

    r = prepare("--template", str(template))
    assert r.returncode == 1 and f"c.jsonl:1: chat template: {template} ran past the limit of 10000000 steps" in r.stderr, r.stderr
    r = prepare()
    want = f"c.jsonl:1: chat template: the tokenizer's chat_template ({tok / 'tokenizer_config.json'}) ran past the limit"
    assert r.returncode == 1 and want in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
