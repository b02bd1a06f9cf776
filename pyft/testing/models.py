"""Tiny random-init causal LMs built from transformers configs (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Shapes of the tiny fixture models: hidden 64, 2 layers, 4 heads.
#: ``llama``: MHA, untied embeddings. ``qwen2``: GQA (2 KV heads), tied embeddings, q/k/v bias.
#: ``qwen3``: GQA, tied embeddings, explicit ``head_dim``, q/k RMS norms.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "qwen2": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6),
    "qwen3": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rms_norm_eps=1e-6),
    # Gemma 2/3: llama.cpp scales queries by 1/sqrt(head_dim), so query_pre_attn_scalar = head_dim;
    # a sliding window shorter than the test prompts; soft-caps low enough to bend the values (the
    # random init's attention scores are ~0.03, its logits ~0.5).
    "gemma2": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                   attn_logit_softcapping=0.05, final_logit_softcapping=1.5, tie_word_embeddings=True,
                   rms_norm_eps=1e-6),
    # Six layers: five sliding (local RoPE base) then one global, llama.cpp's fixed Gemma 3 pattern.
    "gemma3": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=6, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                   tie_word_embeddings=True, rms_norm_eps=1e-6,
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                    "full_attention": {"rope_type": "default", "rope_theta": 100000.0}}),
    # Mistral-Nemo's shape: head_dim (32) is not hidden_size / num_attention_heads (16).
    "mistral": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, rms_norm_eps=1e-5,
                    sliding_window=None),
    # Mixture-of-experts families: 4 experts, top-2, every layer sparse.
    "mixtral": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
                    rms_norm_eps=1e-5),
    "qwen2_moe": dict(hidden_size=64, intermediate_size=176, moe_intermediate_size=64,
                      shared_expert_intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
                      rms_norm_eps=1e-6),
    # llama.cpp's qwen3moe always renormalises the top-k weights, as the released Qwen3-MoE configs do.
    "qwen3_moe": dict(hidden_size=64, intermediate_size=176, moe_intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                      num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False, rms_norm_eps=1e-6),
    # Granite: multipliers far from 1 so each one moves the logits (scores scaled by 1 instead of
    # 1/sqrt(16), embeddings x12, residual branches x0.5, logits / 4); weights at std 0.15 so the
    # attention scores are large enough for their scale to matter.
    "granite": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5, attention_multiplier=1.0,
                    embedding_multiplier=12.0, residual_multiplier=0.5, logits_scaling=4.0, initializer_range=0.15),
    # OLMo 2: GQA, so the k norm (over all KV heads) is narrower than the q norm.
    "olmo2": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6),
    # SmolLM3: four layers, so layer 3 runs without RoPE; weights at std 0.15 so attention is far
    # from uniform and RoPE (or its absence) shows in the logits.
    "smollm3": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6, initializer_range=0.15),
    # Phi-3.5/Phi-4-mini: LongRoPE over 12 of 16 head dims (partial_rotary_factor 0.75); prompts
    # longer than original_max_position_embeddings (16) so both transformers and llama.cpp use the
    # long factors; weights at std 0.15 so the RoPE factors show in the logits.
    "phi3": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5, initializer_range=0.15,
                 original_max_position_embeddings=16,
                 rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                  "long_factor": [1.0, 1.5, 2.0, 3.0, 5.0, 8.0],
                                  "short_factor": [1.0, 1.0, 1.1, 1.2, 1.3, 1.5]}),
    # Phi-4: the same fused layout without RoPE scaling or sliding window (GPT-2 BPE vocabulary).
    "phi4": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5,
                 original_max_position_embeddings=2048),
}

#: transformers class-name prefix (``<prefix>Config``, ``<prefix>ForCausalLM``) of each arch.
_PREFIX = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma2", "gemma3": "Gemma3",
           "mistral": "Mistral", "granite": "Granite", "olmo2": "Olmo2", "smollm3": "SmolLM3", "phi3": "Phi3",
           "phi4": "Phi3", "mixtral": "Mixtral", "qwen2_moe": "Qwen2Moe", "qwen3_moe": "Qwen3Moe"}


def make_tiny_model(
    out_dir: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    arch: str = "llama",
    seed: int = 0,
    max_position_embeddings: int = 2048,
    dtype: str = "float32",
    **overrides: Any,
) -> Path:
    """Build a tiny random-init causal LM and save it with its tokenizer as an HF directory.

    Args:
        out_dir: directory to write (``config.json``, ``model.safetensors``, tokenizer files,
            ``generation_config.json``).
        tokenizer_dir: an HF tokenizer directory (e.g. from :func:`make_tokenizer`); the
            vocabulary size and special ids come from it.
        arch: a key of :data:`TINY_SHAPES` (``llama``, ``qwen2``, ``qwen3``, ``gemma2``, ``gemma3``,
            ``mistral``, ``granite``, ``olmo2``, ``smollm3``, ``phi3``, ``phi4``, or the MoE ``mixtral``,
            ``qwen2_moe``, ``qwen3_moe``).
        seed: torch seed for the random weights.
        max_position_embeddings: context length in tokens.
        dtype: ``float32``, ``bfloat16`` or ``float16``: the dtype the weights are saved in.
        **overrides: config fields to change (e.g. ``num_hidden_layers=4``). ``vocab_size`` may
            make the embedding table and output layer larger than the tokenizer's vocabulary (as
            checkpoints pad theirs), e.g. for benchmarks whose output-layer cost should be realistic.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`. Same arguments give the same weights.
    """
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    if arch not in TINY_SHAPES:
        raise ValueError(f"unknown arch {arch!r} (expected one of {sorted(TINY_SHAPES)})")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = {**TINY_SHAPES[arch], **overrides}
    vocab_size = shape.pop("vocab_size", len(tok))
    if vocab_size < len(tok):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's vocabulary ({len(tok)})")
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    prefix = _PREFIX[arch]
    # Gemma3ForCausalLM is configured by Gemma3TextConfig (Gemma3Config is the vision-language one).
    config_cls = getattr(transformers, "Gemma3TextConfig" if arch == "gemma3" else f"{prefix}Config")
    cls = getattr(transformers, f"{prefix}ForCausalLM")
    config = config_cls(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, **ids,
                        **shape)
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    model = cls(config)
    if arch.startswith("gemma"):
        # Gemma's norms scale by (1 + w) with w initialised to 0: random w, so the exported `1 + w`
        # (rounded in the checkpoint's dtype) is exercised.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.2)
    elif arch == "olmo2":
        # Norms initialised to 1 would hide a swapped post-norm or q/k norm: random scales.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(1.0, 0.2)
    model = model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(**ids)
    out = Path(out_dir)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 1-shard fixture needs no progress bar
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(out)
    return out
