"""Reference chat-template renderings from transformers, for pyft-core's template tests.

Renders every template below (pyft's built-ins, read from
``rust/pyft-core/src/data/templates/*.jinja``, plus feature templates written here)
over a set of conversations with transformers' own ``render_jinja_template`` and
writes ``rust/pyft-core/tests/data/template_cases.json``: template sources, messages,
flags, special tokens, extra variables, and the expected text with the generation
spans as *byte* offsets (transformers reports character offsets), or the expected
error. It also loads a few tokenizer directories with ``AutoTokenizer`` and records
``special_tokens_map`` for ``SpecialTokens::from_tokenizer_config``.

Run from the repository root (needs transformers and tokenizers):

    /work/main/.venv/bin/python tools/compat/make_template_cases.py

``rust/pyft-core/tests/template_cases.rs`` replays every case.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jinja2
import transformers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DIR = ROOT / "rust/pyft-core/src/data/templates"
OUT = ROOT / "rust/pyft-core/tests/data/template_cases.json"

BUILTINS = ["chatml", "llama3", "alpaca", "mistral", "gemma", "zephyr"]

# Feature templates: each exercises a group of Jinja2/transformers behaviours.
FEATURES: dict[str, str] = {
    # transformers' tojson: Python json.dumps, no HTML escaping, Python floats.
    "tojson": r"""{%- set d = messages[0].data -%}
plain: {{ d | tojson }}
indent2: {{ d | tojson(indent=2) }}
indent4sorted: {{ d | tojson(indent=4, sort_keys=true) }}
ascii: {{ d | tojson(ensure_ascii=true) }}
compact: {{ d | tojson(separators=(',', ':')) }}
literal: {{ {'b': [1.5, none, true], 'a': {}} | tojson }}
scalars: {{ 'x<y>&"z"' | tojson }} {{ 3 | tojson }} {{ 2.0 | tojson }} {{ [] | tojson(indent=2) }}
positional: {{ d.nested | tojson(false, 1) }}
zero-indent: {{ d.list | tojson(indent=0) }}
""",
    # A tool-calling template in the Hermes/Qwen style.
    "tools": r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- generation %}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls | default([]) %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""",
    # namespace() state across loops, break/continue, loop attributes.
    "namespace_loops": r"""{%- set ns = namespace(last_user=-1, count=0, roles=[]) -%}
{%- for m in messages -%}
{%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif -%}
{%- set ns.count = ns.count + 1 -%}
{%- set ns.roles = ns.roles + [m.role] -%}
{%- endfor -%}
last user: {{ ns.last_user }}, count: {{ ns.count }}, roles: {{ ns.roles }}
{% for m in messages %}
{%- if m.role == 'system' %}{% continue %}{% endif %}
{%- if loop.index > 4 %}{% break %}{% endif %}
{{ loop.index }}/{{ loop.length }} ({{ loop.index0 }}, rev {{ loop.revindex }}, first={{ loop.first }}, last={{ loop.last }}) {{ m.role }}{% if loop.previtem is defined %} after {{ loop.previtem.role }}{% endif %}

{% endfor %}
{%- for i in range(3) %}{{ i }}{{ loop.cycle('a', 'b') }}{% endfor %}
{% for m in messages if m.role != 'system' %}{{ m.role[0] }}{{ ',' if not loop.last }}{% endfor %}
""",
    # Python string methods and filters on strings.
    "string_methods": r"""{%- set s = messages[0].content -%}
strip=[{{ s.strip() }}] lstrip=[{{ s.lstrip() }}] rstrip=[{{ s.rstrip() }}] chars=[{{ s.strip(' xy') }}]
split={{ s.split() }} split1={{ s.split(None, 1) }} sep={{ s.split(',') }} rsplit={{ s.rsplit(' ', 1) }}
upper={{ s.upper() }} lower={{ s.lower() }} title={{ s.title() }} cap={{ s.capitalize() }}
replace={{ s.replace('a', 'A') }} replace1={{ s.replace('a', 'A', 1) }}
starts={{ s.startswith('  ') }} {{ s.strip().startswith(('x', 'He')) }} ends={{ s.endswith('  ') }} {{ s.rstrip().endswith('!') }}
find={{ s.find('a') }} rfind={{ s.rfind('a') }} missing={{ s.find('qq') }} count={{ s.count('a') }}
lines={{ messages[1].content.splitlines() }} partition={{ 'k=v=w'.partition('=') | join('|') }} rpartition={{ 'k=v=w'.rpartition('=') | join('|') }}
slice=[{{ s[2:7] }}] neg=[{{ s[-4:] }}] step=[{{ s[::2] }}] rev=[{{ s.strip()[::-1] }}]
is=[{{ 'abc'.isalpha() }} {{ '123'.isdigit() }} {{ ''.isdigit() }} {{ 'ab1'.islower() }} {{ '  '.isspace() }}]
prefix={{ 'pre-fix'.removeprefix('pre-') }} suffix={{ 'pre-fix'.removesuffix('-fix') }} join={{ '-'.join(['a', 'b']) }}
format={{ '{} and {}'.format('x', 1) }} filterformat={{ '%s=%d' | format('n', 3) }}
filters: {{ s | trim }}|{{ s | upper }}|{{ s | lower }}|{{ s | title }}|{{ s | capitalize }}|{{ s | replace(' ', '_') }}|{{ s | length }}
unicode: {{ messages[1].content | upper }}|{{ messages[1].content | length }}|{{ messages[1].content[0] }}|{{ messages[1].content.find('é') }}
concat: {{ 'a' + 'b' }} {{ 'x' ~ 1 ~ none ~ true }} {{ '-' * 3 }}
""",
    # Slicing, tests, filters on sequences and dicts, printing of Python values.
    "values_and_filters": r"""{%- set first = messages[0] -%}
rest={{ messages[1:] | map(attribute='role') | list }} butlast={{ messages[:-1] | length }} every2={{ messages[::2] | map(attribute='role') | join(',') }}
last={{ messages[-1].role }} firstf={{ (messages | first).role }} lastf={{ (messages | last).role }}
tests: {{ first is defined }} {{ first.missing is defined }} {{ first.missing is none }} {{ none is none }} {{ first.role is string }} {{ first is mapping }} {{ messages is sequence }} {{ first.role is sequence }} {{ 3 is number }} {{ 3 is integer }} {{ 3.5 is float }} {{ messages is iterable }} {{ true is boolean }}
select: {{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' | ') }}
reject: {{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='role') | list }}
default: [{{ first.missing | default('dflt') }}] [{{ '' | default('empty', true) }}] [{{ none | default('none-kept') }}]
dict: {% for k, v in first.items() %}{{ k }}={{ v }};{% endfor %} keys={{ first.keys() | list }} get={{ first.get('role') }} {{ first.get('nope', 'fallback') }} {{ first.get('nope') }}
dictitems: {% for k, v in first | items %}{{ k }}:{{ v }} {% endfor %}sorted={% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}{{ v }}{% endfor %}
printing: {{ none }} {{ true }} {{ false }} {{ 1.0 }} {{ 0.1 }} {{ 1e-7 }} {{ 1e20 }} {{ 12345678901234567890 }} {{ [1, 'a', none, 2.5] }} {{ {'k': 'v', 'n': [true]} }} {{ messages[0] }}
math: {{ 3 / 2 }} {{ 4 / 2 }} {{ 7 // 2 }} {{ 2 ** 10 }} {{ 7 % 3 }} {{ -7 // 2 }} {{ 1 + 2.5 }} {{ (0.1 + 0.2) }}
compare: {{ messages | length > 2 }} {{ 'user' in messages | map(attribute='role') }} {{ 'x' not in 'abc' }} {{ 1 == 1.0 }}
undefined2: [{{ 'a' in nothing }}] [{{ nothing | default('d') }}] [{{ nothing == none }}] [{{ not nothing }}] [{{ nothing | list }}] [{{ nothing | join(',') }}] [{{ nothing ~ 'x' }}] [{{ first.missing | trim }}] [{{ nothing | upper }}] [{{ nothing | first is defined }}] [{{ first.missing is not defined }}]
undefined: [{{ nothing }}] [{{ nothing | length }}] [{{ first.nothing }}] [{% for x in nothing %}{{ x }}{% endfor %}] [{{ nothing is defined }}] [{{ bos_token is defined }}] [{{ tools is none }}] [{{ documents is none }}]
numbers: {{ '42' | int + 1 }} {{ '2.5' | float }} {{ 2.567 | round(1) }} {{ [3, 1, 2] | sort }} {{ [1, 2, 3] | sum }} {{ [3, 1, 2] | max }} {{ [1, 2, 2] | unique | list }} {{ [1, 2] | reverse | list }}
strings: {{ 42 | string }} {{ [1, 'x'] | string }} {{ none | string }} {{ ['a', 1, none] | join(', ') }}
globals: {{ dict(a=1, b='x') | tojson }} {{ range(2, 8, 2) | list }} [{{ strftime_now('no codes') }}]
""",
    # Jinja2 whitespace handling with trim_blocks/lstrip_blocks.
    "whitespace": r"""<start>
    {% if true %}
    indented block content
    {% endif %}
  {# a comment line #}
text {{ 'expr' }}   
  {%+ if true %}kept-indent{% endif %}
{% for m in messages %}
  - {{ m.role }}
{% endfor %}
{%- if true -%}   trimmed   {%- endif -%}
after
{% raw %}{{ not rendered }}{% endraw %}
{% set block %}
captured {{ messages | length }}
{% endset %}
[{{ block }}]
{% macro greet(name, punct='!') -%}
Hi {{ name }}{{ punct }}
{%- endmacro %}
{{ greet('you') }} {{ greet('them', '?') }}
{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}
{% call wrap('b') %}bold {{ messages[0].role }}{% endcall %}
{% with x = 5 %}x={{ x }}{% endwith %}
<end>
""",
    # {% generation %} with whitespace control, empty blocks, scoping and loop conditions.
    "generation": r"""{%- set x = 'outer' -%}
{%- for m in messages -%}
<{{ m.role }}>
{%- if m.role == 'assistant' -%}
  {%- generation -%}
    {{ m.content }}
    {%- if loop.last %}<last>{% endif %}
    {%- set x = 'inner' %}
  {%- endgeneration %}

{% else %}
  {{ m.content }}
{% endif -%}
{%- endfor -%}
x={{ x }}
{% generation %}{% endgeneration %}|{%+ generation +%}  spaced  {%+ endgeneration +%}|
{%- if add_generation_prompt %}<assistant>{% endif %}""",
    # transformers' reasoning aliasing: reasoning/thinking/reasoning_content.
    "reasoning": r"""{%- for m in messages -%}
{{ m.role }}: thinking=[{{ m.thinking }}] reasoning_content=[{{ m.reasoning_content }}] keys={{ m | list }}
{% endfor -%}""",
    # raise_exception with a message built at render time.
    "raise": r"""{%- for m in messages %}
{%- if m.role not in ['user', 'assistant'] %}
{{- raise_exception('Unsupported role: ' + m.role + ' at message ' ~ loop.index0) }}
{%- endif %}
{{- m.content }}
{%- endfor %}""",
    # Render-time errors other than raise_exception (messages differ from Jinja2's).
    "error_undefined_attr": "{{ messages[0].role }}{{ undefined_thing.attr }}",
    "error_type": "{{ messages[0].content + 1 }}",
    "error_unknown_filter": "{{ messages | no_such_filter }}",
    "error_tojson_undefined": "{{ messages[0].missing | tojson }}",
    # Less common syntax: literals, escapes, conditionals, tests, more filters.
    "syntax": r"""{%- set cfg = {'a': [1, 2,], 'b': 'x',} -%}
{%- set m = messages[0] -%}
literals: {{ cfg }} {{ (1, 2) | list }} {{ 'tab\there' }} {{ "q'uote" }} {{ 'caf\u00e9' }} {{ 'nl\nnl' }}
conditional: [{{ 'yes' if m.role == 'system' else 'no' }}] [{{ 'only-if' if false }}] {% if not messages %}empty{% elif messages | length == 1 %}one{% else %}many{% endif %}
tests: {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ m.role is in ['system', 'user'] }} {{ true is true }} {{ 0 is false }} {{ m is sameas m }} {{ 2 is eq 2 }}
lookups: {{ m['role'] }} {{ m.get('content') | length }} {{ m.role[-1] }} {{ messages[-1]['role'][1:3] }} {{ messages[99] is defined }}
filters: {{ [1, -2, 3] | map('abs') | list }} {{ ['a', 'B'] | map('upper') | join }} {{ [1, none, 'x'] | select('string') | list }} {{ [1, none, 2] | reject('none') | list }} {{ [3, 1] | min }} {{ -3 | abs }} {{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ 'a\nb' | indent(2) }} {{ 'a\nb' | indent(2, true) }}
groupby: {% for g in messages | groupby('role') %}{{ g.grouper }}={{ g.list | length }} {% endfor %}
attr: {{ messages | map(attribute='role') | map('length') | list }} {{ messages | selectattr('content') | list | length }}
compare: {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ {'a': 1} == {'a': 1} }} {{ none == none }} {{ 1 < 2 < 3 }} {{ 'b' > 'a' and not false or false }}
dict-loop: {% for k in cfg %}{{ k }}{% endfor %} {% for k, v in cfg | dictsort(reverse=true) %}{{ k }}{% endfor %}
escaping: {{ '<b>&amp;</b>' }} {{ '<b>' | e }} {{ '<i>' | safe }}
""",
    # Windows line endings in the template source; Jinja2 writes template newlines as "\n".
    "crlf": "{% for m in messages %}\r\n{{ m.role }}:\r\n  {{ m.content }}\r\n{% endfor %}\r\nend\r\n",
    # A {% generation %} block around a whole assistant turn, header included, several per
    # message, and one inside an if inside a nested loop.
    "generation_nested": r"""{%- for m in messages %}
{%- if m.role == 'assistant' %}
{%- generation %}<|assistant|>{{ m.content }}{% endgeneration %}
{%- for piece in m.content.split(' ') %}
{%- if loop.first %}{% generation %}[{{ piece }}]{% endgeneration %}{% endif %}
{%- endfor %}
{{ '\n' }}
{%- else %}<|{{ m.role }}|>{{ m.content }}
{% endif %}
{%- endfor %}""",
    # Generation tags placed every way trim_blocks/lstrip_blocks care about.
    "generation_whitespace": "{% for m in messages %}\n"
    "  {% if m.role == 'assistant' %}\n"
    "    {% generation %}\n"
    "    {{ m.content }}\n"
    "    {% endgeneration %}\n"
    "  {% else %}\n"
    "  text {% generation %} inline {{ m.role }} {% endgeneration %} after\n"
    "\t{%+ generation %}\n"
    "{{ m.content }}\n"
    "\t{%+ endgeneration +%}\n"
    "  {% endif %}\n"
    "{%- generation -%}  \n  {%- endgeneration -%}\n"
    "{% endfor %}\n"
    "{%generation%}end{%endgeneration%}\n",
    # A reasoning-model template: the last user query is found by a reverse scan with a
    # namespace, <think> blocks are split off the content, tool arguments may be strings.
    "reasoning_model": r"""{%- set ns = namespace(multi_step_tool=true, last_query_index=messages | length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages | length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == 'user' and message.content is string and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role in ['system', 'user'] %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}
            {{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- content }}
        {%- endif %}
        {%- if 'tool_calls' in message and message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}{{- '\n' }}{%- endif %}
                {%- set fn = tool_call.function if tool_call.function else tool_call %}
                {{- '<tool_call>\n{"name": "' }}{{- fn.name }}{{- '", "arguments": ' }}
                {{- fn.arguments if fn.arguments is string else fn.arguments | tojson }}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + content + '\n</tool_response><|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
""",
    # Tools listed in the first user message, a date from a kwarg, an ipython role.
    "tools_in_user": r"""{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Today Date: ' + date_string + '\n\n' }}
{{- system_message }}
{{- '<|eot_id|>' }}
{%- if tools_in_user_message and tools is not none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content'] | trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception('Cannot put tools in the first user message when there is none!') }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
    {{- 'Use these functions:\n\n' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- '\n\n' }}
    {%- endfor %}
    {{- first_user_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls is defined %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception('Only one tool call per message is supported.') }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- generation %}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- '}<|eot_id|>' }}
        {%- endgeneration %}
    {%- elif message.role == 'tool' or message.role == 'ipython' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' }}
        {%- if message.content is mapping or message.content is iterable and message.content is not string %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
        {%- if message.role == 'assistant' %}
            {%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}
        {%- else %}
            {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
""",
    # A {% generation %} block inside a macro, called from the top level.
    "generation_macro": r"""{%- macro turn(m) -%}
{%- generation -%}{{ m.content | trim }}{{ eos_token }}{%- endgeneration -%}
{%- endmacro -%}
{%- for m in messages -%}
[{{ m.role }}] {% if m.role == 'assistant' %}{{ turn(m) }}{% else %}{{ m.content }}{% endif %}

{% endfor -%}""",
    # Accessing the first message of an empty conversation fails in Jinja2 and here.
    "error_empty_index": "{{ messages[0].role }}",
    # Custom kwargs and special tokens as variables.
    "kwargs": r"""{{ bos_token }}{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}
{%- if documents %}{% for d in documents %}<doc title="{{ d.title }}">{{ d.text }}</doc>{% endfor %}{% endif %}
{%- for m in messages %}[{{ m.role | upper }}] {{ m.content }}{{ eos_token }}{% endfor %}
{{- custom.nested.value if custom is defined }}|{{ pad_token }}|{{ unk_token }}|{{ image_token }}""",
}

# Conversations (lists of messages).
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS: dict[str, list[dict]] = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "basic": [
        SYSTEM,
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 is 4."},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "To get to the other side."},
    ],
    "system_multi_turn_open": [
        {"role": "system", "content": "  Be brief.  \n"},
        {"role": "user", "content": "  First question?  "},
        {"role": "assistant", "content": "\n First answer. \n"},
        {"role": "user", "content": "Second question?"},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français, s'il te plaît. 🇫🇷"},
        {"role": "user", "content": "你好，世界！ Привет, мир! مرحبا 👋🏽 café naïve"},
        {"role": "assistant", "content": "Bonjour ! 👨‍👩‍👧‍👦 — « ça va » ? e\u0301 ∑ 𝔘𝔫𝔦"},
        {"role": "user", "content": "Ещё раз 🙂"},
        {"role": "assistant", "content": "D'accord ✅"},
    ],
    "list_content": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this."}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "A cat."}, {"type": "text", "text": " Sleeping."}],
        },
    ],
    "tool_calls": [
        SYSTEM,
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": {"city": "Paris", "unit": "celsius", "days": 2},
                    },
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21.5, "sky": "clear"}'},
        {"role": "tool", "content": '{"humidity": 0.4}'},
        {"role": "assistant", "content": "It is 21.5 °C and clear in Paris."},
    ],
    "not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "three"},
    ],
    "assistant_first": [
        {"role": "assistant", "content": "I start."},
        {"role": "user", "content": "ok"},
    ],
    "unsupported_role": [
        {"role": "user", "content": "hi"},
        {"role": "critic", "content": "meh"},
    ],
    "late_system": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "late"},
    ],
    "reasoning": [
        {"role": "user", "content": "Think."},
        {"role": "assistant", "content": "Done.", "reasoning": "Let me think..."},
        {"role": "assistant", "content": "Again.", "thinking": "T", "reasoning_content": "R"},
        {"role": "assistant", "content": "Null.", "thinking": None, "reasoning": "from reasoning"},
    ],
    "empty": [],
    "null_content": [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Sys "}, {"type": "text", "text": "prompt."}],
        },
        {"role": "user", "content": "Call nothing."},
        {"role": "assistant", "content": None},
    ],
    "think_tags": [
        {"role": "user", "content": "Solve it."},
        {"role": "assistant", "content": "<think>\nStep 1.\nStep 2.\n</think>\n\nThe answer is 42."},
        {"role": "user", "content": "Again, shorter."},
        {"role": "assistant", "content": "<think>Quick.</think>42"},
    ],
    "tool_calls_single": [
        {"role": "system", "content": " Tools are available. "},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 1}},
                }
            ],
        },
        {"role": "ipython", "content": {"temp": 21.5}},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny, 21.5 °C."},
    ],
    "tool_calls_double": [
        {"role": "user", "content": "Both?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"type": "function", "function": {"name": "a", "arguments": {}}},
                {"type": "function", "function": {"name": "b", "arguments": {}}},
            ],
        },
    ],
}

# Feature-template inputs.
TOJSON_DATA = {
    "name": 'tool"quote\\back',
    "floats": [1.0, 0.1, -2.5, 1e-07, 1e20, 123456.789, 3.0e-5, 100.0],
    "ints": [0, -1, 9007199254740993],
    "unicode": "héllo 世界 👋🏽 \u2028 tab\there",
    "controls": "nl\ncr\rbs\bff\fnul\u0001 del\u007f",
    "html": "<script>&'\"</script>",
    "bools": [True, False, None],
    "nested": {"z": {"y": [{"x": []}, {}]}, "a": [[], [1, [2, [3]]]]},
    "list": [1, "two", {"three": 3}],
    "empty_obj": {},
}
FEATURE_CONVERSATIONS: dict[str, list[dict]] = {
    "tojson": [{"role": "user", "content": "data", "data": TOJSON_DATA}],
    "string_methods": [
        {"role": "user", "content": "  Hello, wORLD's banana x1y!  "},
        {"role": "assistant", "content": "éa\r\nb\nc\u2028d"},
    ],
}

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
SPECIAL_BY_TEMPLATE = {
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "chatml": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city. Accepts «unicode» & <html>.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "default": 1.0},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "noop", "description": "", "parameters": {"type": "object", "properties": {}}},
    },
]


def byte_spans(text: str, spans: list[tuple[int, int]]) -> list[list[int]]:
    """Character offsets (what transformers returns) to UTF-8 byte offsets."""
    return [[len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))] for s, e in spans]


def render(
    source: str, messages: list[dict], add_generation_prompt: bool, special: dict, extra: dict | None
) -> dict:
    """One case's expectation: {"text", "generation_spans"} or {"error", "raised"}."""
    extra = dict(extra or {})
    tools = extra.pop("tools", None)
    documents = extra.pop("documents", None)
    kwargs = {**special, **extra}  # as apply_chat_template: kwargs override special tokens
    try:
        texts, spans = render_jinja_template(
            conversations=[json.loads(json.dumps(messages))],
            tools=tools,
            documents=documents,
            chat_template=source,
            return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
    except jinja2.exceptions.TemplateError as e:
        # raise_exception raises the base TemplateError; Jinja2's own errors are subclasses.
        raised = type(e) is jinja2.exceptions.TemplateError
        return {"error": str(e), "raised": raised}
    except Exception as e:  # noqa: BLE001 - any failure is an expected error
        return {"error": f"{type(e).__name__}: {e}", "raised": False}
    text = texts[0]
    return {"text": text, "generation_spans": byte_spans(text, spans[0])}


def cases() -> tuple[dict[str, str], list[dict]]:
    templates = {name: (BUILTIN_DIR / f"{name}.jinja").read_text(encoding="utf-8") for name in BUILTINS}
    templates.update(FEATURES)
    out = []

    def add(name, template, conversation, agp, special, extra=None, messages=None):
        messages = CONVERSATIONS[conversation] if messages is None else messages
        case = {
            "name": name,
            "template": template,
            "messages": messages,
            "add_generation_prompt": agp,
            "special": special,
            "extra": extra,
        }
        case.update(render(templates[template], messages, agp, special, extra))
        out.append(case)

    builtin_convs = [
        "single_user",
        "basic",
        "multi_turn",
        "system_multi_turn_open",
        "unicode",
        "list_content",
        "not_alternating",
        "assistant_first",
        "unsupported_role",
        "late_system",
        "empty",
        "null_content",
    ]
    for template in BUILTINS:
        special = SPECIAL_BY_TEMPLATE.get(template, SPECIAL)
        for conv in builtin_convs:
            for agp in (False, True):
                add(f"{template}/{conv}/agp={agp}", template, conv, agp, special)
        add(f"{template}/no_special_tokens", template, "basic", False, {})
    # An alpaca record with an input, as pyft's alpaca format converts it (the user message keeps
    # `instruction` and `input` for the alpaca template; other templates read the joined content).
    alpaca_input = [{"role": "user", "content": "Translate.\nguten Morgen", "instruction": "Translate.",
                     "input": "guten Morgen"}, {"role": "assistant", "content": "good morning"}]
    for template in ["alpaca", "chatml"]:
        for agp in (False, True):
            add(f"{template}/alpaca_input/agp={agp}", template, "", agp, SPECIAL_BY_TEMPLATE.get(template, SPECIAL),
                messages=alpaca_input)

    for conv in ["single_user", "basic", "tool_calls", "unicode"]:
        for agp in (False, True):
            add(f"tools/{conv}/agp={agp}", "tools", conv, agp, SPECIAL, {"tools": TOOLS})
    add("tools/no_tools", "tools", "tool_calls", False, SPECIAL)

    add("tojson", "tojson", "", False, SPECIAL, messages=FEATURE_CONVERSATIONS["tojson"])
    add(
        "string_methods",
        "string_methods",
        "",
        False,
        SPECIAL,
        messages=FEATURE_CONVERSATIONS["string_methods"],
    )
    for conv in ["basic", "multi_turn", "unicode"]:
        add(f"namespace_loops/{conv}", "namespace_loops", conv, False, SPECIAL)
        add(f"values_and_filters/{conv}", "values_and_filters", conv, False, SPECIAL)
    add("whitespace", "whitespace", "basic", False, SPECIAL)
    add("syntax", "syntax", "basic", False, SPECIAL)
    add("crlf", "crlf", "basic", False, SPECIAL)
    add("generation_nested", "generation_nested", "multi_turn", False, SPECIAL)
    add("generation_whitespace", "generation_whitespace", "basic", False, SPECIAL)
    add("generation_nested/unicode", "generation_nested", "unicode", False, SPECIAL)
    for conv in ["multi_turn", "unicode", "basic"]:
        for agp in (False, True):
            add(f"generation/{conv}/agp={agp}", "generation", conv, agp, SPECIAL)
    add("reasoning", "reasoning", "reasoning", False, SPECIAL)
    for conv in ["basic", "multi_turn", "tool_calls", "reasoning", "unicode", "think_tags"]:
        for agp in (False, True):
            add(f"reasoning_model/{conv}/agp={agp}", "reasoning_model", conv, agp, SPECIAL)
    add(
        "reasoning_model/no_thinking",
        "reasoning_model",
        "multi_turn",
        True,
        SPECIAL,
        {"enable_thinking": False},
    )
    for conv in ["basic", "tool_calls_single", "single_user"]:
        for agp in (False, True):
            add(
                f"tools_in_user/{conv}/agp={agp}",
                "tools_in_user",
                conv,
                agp,
                SPECIAL_BY_TEMPLATE["llama3"],
                {"tools": TOOLS, "date_string": "26 Jul 2024"},
            )
    add(
        "tools_in_user/no_tools",
        "tools_in_user",
        "basic",
        False,
        SPECIAL_BY_TEMPLATE["llama3"],
        {"date_string": "1 Jan 2025"},
    )
    add(
        "tools_in_user/two_calls",
        "tools_in_user",
        "tool_calls_double",
        False,
        SPECIAL_BY_TEMPLATE["llama3"],
        {"tools": TOOLS, "date_string": "1 Jan 2025"},
    )
    for conv in ["multi_turn", "unicode", "system_multi_turn_open"]:
        add(f"generation_macro/{conv}", "generation_macro", conv, False, SPECIAL)
    add("error_empty_index", "error_empty_index", "empty", False, SPECIAL)
    add("raise/ok", "raise", "multi_turn", False, SPECIAL)
    add("raise/system", "raise", "basic", False, SPECIAL)
    for name in ["error_undefined_attr", "error_type", "error_unknown_filter", "error_tojson_undefined"]:
        add(name, name, "basic", False, SPECIAL)
    documents = [{"title": "Doc «1»", "text": "Some text."}, {"title": "Two", "text": "More."}]
    add("kwargs/plain", "kwargs", "basic", False, SPECIAL)
    add(
        "kwargs/all",
        "kwargs",
        "unicode",
        True,
        {**SPECIAL, "image_token": "<image>"},
        {
            "enable_thinking": False,
            "documents": documents,
            "custom": {"nested": {"value": 2.5}},
            "eos_token": "<EOS>",
        },
    )
    return templates, out


# tokenizer_config.json variants -> transformers' special_tokens_map.
TOKENIZER_CONFIGS: dict[str, dict] = {
    "strings": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None},
    "added_tokens": {
        "bos_token": {
            "__type": "AddedToken",
            "content": "<s>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "eos_token": {
            "__type": "AddedToken",
            "content": "</s>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "add_bos_token": True,
        "additional_special_tokens": ["<extra_0>", "<extra_1>"],
    },
    "model_specific": {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "image_token": "<|image|>",
        "extra_special_tokens": {"audio_token": "<|audio|>"},
    },
    "all_named": {
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    },
}


def special_token_cases() -> list[dict]:
    from tokenizers import Tokenizer, models, pre_tokenizers

    out = []
    for name, config in TOKENIZER_CONFIGS.items():
        tokens = [
            "<unk>",
            "<s>",
            "</s>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|image|>",
            "<|audio|>",
            "<extra_0>",
            "<extra_1>",
            "[BOS]",
            "[EOS]",
            "[UNK]",
            "[SEP]",
            "[PAD]",
            "[CLS]",
            "[MASK]",
            "hello",
        ]
        tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        with tempfile.TemporaryDirectory() as d:
            tok.save(str(Path(d, "tokenizer.json")))
            cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
            Path(d, "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
            loaded = AutoTokenizer.from_pretrained(d)
            out.append({"name": name, "config": cfg, "expected": dict(loaded.special_tokens_map)})
    return out


def main() -> int:
    templates, case_list = cases()
    doc = {
        "generated_by": "tools/compat/make_template_cases.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "templates": templates,
        "cases": case_list,
        "special_tokens": special_token_cases(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum("error" in c for c in case_list)
    print(
        f"wrote {OUT.relative_to(ROOT)}: {len(case_list)} cases ({errors} expected errors), "
        f"{len(doc['special_tokens'])} special-token cases"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
