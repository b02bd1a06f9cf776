"""QLoRA (``method: qlora``): LoRA on an NF4 base learns the bundled task about as well as LoRA
on the 16-bit base, and saves a normal PEFT adapter."""

from __future__ import annotations

import json

import pytest
import torch

import pyft
from pyft.quant import NF4Linear
from pyft.train import build_trainer, load_config, train

from helpers import demo_task

peft = pytest.importorskip("peft")


def _config(model, data, out, method):
    return load_config(
        model=str(model), data=str(data), output=str(out), method=method,
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": ["lm_head"]},
        train={"max_steps": 150, "batch_size": 8, "lr": 3e-3, "schedule": "cosine", "warmup": 0.05,
               "eval_every": 75, "log_every": 1000, "precision": "fp32", "seed": 0})


def test_qlora_learns_like_lora_and_saves_a_peft_adapter(tokenizer_dirs, tmp_path):
    model, _ = demo_task(tmp_path, tokenizer_dirs["chatml"])
    trainer = build_trainer(_config(model, tmp_path / "data", tmp_path / "probe", "qlora"))
    nf4 = [m for m in trainer.model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 7 * trainer.model.config.num_hidden_layers
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or "lm_head" in n for n in trainable)
    del trainer
    losses = {}
    for method in ("lora", "qlora"):
        result = train(_config(model, tmp_path / "data", tmp_path / method, method))
        evals = [r["eval_loss"] for r in result.history if "eval_loss" in r]
        assert evals[-1] < 0.7 * evals[0], (method, evals)
        losses[method] = evals[-1]
    assert abs(losses["qlora"] - losses["lora"]) <= 0.10 * losses["lora"], losses
    # The adapter is a plain PEFT adapter: PEFT loads it on the NF4 base transformers + bitsandbytes
    # build, and pyft on its own NF4 base gives the same logits.
    adapter = tmp_path / "qlora" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 16
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    bnb = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.float32)
    base = transformers.AutoModelForCausalLM.from_pretrained(model, quantization_config=bnb, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, adapter).eval()
    ours = pyft.load_model(model, quantize="nf4", dtype="float32", adapter=adapter)
    ids = torch.tensor([[1, 5, 9, 20, 33, 47, 2, 8]])
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert (a - b).abs().max() <= 1e-4 * b.abs().max(), (a - b).abs().max()
