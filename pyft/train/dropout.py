"""The model's own dropout: turn it off (preference training) or set it (``train.model_dropout``).

transformers models apply dropout in two ways: ``nn.Dropout`` modules (GPT-2's ``attn_pdrop``/
``resid_pdrop``/``embd_pdrop``, Phi's residual and embedding dropout, GPT-NeoX's ``hidden_dropout``)
and functional dropout whose probability the module reads from a float attribute copied from the
config at construction (``attention_dropout`` of the Llama, Mistral, Qwen2, Gemma, Phi, GPT-NeoX,
... attention layers; Falcon's ``hidden_dropout``). Both are set here, on the loaded modules.

``model.config`` is left alone, so a saved or merged model keeps the dropout values it was loaded
with: dropout is a training choice recorded in the run's config, and a ``config.json`` that said
``attention_dropout: 0.1`` would carry it into whoever fine-tunes the exported model next (inference
ignores dropout anyway). transformers users who want it saved pass ``attention_dropout=p`` to
``from_pretrained``. Architectures that read a probability from ``self.config`` during the forward
pass (Falcon's residual dropout) therefore keep their configured value for that one.
"""

from __future__ import annotations

from torch import nn

#: Float attributes that transformers modules read as a dropout probability in their forward pass.
FUNCTIONAL_DROPOUT_ATTRS = ("attention_dropout", "hidden_dropout")


def _is_adapter(name: str) -> bool:
    """Whether module ``name`` is an adapter's own dropout (``lora.dropout``, PEFT's ``lora_dropout``)."""
    return "lora_dropout" in name.split(".")


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0 (TRL's ``disable_dropout`` for preference training).

    Adapter dropout included (as TRL's ``disable_dropout_in_model``). The config (and so a saved
    model) is left as it was.
    """
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        # transformers' attention layers apply dropout functionally from this attribute.
        if isinstance(getattr(m, "attention_dropout", None), float):
            setattr(m, "attention_dropout", 0.0)  # noqa: B010 (a plain attribute of transformers modules)


def set_model_dropout(model: nn.Module, p: float) -> list[str]:
    """Set the dropout probability of every dropout the architecture has to ``p``.

    ``nn.Dropout`` modules get ``.p = p``; modules with a float ``attention_dropout`` or
    ``hidden_dropout`` attribute (see :data:`FUNCTIONAL_DROPOUT_ATTRS`) get it set to ``p``. The
    result matches loading the same weights with every dropout field of the config
    (``attention_dropout``, ``hidden_dropout``, ``resid_pdrop``, ``embd_pdrop``, ``attn_pdrop``, ...)
    set to ``p``. Adapter dropout (pyft's and PEFT's ``lora_dropout``) is the adapter's own setting
    (``lora.dropout``) and is left alone; ``model.config`` is not changed (see the module docstring).

    Args:
        model: a transformers model, possibly with adapters injected.
        p: dropout probability in ``[0, 1)``; 0 turns the model's dropout off.

    Returns:
        What was set: module names (``""`` for the root), with ``.attention_dropout`` /
        ``.hidden_dropout`` for the functional ones; empty when the architecture has no dropout.

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"model dropout must be in [0, 1), got {p!r}")
    changed = []
    for name, m in model.named_modules():
        if _is_adapter(name):
            continue
        if isinstance(m, nn.Dropout):
            m.p = p
            changed.append(name)
        for attr in FUNCTIONAL_DROPOUT_ATTRS:
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, p)
                changed.append(f"{name}.{attr}" if name else attr)
    return changed
