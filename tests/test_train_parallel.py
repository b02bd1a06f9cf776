"""Training on several processes (torchrun, gloo, CPU): FSDP2 and DDP give the weights and losses of
one process with the same global batch; the outputs are whole and load where users load them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import chat_task, reorder_tolerance, torchrun_train

import pyft.data
from pyft.errors import ConfigError
from pyft.train import load_config, train


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    """A tiny Qwen2 (untied output layer) and a tiny Llama with tied embeddings, and chat data."""
    return chat_task(tmp_path_factory.mktemp("parallel"), tokenizer_dirs["chatml"])


def _common(setup, **extra) -> list[str]:
    args = {"model": setup["model"], "data": setup["data"], "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
            "train.lr": 1e-3, "train.max_steps": 3, "train.seed": 3, "train.schedule": "constant",
            "train.eval_every": 3, **extra}
    return [f"{k}={v}" for k, v in args.items()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (out / "adapter" / "adapter_model.safetensors").is_file():
        return load_file(str(out / "adapter" / "adapter_model.safetensors"))
    found: dict[str, torch.Tensor] = {}
    for f in sorted((out / "model").glob("*.safetensors")):
        found.update(load_file(str(f)))
    return found


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _tolerance(setup, steps: int, rows: int) -> float:
    """:func:`helpers.reorder_tolerance` for this tiny model: the ranks' shards and the sum over 2
    ranks only reorder float32 reductions (FSDP's all-gather and reduce-scatter copy and add)."""
    config = json.loads((setup["model"] / "config.json").read_text())
    tokens = rows * max(len(r["input_ids"]) for r in pyft.data.load(setup["data"]))
    return reorder_tolerance(steps=steps, tokens=tokens, matmuls=7 * config["num_hidden_layers"] + 1,
                             width=max(config["vocab_size"], config["intermediate_size"]))


def _assert_same_run(setup, single: Path, multi: Path, steps: int = 3, rows: int = 8) -> None:
    a, b = _weights(single), _weights(multi)
    assert a and set(a) == set(b)
    tol = _tolerance(setup, steps, rows)
    for k in a:
        scale = a[k].abs().max().clamp_min(1e-12)
        assert float((a[k] - b[k]).abs().max() / scale) <= tol, k
    x, y = _metrics(single), _metrics(multi)
    assert len(x) == len(y)  # rank 0 alone wrote metrics
    for p, q in zip(x, y):
        key = "loss" if "loss" in p else "eval_loss"
        assert p[key] == pytest.approx(q[key], rel=tol), key
        if "grad_norm" in p:
            assert p["grad_norm"] == pytest.approx(q["grad_norm"], rel=tol)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """For LoRA, DoRA with rsLoRA scaling, and full fine-tuning: one process x batch 8 (``single``) and
    FSDP2 on 2 gloo processes x batch 4 (``fsdp``), 3 steps each; several tests read these outputs."""
    root = tmp_path_factory.mktemp("runs")
    out: dict[str, dict[str, Path]] = {}
    for tuning in ("lora", "dora", "full"):
        extra = {"lora.dora": "true", "lora.rslora": "true"} if tuning == "dora" else {}
        common = _common(setup, method="lora" if tuning == "dora" else tuning, **extra)
        single, fsdp = root / f"{tuning}-single", root / f"{tuning}-fsdp"
        train(load_config(None, [*common, f"output={single}", "train.batch_size=8"]))
        r = torchrun_train([*common, f"output={fsdp}", "train.batch_size=4", "train.parallel=fsdp"])
        assert r.returncode == 0, r.stderr[-3000:]
        out[tuning] = {"single": single, "fsdp": fsdp}
    return out


@pytest.mark.parametrize("tuning", ["lora", "dora", "full"])
def test_fsdp_two_processes_equal_one_process(setup, runs, tuning):
    """FSDP2 on 2 gloo processes x batch 4 gives the weights, losses and gradient norms of 1 process
    x batch 8 (the gradient norm is computed over both ranks' shards)."""
    _assert_same_run(setup, runs[tuning]["single"], runs[tuning]["fsdp"])


@pytest.mark.parametrize("extra", [["train.parallel=ddp"],
                                   ["train.parallel=fsdp", "train.gradient_checkpointing=true",
                                    "train.fsdp_cpu_offload=true"]],
                         ids=["ddp", "fsdp+checkpointing+offload"])
def test_accumulation_equals_one_process(setup, tmp_path, extra):
    """2 processes x batch 2 x accumulation 2 (inner micro-steps neither reduce nor reshard: DDP's
    no_sync, FSDP's gradient sync off) equal 1 process x batch 8; so do they with activation
    checkpointing (each layer recomputed in the backward, gathering its shards again) and CPU offload
    of shards, gradients and AdamW states."""
    common = _common(setup, method="full")
    train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'multi'}", "train.batch_size=2", "train.grad_accum=2",
                        *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(setup, tmp_path / "single", tmp_path / "multi")


def test_ddp_staged_hybrid_equals_one_process(setup, tmp_path):
    """DDP with a trainable set that changes between stages (LoRA frozen for 2 steps, then trained):
    the parameters outside the graph are found each step, and 2 processes equal 1."""
    import yaml

    config = tmp_path / "hybrid.yaml"
    config.write_text(yaml.safe_dump({
        "method": "sft", "tuning": ["lora", "ia3"], "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "o_proj"]},
        "ia3": {"targets": ["k_proj", "v_proj", "down_proj"], "feedforward": ["down_proj"]},
        "stages": [{"train": ["ia3"], "steps": 2}, {"train": ["ia3", "lora"]}]}))
    common = [str(config), *_common(setup, **{"train.max_steps": 4})]
    train(load_config(str(config), [*common[1:], f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'ddp'}", "train.batch_size=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    tol = _tolerance(setup, 4, 8)
    for part in ("lora", "ia3"):
        a = load_file(str(tmp_path / "single" / "adapter" / part / "adapter_model.safetensors"))
        b = load_file(str(tmp_path / "ddp" / "adapter" / part / "adapter_model.safetensors"))
        _same(a, b, tol)


def test_fsdp_config_errors_name_the_key(setup):
    for extra, key in [(["train.sample_every=5"], "train.sample_every"), (["eval.general=true"], "eval.general"),
                       (["train.optim=adamw_8bit"], "train.optim"), (["freeze.unfreeze_every=2"],
                                                                      "freeze.unfreeze_every")]:
        with pytest.raises(ConfigError, match=rf"{key}: not available with train.parallel: fsdp"):
            load_config(None, [*_common(setup, method="full"), "train.parallel=fsdp", *extra]).validate()
    # A reference model kept whole on every process is refused; the precomputed or adapters-off ones are fine.
    for extra in (["method=dpo", "tuning=full"], ["method=sft", "tuning=full", "train.kl_to_base=0.1"],
                  ["method=kto", "tuning=full", "align.precompute_ref=true"]):
        with pytest.raises(ConfigError, match="fsdp cannot keep the reference model live"):
            load_config(None, [*_common(setup), "train.parallel=fsdp", *extra]).validate()
    for extra in (["method=dpo", "tuning=full", "align.precompute_ref=true"], ["method=dpo", "tuning=lora"],
                  ["method=kto", "tuning=qlora"]):
        load_config(None, [*_common(setup), "train.parallel=fsdp", *extra]).validate()
    with pytest.raises(ConfigError, match="train.parallel: expected ddp or fsdp"):
        load_config(None, [*_common(setup), "train.parallel=zero3"]).validate()
    with pytest.raises(ConfigError, match="train.fsdp_cpu_offload: needs train.parallel: fsdp"):
        load_config(None, [*_common(setup), "train.fsdp_cpu_offload=true"]).validate()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a and set(a) == set(b)
    for k, x in a.items():
        scale = x.abs().max().clamp_min(1e-12)
        assert float((x - b[k]).abs().max() / scale) <= tol, k


def test_sharded_checkpoint_resumes_on_1_2_and_4_processes(setup, tmp_path):
    """A 2-process FSDP run checkpointed (sharded) at step 10 and resumed on 1, 2 or 4 processes with
    the same global batch reaches the weights of the uninterrupted run at step 20; a 1-process
    checkpoint resumes under FSDP on 2."""
    import shutil

    from pyft.train.sharded_checkpoint import SHARDED_DIR

    common = [*_common(setup, method="full"), "train.eval_every=null", "train.save_every=10", "train.keep_last=1"]
    per = {1: ["train.batch_size=8"], 2: ["train.batch_size=4", "train.parallel=fsdp"],
           4: ["train.batch_size=2", "train.parallel=fsdp"]}
    r = torchrun_train([*common, "train.max_steps=20", f"output={tmp_path / 'whole'}", *per[2]])
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun_train([*common, "train.max_steps=10", f"output={tmp_path / 'cut'}", *per[2]])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "cut" / "checkpoints" / "step-000010"
    shards = sorted(p.name for p in (ckpt / SHARDED_DIR).iterdir())
    assert len(shards) == 2 and all(s.endswith(".safetensors") for s in shards)  # one file per rank
    assert not list(ckpt.rglob("*.metadata")) and not list(ckpt.rglob("*.pt"))  # nothing pickled
    whole = _weights(tmp_path / "whole")
    for n in (1, 2, 4):
        out = tmp_path / f"resumed{n}"
        shutil.copytree(tmp_path / "cut", out)
        args = [*common, "train.max_steps=20", "train.resume=auto", f"output={out}", *per[n]]
        if n == 1:
            train(load_config(None, args))
        else:
            r = torchrun_train(args, nproc=n)
            assert r.returncode == 0, r.stderr[-3000:]
        # Same world size: the same arithmetic, so the same bits. Another world size reorders the
        # float32 sums of each step's gradients (10 steps of 8 rows).
        tol = 0.0 if n == 2 else _tolerance(setup, 10, 8)
        _same(whole, _weights(out), tol)
        steps = [x["step"] for x in _metrics(out) if "loss" in x]
        assert steps[-1] == 20 and 11 in steps  # continued from step 10
    # A whole checkpoint (one process) resumed sharded on 2 processes.
    train(load_config(None, [*common, "train.max_steps=10", f"output={tmp_path / 'cut1'}", *per[1]]))
    r = torchrun_train([*common, "train.max_steps=20", "train.resume=auto", f"output={tmp_path / 'cut1'}", *per[2]])
    assert r.returncode == 0, r.stderr[-3000:]
    _same(whole, _weights(tmp_path / "cut1"), _tolerance(setup, 20, 8))


def test_fsdp_lora_adapter_loads_in_peft_with_the_same_logits(setup, runs):
    """The adapter rank 0 writes after FSDP training is complete (every LoRA tensor, trained: B is
    no longer zero) and PEFT gives the logits pyft's own loader gives."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pyft.models import load_model
    from pyft.peft import load_adapter

    adapter = runs["lora"]["fsdp"] / "adapter"
    weights = _weights(runs["lora"]["fsdp"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    layers = json.loads((setup["model"] / "config.json").read_text())["num_hidden_layers"]
    assert len(weights) == 2 * layers * len(config["target_modules"])
    assert all(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k)
    ids = torch.tensor([[1, 5, 9, 200, 17, 3, 44]])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["model"]), adapter).eval()
    mine = load_model(setup["model"])
    load_adapter(mine, adapter)
    mine.eval()
    with torch.no_grad():
        a, b = peft_model(input_ids=ids).logits, mine(input_ids=ids).logits
    # Same weights, same float32 ops up to kernel order: a few float32 ulps of the logits' scale.
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_fsdp_full_fine_tuning_output_exports(setup, runs, tmp_path):
    """The model/ directory of an FSDP full fine-tuning run is a whole transformers model that pyft
    export turns into a GGUF file."""
    from transformers import AutoModelForCausalLM

    model_dir = runs["full"]["fsdp"] / "model"
    trained = AutoModelForCausalLM.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(changed) == len(list(base.named_parameters()))  # every tensor whole and trained
    import subprocess
    import sys

    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "pyft.cli.main", "export", str(model_dir), "--to", "gguf", "--out",
                        str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 0


def test_pyft_train_nproc_runs_torchrun(setup, runs, tmp_path):
    """`pyft train --nproc 2` launches 2 processes (rank 0 alone logs and writes) and gives the run of
    torchrun with the same arguments; bad values are refused before anything starts."""
    import subprocess
    import sys

    args = [*_common(setup, method="lora"), "train.batch_size=4", "train.parallel=fsdp"]
    cmd = [sys.executable, "-m", "pyft.cli.main", "train", *args]
    # --nproc may stand among the overrides
    r = subprocess.run([*cmd[:5], "--nproc", "2", *cmd[5:], f"output={tmp_path / 'nproc'}"], capture_output=True,
                       text=True, check=False,
                       timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[train] 2 processes" in r.stderr
    a, b = _weights(tmp_path / "nproc"), _weights(runs["lora"]["fsdp"])  # the same run under torchrun
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    for bad, why in [("0", "--nproc: must be >= 1"), ("2", "train.sample_every: not available")]:
        extra = ["train.sample_every=5"] if "sample" in why else []
        r = subprocess.run([*cmd, *extra, f"output={tmp_path / 'bad'}", "--nproc", bad], capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode != 0 and why in r.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("tuning", ["lora"])
def test_fsdp_bf16_mixed_precision_trains_close_to_one_process(setup, tmp_path, tuning):
    """precision: bf16 under FSDP gathers parameters in bf16 and reduces gradients in fp32
    (MixedPrecisionPolicy); one process computes in bf16 under autocast instead. The losses agree to
    bf16 rounding: relative 2^-8 per rounding, a few roundings deep, so 3e-2 (a wrong normalisation or
    a missing reduction is off by 2x)."""
    common = _common(setup, method=tuning, **{"train.precision": "bf16"})
    single = train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'fsdp'}", "train.batch_size=4", "train.parallel=fsdp"])
    assert r.returncode == 0, r.stderr[-3000:]
    fsdp = _metrics(tmp_path / "fsdp")
    losses = [x["loss"] for x in fsdp if "loss" in x]
    assert losses == pytest.approx([x["loss"] for x in single.history if "loss" in x], rel=3e-2)
    assert set(_weights(tmp_path / "fsdp")) == set(_weights(tmp_path / "single"))


def test_damaged_or_foreign_sharded_checkpoint_is_refused_naming_it(setup, runs, tmp_path):
    """Resuming from a sharded checkpoint whose shard is cut short, whose shards are gone, or that
    another method wrote fails before training with an error naming the file or the mismatch."""
    import shutil

    from pyft.errors import DataError
    from pyft.train import build_trainer

    saved = max((runs["full"]["fsdp"] / "checkpoints").glob("step-*"))
    assert (saved / "sharded").is_dir()

    def resume_from(tuning: str, damage) -> None:
        out = tmp_path / f"{tuning}-{damage.__name__}"
        ckpt = out / "checkpoints" / saved.name
        shutil.copytree(saved, ckpt)
        damage(ckpt / "sharded")
        build_trainer(load_config(None, [*_common(setup, method=tuning), f"output={out}", "train.resume=auto",
                                         "train.batch_size=8"]))

    def truncated(d: Path) -> None:
        first = min(d.glob("*.safetensors"))
        first.write_bytes(first.read_bytes()[:4])

    def removed(d: Path) -> None:
        for f in d.glob("*.safetensors"):
            f.unlink()

    with pytest.raises(DataError, match=r"shard-00001-model-00001-of-00001\.safetensors.*not a valid safetensors"):
        resume_from("full", truncated)
    with pytest.raises(DataError, match="holds no .safetensors shard"):
        resume_from("full", removed)
    with pytest.raises(ConfigError, match="checkpoint does not match this model/method/optimizer"):
        resume_from("lora", lambda d: None)


def test_sharded_checkpoint_weights_load_into_one_process(setup, runs, tmp_path):
    """`load_trainable` (what train.load_best uses to restore the best step) reads a sharded
    checkpoint into a whole model: the FSDP run's last checkpoint holds exactly its final weights."""
    from pyft.train import build_trainer
    from pyft.train.checkpoint import load_trainable

    saved = max((runs["full"]["fsdp"] / "checkpoints").glob("step-*"))
    assert saved.name == "step-000003"
    trainer = build_trainer(load_config(None, [*_common(setup, method="full"), f"output={tmp_path / 'x'}"]))
    load_trainable(saved, trainer.model, trainer.optimizer)
    final = _weights(runs["full"]["fsdp"])
    mine = dict(trainer.model.named_parameters())
    assert set(final) <= set(mine)
    for name, value in final.items():
        assert torch.equal(mine[name].detach(), value), name


def test_fsdp_full_fine_tuning_of_a_bf16_checkpoint_casts_layer_by_layer(setup, tmp_path):
    """A bf16 checkpoint trained in fp32 under FSDP is loaded as stored (memory-mapped) and each layer
    is cast just before it is sharded; the run equals one process, which converts it all at load
    (bf16 -> fp32 is exact, so both start from the same fp32 weights), and model/ is saved in fp32."""
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(setup["model"]).to(torch.bfloat16).save_pretrained(bf16)
    for f in setup["model"].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (bf16 / f.name).write_bytes(f.read_bytes())
    common = [*_common(setup, method="full"), f"model={bf16}"]
    train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'fsdp'}", "train.batch_size=4", "train.parallel=fsdp"])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(setup, tmp_path / "single", tmp_path / "fsdp")
    for run in ("single", "fsdp"):
        saved = json.loads((tmp_path / run / "model" / "config.json").read_text())
        assert saved["dtype"] == "float32", run
        assert all(t.dtype == torch.float32 for t in _weights(tmp_path / run).values())
