"""Copies of real chat templates with `{% generation %}` markers, for transformers' reference masks.

Published chat templates (llama.cpp's ``models/templates/*.jinja``) have no `{% generation %}`
markers, so transformers' ``return_assistant_tokens_mask`` gives all zeros with them; pyft finds the
assistant turns itself. To compare, the same template is marked around each assistant turn's content
and its end-of-turn token (the newline after the token stays outside, as in pyft's built-ins),
leaving the rendered text unchanged. Used by ``test_data_prepare_real.py`` and
``tools/bench_data.py --real``.
"""

from __future__ import annotations

from real_vocab import template_source

_LLAMA31_TURN = (
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}"
)
_QWEN25_TURN = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
_PHI35_TURN = "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"

#: Template file -> (how it writes a turn, the same with the assistant turn marked).
MARKINGS: dict[str, tuple[str, str]] = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": (
        _LLAMA31_TURN,
        "{%- if message.role == 'assistant' %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{%- else %}" + _LLAMA31_TURN + "{%- endif %}",
    ),
    "Qwen-Qwen2.5-7B-Instruct.jinja": (
        _QWEN25_TURN,
        "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
        "{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
        "{%- else %}" + _QWEN25_TURN + "{%- endif %}",
    ),
    "microsoft-Phi-3.5-mini-instruct.jinja": (
        _PHI35_TURN,
        "{{'<|assistant|>\n'}}{% generation %}{{message['content'] + '<|end|>'}}{% endgeneration %}{{'\n'}}",
    ),
}


def with_generation_markers(name: str) -> str:
    """The template ``models/templates/<name>`` with its assistant turns in `{% generation %}` blocks.

    Raises ``KeyError`` for a template without a marking here, ``ValueError`` when the template no
    longer writes the turn as :data:`MARKINGS` expects.
    """
    plain, marked = MARKINGS[name]
    source = template_source(name)
    if source.count(plain) != 1:
        raise ValueError(f"{name}: the assistant turn to mark is not found exactly once")
    return source.replace(plain, marked)
