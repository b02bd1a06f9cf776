"""`pyft.data.prepare` on real vocabularies and real chat templates: token ids and assistant masks
equal transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`.

The tokenizers are rebuilt offline from llama.cpp's `ggml-vocab-*.gguf` files (`real_vocab`):
Llama 3 (`llama-bpe`) and Qwen2 (`qwen2`) are byte-level BPE, Llama 2 (`llama-spm`) and Phi-3
(`phi-3`) SentencePiece-style BPE with byte fallback; all four must take pyft's fast path. The
real templates have no `{% generation %}` markers, so pyft finds
the assistant turns itself (`content-spans`); the reference is transformers' mask computed on a
copy of the same template with markers around each assistant turn's content and its end-of-turn
token (`marked_templates`; the copy renders the same text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import pyft.data
from pyft.testing import TEMPLATES

from helpers import CONVERSATIONS, write_jsonl
from marked_templates import with_generation_markers
from real_vocab import real_tokenizer_dir


@dataclass(frozen=True)
class Case:
    """A real vocabulary and the chat template prepared with it."""

    vocab: str
    template: str  # a file of llama.cpp's models/templates (marked copy in marked_templates), or a built-in
    backend: str | None  # the backend required, or None: any, with the reason recorded if it is `hf`


CASES = {
    "llama3": Case("llama-bpe", "meta-llama-Llama-3.1-8B-Instruct.jinja", "fast-bpe"),
    "qwen2.5": Case("qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja", "fast-bpe"),
    "phi-3.5": Case("phi-3", "microsoft-Phi-3.5-mini-instruct.jinja", "fast-bpe"),
    # No Llama 2 template ships with llama.cpp; pyft's built-in `mistral` ([INST] ... [/INST], with
    # markers) is the Llama 2 chat format, here on Llama 2's vocabulary.
    "llama2": Case("llama-spm", "mistral", "fast-bpe"),
}


def _real(case: Case) -> bool:
    return case.template.endswith(".jinja")


def _tokenizer_dir(case: Case) -> Path:
    return real_tokenizer_dir(case.vocab, case.template if _real(case) else None)


def _template_option(case: Case) -> str:
    return "tokenizer" if _real(case) else case.template


def _reference_template(case: Case) -> str:
    return with_generation_markers(case.template) if _real(case) else TEMPLATES[case.template]


@pytest.fixture(scope="module")
def hf_tokenizers():
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(_tokenizer_dir(c)) for name, c in CASES.items()}


def _reference(hf_tok, messages, template):
    out = hf_tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True, chat_template=template)
    return list(out["input_ids"]), list(out["assistant_masks"])


def _labels(ids, mask):
    labels = [t if m else -100 for t, m in zip(ids, mask)]
    labels[0] = -100
    return labels


@pytest.mark.parametrize("name", sorted(CASES))
def test_ids_and_masks_match_transformers(name, hf_tokenizers, tmp_path):
    case = CASES[name]
    hf = hf_tokenizers[name]
    reference = _reference_template(case)
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS])
    info = pyft.data.prepare(src, _tokenizer_dir(case), tmp_path / "out", template=_template_option(case),
                             max_len=4096)
    if case.backend is not None:
        assert info.backend == case.backend, info.fallback_reason
    # A fallback says why; a fast path has no reason.
    assert (info.fallback_reason is None) == (info.backend != "hf"), (info.backend, info.fallback_reason)
    assert info.fallback_reason is None or info.fallback_reason.strip()
    method = "content-spans" if _real(case) else "generation-markers"
    assert info.counts["kept"] == len(CONVERSATIONS)
    assert info.counts["mask_methods"] == {method: len(CONVERSATIONS)}
    ds = pyft.data.load(tmp_path / "out")
    for messages, i in zip(CONVERSATIONS, range(len(ds))):
        row = ds[i]
        ids, mask = _reference(hf, messages, reference)
        if _real(case):  # the marked copy renders exactly the template's own text
            assert ids == hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert row["input_ids"].tolist() == ids, f"{name}: conversation {i}"
        assert row["labels"].tolist() == _labels(ids, mask), f"{name}: conversation {i}"
        assert sum(mask) >= sum(len(m["content"]) > 0 for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("name", ["llama3", "qwen2.5"])
def test_generation_prompt_prefix_is_not_trained(name, hf_tokenizers, tmp_path):
    """The last turn alone (`train_on="last"`): nothing before the final assistant header carries loss."""
    case = CASES[name]
    hf = hf_tokenizers[name]
    messages = CONVERSATIONS[3]
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    pyft.data.prepare(src, _tokenizer_dir(case), tmp_path / "out", train_on="last")
    ids, mask = _reference(hf, messages, _reference_template(case))
    prefix = hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                    return_dict=True)
    n = len(prefix["input_ids"])
    assert ids[:n] == prefix["input_ids"]
    last = [m if i >= n else 0 for i, m in enumerate(mask)]
    assert 0 < sum(last) < sum(mask)
    assert pyft.data.load(tmp_path / "out")[0]["labels"].tolist() == _labels(ids, last)
