"""The support table (``pyft.export.support``): generated from the export's own tables, checked against
transformers' modules, llama.cpp's template corpus, and shown by ``pyft inspect``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from real_vocab import template_names, template_source

from pyft.cli.main import main
from pyft.errors import ConfigError
from pyft.export.ollama import translate_template
from pyft.export.support import (
    FAMILY_TEMPLATES,
    TEMPLATE_REFUSALS,
    VLLM_ARCHITECTURES,
    refused_architectures,
    support_for,
    support_rows,
    support_table,
)
from pyft.inspect import inspect_path
from pyft.testing import make_tiny_model
from pyft.testing.models import _PREFIX, TINY_SHAPES

ROOT = Path(__file__).resolve().parent.parent


def test_readme_support_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- support-table:begin[^>]*-->\n(.*?)\n<!-- support-table:end -->", readme, re.DOTALL)
    assert block, "README.md lost its generated support table"
    assert block.group(1) == support_table(), "regenerate: python -c 'from pyft.export.support import " \
                                              "support_table; print(support_table())'"


def test_every_exported_architecture_has_a_full_row():
    rows = support_rows()
    names = [r.hf_architecture for r in rows]
    assert len(names) == len(set(names)) >= 13
    assert set(FAMILY_TEMPLATES) <= set(names) and set(VLLM_ARCHITECTURES) == set(names)
    assert {_PREFIX[a] + "ForCausalLM" for a in TINY_SHAPES} == set(names), "every row has a tiny fixture"
    assert "Gemma3ForConditionalGeneration" in refused_architectures()
    assert support_for("GPT2LMHeadModel") is None


def _layer0_linears(arch: str) -> set[str]:
    """The nn.Linear modules of layer 0 of a tiny transformers model of ``arch``, relative to the layer."""
    import transformers

    config_cls = getattr(transformers, "Gemma3TextConfig" if arch == "gemma3" else f"{_PREFIX[arch]}Config")
    with torch.device("meta"):
        config = config_cls(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, **TINY_SHAPES[arch])
        model = getattr(transformers, f"{_PREFIX[arch]}ForCausalLM")(config)
    return {name for name, m in model.model.layers[0].named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("arch", sorted(TINY_SHAPES))
def test_lora_modules_are_the_models_linears(arch):
    """The GGUF LoRA modules of each row are real linear modules of that transformers architecture; for
    dense models they are all of them (routers and fused 3-D experts are not linears there)."""
    row = support_for(_PREFIX[arch] + "ForCausalLM")
    assert row is not None
    layer = {m for m in row.lora_modules if m not in ("embed_tokens", "lm_head")}
    linears = _layer0_linears(arch)
    assert layer <= linears, layer - linears
    if not row.moe:
        assert layer == linears
    else:
        assert row.merge_only and not any(m.startswith(("mlp.experts", "block_sparse_moe.experts")) for m in layer)


def test_family_templates_translate_as_the_table_says():
    """Each family template the table names is in llama.cpp's corpus, and translates unless the table
    says it is refused (the full Go-vs-Jinja rendering check is test_export_ollama's corpus test)."""
    corpus = set(template_names())
    listed = {f for templates in FAMILY_TEMPLATES.values() for _, f in templates}
    assert listed <= corpus, listed - corpus
    assert set(TEMPLATE_REFUSALS) <= listed
    for name in sorted(listed):
        if name in TEMPLATE_REFUSALS:
            with pytest.raises(ConfigError):
                translate_template(template_source(name), bos_token="<s>", eos_token="</s>")
        else:
            assert translate_template(template_source(name), bos_token="<s>", eos_token="</s>").template


def test_inspect_shows_the_models_row_and_its_template(tokenizer_dirs, tmp_path, capsys):
    model = make_tiny_model(tmp_path / "phi", tokenizer_dirs["chatml"], arch="phi3")
    s = inspect_path(model)
    e = s["export"]
    assert e["architecture"] == "Phi3ForCausalLM" and e["support"]["gguf_architecture"] == "phi3"
    assert "self_attn.qkv_proj" in e["support"]["gguf_lora_modules"]
    assert e["ollama_template"] == {"ok": True, "family": "chatml"}
    assert main(["inspect", str(model)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"GGUF\s+phi3\n", text) and re.search(r"Ollama TEMPLATE\s+translates \(chatml\)", text)

    (model / "tokenizer_config.json").write_text('{"chat_template": "{{ messages[0].content }}"}')
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = (model / "config.json").read_text().replace("Phi3ForCausalLM", "Gemma3ForConditionalGeneration")
    (model / "config.json").write_text(config)
    e = inspect_path(model)["export"]
    assert e["support"] is None and "mmproj" in e["gguf_refused"]
    assert e["ollama_template"]["ok"] is False and e["ollama_template"]["reason"]


def test_inspect_support_prints_the_table(capsys):
    assert main(["inspect", "--support"]) == 0
    assert capsys.readouterr().out.strip() == support_table()
    assert main(["inspect"]) != 0
    assert "--support" in capsys.readouterr().err
