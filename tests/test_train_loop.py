"""The training loop: accumulation equals one big batch, exact resume, loss goes down, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CONVERSATIONS, chat_task, demo_task, reorder_tolerance, torchrun_train, write_jsonl

import pyft.data
from pyft.errors import ConfigError
from pyft.testing import make_tiny_model
from pyft.train import build_trainer, load_config, train


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    return chat_task(tmp_path_factory.mktemp("train"), tokenizer_dirs["chatml"])


def _cfg(setup, out, **train):
    t = {"lr": 1e-2, "max_steps": 2, "batch_size": 8, "seed": 3, "log_every": 100, "schedule": "constant", **train}
    return load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out),
                       lora={"r": 4, "alpha": 8, "dropout": 0.0}, train=t)


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_grad_accumulation_equals_big_batch(setup, tmp_path):
    """Gradients of batch 8 equal those of 4 x accumulation 2 (uneven lengths, token-normalised)."""
    grads = []
    for bs, acc in [(8, 1), (4, 2)]:
        trainer = build_trainer(_cfg(setup, tmp_path / f"o{bs}", batch_size=bs, grad_accum=acc))
        loss, tokens = trainer.accumulate_gradients()
        grads.append(({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}, loss, tokens))
    (g1, l1, n1), (g2, l2, n2) = grads
    assert n1 == n2 and l1 == pytest.approx(l2, rel=1e-6)
    lengths = {len(r["input_ids"]) for r in pyft.data.load(setup["data"])}
    assert len(lengths) > 3  # uneven sequence lengths
    for k in g1:
        scale = g1[k].abs().max().clamp_min(1e-12)
        assert ((g1[k] - g2[k]).abs().max() / scale) <= 1e-6, k


def test_resume_is_exact(setup, tmp_path):
    common = dict(max_steps=20, batch_size=2, save_every=10, keep_last=1)
    train(_cfg(setup, tmp_path / "straight", **common))
    cfg = _cfg(setup, tmp_path / "stopped", **{**common, "max_steps": 10})
    train(cfg)
    ckpts = sorted((tmp_path / "stopped" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000010"]
    resumed = _cfg(setup, tmp_path / "stopped", **{**common, "resume": "auto"})
    result = train(resumed)
    assert result.steps == 20
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "stopped")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loss_goes_down_and_metrics_are_written(setup, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(setup, out, max_steps=30, batch_size=4, eval_every=10, lr=5e-3, schedule="cosine", warmup=0.1))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [x["eval_loss"] for x in lines if "eval_loss" in x]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(evals) == 4 and evals[-1] < evals[0]  # steps 0, 10, 20, 30
    assert sum(losses[-5:]) < sum(losses[:5])
    assert result.eval_loss == evals[-1]
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["base_model_name_or_path"] == str(setup["model"])


def test_full_finetune_with_freezing(setup, tmp_path):
    cfg = load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(tmp_path / "full"),
                      method="full", freeze={"embeddings": True, "first_layers": 1, "l2sp": 0.01},
                      train={"max_steps": 2, "batch_size": 4, "lr": 1e-3})
    train(cfg)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(setup["model"])
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")
    p0, p1 = dict(before.named_parameters()), dict(after.named_parameters())
    assert torch.equal(p0["model.embed_tokens.weight"], p1["model.embed_tokens.weight"])
    assert torch.equal(p0["model.layers.0.mlp.up_proj.weight"], p1["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(p0["model.layers.1.mlp.up_proj.weight"], p1["model.layers.1.mlp.up_proj.weight"])
    assert (tmp_path / "full" / "model" / "tokenizer.json").is_file()


def test_config_errors_name_the_key(setup, tmp_path, tokenizer_dirs):
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key"):
        load_config(model="m", data="d", train={"lrr": 1})
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got 'fast'"):
        load_config(model="m", data="d", overrides=["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"lora: `r` must be a positive integer, got 0"):
        load_config(model="m", data="d", overrides=["lora.r=0"])
    with pytest.raises(ConfigError, match=r"method: unknown method 'qlora2'"):
        load_config(model="m", data="d", method="qlora2")
    # data prepared with another tokenizer fails before training
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATIONS[0]}])
    pyft.data.prepare(src, tokenizer_dirs["llama3"], tmp_path / "other")
    cfg = _cfg(setup, tmp_path / "x")
    cfg.data = str(tmp_path / "other")
    with pytest.raises(ConfigError, match="prepared with another tokenizer"):
        train(cfg)
    assert not (tmp_path / "x").exists()
    cfg = _cfg(setup, tmp_path / "y")
    cfg.model = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        train(cfg)


def test_ddp_two_cpu_processes_equal_one_process(setup, tmp_path):
    """torchrun with 2 gloo processes x batch 4 gives the weights of 1 process x batch 8."""
    common = ["model=" + str(setup["model"]), "data=" + str(setup["data"]), "lora.r=4", "lora.alpha=8",
              "lora.dropout=0.0", "train.lr=1e-3", "train.max_steps=3", "train.seed=3", "train.schedule=constant",
              "train.eval_every=3"]
    train(load_config(None, [*common, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    r = torchrun_train([*common, f"output={tmp_path / 'ddp'}", "train.batch_size=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _adapter(tmp_path / "single"), _adapter(tmp_path / "ddp")
    # Same arithmetic in another order (2 ranks + all-reduce, one thread each, vs one process):
    # float32 reordering error only. 3 steps; a step's 8 rows; 2 layers x 7 linears + the output
    # layer; the widest reduction is the 4096-token vocabulary. (1e-5 held on one CPU, 1.3e-5 was
    # measured on an AVX-512 one; this bound is ~7e-4.)
    config = json.loads((setup["model"] / "config.json").read_text())
    tokens = 8 * max(len(r["input_ids"]) for r in pyft.data.load(setup["data"]))
    tol = reorder_tolerance(steps=3, tokens=tokens, matmuls=7 * config["num_hidden_layers"] + 1,
                            width=max(config["vocab_size"], config["intermediate_size"]))
    for k in a:
        scale = a[k].abs().max().clamp_min(1e-12)
        assert ((a[k] - b[k]).abs().max() / scale) <= tol, k
    single = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    ddp = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(single) == len(ddp)  # rank 0 alone wrote metrics
    for x, y in zip(single, ddp):
        key = "loss" if "loss" in x else "eval_loss"
        assert x[key] == pytest.approx(y[key], rel=tol)


def test_non_finite_loss_stops_with_last_checkpoint(setup, tmp_path, monkeypatch):
    from pyft.errors import TrainingError
    from pyft.objectives import sft

    trainer = build_trainer(_cfg(setup, tmp_path / "nan", max_steps=5, batch_size=2, save_every=2))
    real = sft.sft_loss_sum

    def poisoned(model, batch, chunk, label_smoothing=0.0):
        value = real(model, batch, chunk, label_smoothing)
        return value * float("nan") if trainer.step >= 3 else value

    monkeypatch.setattr(sft, "sft_loss_sum", poisoned)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    with pytest.raises(TrainingError, match=r"non-finite loss at step 4; training stopped before applying it "
                                            r"\(the last good checkpoint is .*step-000002\)"):
        trainer.run()
    after = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_tiny_model_learns_a_small_instruction_set(tokenizer_dirs, tmp_path):
    """Eval loss falls to at most half of the untrained model's, and greedy generation reproduces
    the trained answers for at least 90 % of the training prompts."""
    from transformers import AutoTokenizer

    from pyft.demo import greedy_answers

    model, _ = demo_task(tmp_path, tokenizer_dirs["chatml"])
    result = train(load_config(
        model=str(model), data=str(tmp_path / "data"), output=str(tmp_path / "out"),
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "modules_to_save": ["lm_head"]},
        train={"max_steps": 300, "batch_size": 8, "lr": 3e-3, "schedule": "cosine", "warmup": 0.05,
               "eval_every": 150, "log_every": 1000, "precision": "fp32", "seed": 0}))
    evals = [r["eval_loss"] for r in result.history if "eval_loss" in r]
    assert evals[-1] <= 0.5 * evals[0], evals
    tok = AutoTokenizer.from_pretrained(model)
    tuned = pyft.load_model(model, dtype="float32", adapter=tmp_path / "out" / "adapter")
    ds = pyft.data.load(tmp_path / "data")
    pairs = []
    for i in range(len(ds)):
        text = tok.decode(ds[i]["input_ids"].tolist())
        pairs.append((text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0],
                      text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]))
    answers = greedy_answers(tuned, tok, [q for q, _ in pairs])
    reproduced = sum(a.strip() == expected.strip() for a, (_, expected) in zip(answers, pairs))
    assert reproduced >= 0.9 * len(pairs), f"{reproduced}/{len(pairs)}"


def test_progressive_unfreezing(tokenizer_dirs, tmp_path):
    from safetensors.torch import load_file

    model = make_tiny_model(tmp_path / "m", tokenizer_dirs["chatml"], arch="llama")
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS * 2])
    pyft.data.prepare(src, model, tmp_path / "data")
    base = load_file(str(model / "model.safetensors"))

    def changed_after(steps):
        out = tmp_path / f"run{steps}"
        train(load_config(model=str(model), data=str(tmp_path / "data"), output=str(out), method="full",
                          freeze={"unfreeze_every": 2, "train_top_layers": 1},
                          train={"max_steps": steps, "batch_size": 2, "lr": 1e-3, "schedule": "constant"}))
        tuned = load_file(str(out / "model" / "model.safetensors"))

        def group(key):  # model.layers.0.mlp.up_proj.weight -> layers.0; model.norm.weight -> norm
            parts = key.removeprefix("model.").split(".")
            return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]

        return {group(k) for k in base if not torch.equal(base[k], tuned[k])}

    two = changed_after(2)
    assert {"layers.1", "norm", "lm_head"} <= two
    assert "layers.1" in two and "layers.0" not in two and "embed_tokens" not in two
    four = changed_after(4)
    assert "layers.0" in four and "embed_tokens" not in four
    assert "embed_tokens" in changed_after(5)


def test_gradient_checkpointing_gives_the_same_gradients(setup, tmp_path):
    grads = []
    for gc in (False, True):
        trainer = build_trainer(_cfg(setup, tmp_path / f"gc{gc}", gradient_checkpointing=gc))
        trainer.accumulate_gradients()
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    for k in grads[0]:
        scale = grads[0][k].abs().max().clamp_min(1e-12)
        assert ((grads[0][k] - grads[1][k]).abs().max() / scale) <= 1e-6, k


def test_bf16_autocast_on_cpu_and_fp16_needs_cuda(setup, tmp_path):
    import math

    result = train(_cfg(setup, tmp_path / "bf16", precision="bf16", max_steps=3))
    assert result.steps == 3 and math.isfinite(result.train_loss)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        build_trainer(_cfg(setup, tmp_path / "fp16", precision="fp16", device="cpu"))


def test_early_stopping_after_patience(setup, tmp_path, monkeypatch):
    from pyft.train import loop

    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    monkeypatch.setattr(loop.Trainer, "evaluate", lambda self: {"loss": next(losses)})
    result = train(_cfg(setup, tmp_path / "es", max_steps=10, eval_every=1, early_stopping_patience=2,
                        load_best=False))
    assert result.stopped_early and result.steps == 3  # evals at steps 0..3: 3.0 (baseline), 2.0, 2.5 (1 bad), 2.6 (2 bad)
    assert result.best_step is None and result.eval_loss == 2.6


def _saved_adapter_as_params(out):
    """The saved adapter's tensors under the model's parameter names (PEFT keys add ``base_model.model.``)."""
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    return {k.removeprefix("base_model.model."): v for k, v in saved.items()}


def test_early_stopping_keeps_and_saves_the_best_evaluated_weights(setup, tmp_path, monkeypatch, capsys):
    """Eval loss is lowest at step 2 and rises after: the run stops at step 4 and keeps step 2's weights,
    bit-equal to checkpoint step 2, which ``keep_last: 1`` would otherwise have pruned."""
    from safetensors.torch import load_file

    from pyft.train import loop

    losses = iter([3.0, 2.0, 1.5, 2.5, 2.6, 2.7])
    monkeypatch.setattr(loop.Trainer, "evaluate", lambda self: {"loss": next(losses)})
    out = tmp_path / "best"
    result = train(_cfg(setup, out, max_steps=10, eval_every=1, early_stopping_patience=2, save_every=1,
                        keep_last=1))
    assert result.stopped_early and result.steps == 4 and result.best_step == 2 and result.eval_loss == 1.5
    assert "kept the weights of step 2 (best eval loss 1.5000) instead of step 4's" in capsys.readouterr().err
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004"]  # the best one survives keep_last: 1
    best = load_file(str(out / "checkpoints" / "step-000002" / "trainable.safetensors"))
    last = load_file(str(out / "checkpoints" / "step-000004" / "trainable.safetensors"))
    saved = _saved_adapter_as_params(out)
    assert set(saved) == set(best)
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the last step's weights really differ
    state = json.loads((out / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["best_step"] == 2 and state["best_eval"] == 1.5


def test_l2sp_pulls_toward_pretrained_weights(setup, tmp_path):
    from safetensors.torch import load_file

    base = load_file(str(setup["model"] / "model.safetensors"))

    def distance(l2sp):
        out = tmp_path / f"l2sp{l2sp}"
        train(load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out), method="full",
                          freeze={"l2sp": l2sp}, train={"max_steps": 4, "batch_size": 4, "lr": 1e-2, "seed": 1}))
        tuned = load_file(str(out / "model" / "model.safetensors"))
        return sum(float(((tuned[k] - base[k]) ** 2).sum()) for k in base)

    assert distance(50.0) < 0.5 * distance(0.0)


def test_gradient_and_overfitting_warnings(capsys):
    from pyft.train.monitor import GradientAlarm, OverfittingAlarm

    alarm = GradientAlarm()
    for step in range(1, 13):
        alarm.on_step({"step": step, "grad_norm": 1.0, "grad_norm/layers.0": 1.0, "grad_norm/head": 0.5})
    alarm.on_step({"step": 13, "grad_norm": 50.0, "grad_norm/layers.0": 50.0, "grad_norm/head": 0.5})
    assert "exploding gradients in layers.0: norm 50 is 50x its recent average" in capsys.readouterr().err
    alarm.on_step({"step": 80, "grad_norm": 1e-12, "grad_norm/layers.0": 1e-12, "grad_norm/head": 0.5})
    assert "vanishing gradients in layers.0" in capsys.readouterr().err
    alarm.on_step({"step": 81, "grad_norm": 1e-12, "skipped": 1.0, "grad_norm/layers.0": 1e-12})  # fp16 overflow
    assert capsys.readouterr().err == ""
    overfit = OverfittingAlarm()
    for step, loss, eval_loss in [(1, 3.0, 2.0), (2, 2.0, 2.1), (3, 1.0, 2.2)]:
        overfit.on_step({"step": step, "loss": loss})
        overfit.on_eval({"step": step, "eval_loss": eval_loss})
    assert "possible overfitting: eval loss rose for two evaluations (2.0000 -> 2.2000)" in capsys.readouterr().err


def _run_files(out):
    """Every file of a run directory with its bytes (checkpoints included)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_finished_run_is_not_replaced_without_overwrite(setup, tmp_path):
    out = tmp_path / "run"
    train(_cfg(setup, out, save_every=1))
    before = _run_files(out)
    with pytest.raises(ConfigError, match=r"holds a training run .*--overwrite.*overwrite: true.*train\.resume") as e:
        train(_cfg(setup, out, lr=5e-3))
    assert str(out) in str(e.value)
    assert _run_files(out) == before
    from pyft.cli.main import main

    args = ["train", f"model={setup['model']}", f"data={setup['data']}", f"output={out}", "lora.r=4",
            "train.max_steps=1", "train.batch_size=8"]
    assert main(args) == 1
    assert _run_files(out) == before


def test_overwrite_removes_the_old_run_first(setup, tmp_path, capsys):
    """`--overwrite` starts from an empty run: none of the old run's checkpoints or metrics survive;
    files that are not a run's are left alone."""
    out = tmp_path / "run"
    train(_cfg(setup, out, max_steps=3, save_every=1, keep_last=3, eval_every=1))
    assert len(list((out / "checkpoints").iterdir())) == 3
    (out / "notes.txt").write_text("mine")
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # what a killed --overwrite left
    (out / f".checkpoints.pyft-stage-{dead_pid}-0" / "step-000001").mkdir(parents=True)
    from pyft.cli.main import main

    args = ["train", f"model={setup['model']}", f"data={setup['data']}", f"output={out}", "lora.r=4",
            "lora.alpha=8", "lora.dropout=0.0", "train.lr=1e-2", "train.seed=3", "train.schedule=constant",
            "train.max_steps=2", "train.batch_size=8", "train.save_every=2", "--overwrite"]
    assert main(args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]  # two steps and the final evaluation: nothing of the old run's
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert (out / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    train(_cfg(setup, fresh, max_steps=2, save_every=2))
    a, b = _adapter(fresh), _adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_in_place_and_refuses_overwrite_with_it(setup, tmp_path):
    out = tmp_path / "run"
    train(_cfg(setup, out, max_steps=1, save_every=1))
    with pytest.raises(ConfigError, match=r"overwrite: .*train\.resume"):
        load_config(model=str(setup["model"]), data=str(setup["data"]), output=str(out), overwrite=True,
                    train={"resume": "auto"})
    assert train(_cfg(setup, out, max_steps=2, save_every=1, resume="auto")).steps == 2
    # resume=auto with no checkpoint to resume from is a new run like any other
    bare = tmp_path / "bare"
    train(_cfg(setup, bare, max_steps=1))
    with pytest.raises(ConfigError, match=r"no checkpoint to resume from.*--overwrite"):
        train(_cfg(setup, bare, max_steps=1, resume="auto"))


def test_an_output_overlapping_an_input_is_refused(setup, tmp_path):
    """What a run writes may not be, hold or lie inside the model or the data, even with overwrite; a
    link planted where the run writes its model is resolved, never followed into the input."""
    model_files = _run_files(setup["model"])
    for out, relation in ((setup["model"], "lies inside"), (setup["data"] / "run", "lies inside"),
                          (tmp_path / "linked", "is")):
        if relation == "is":
            out.mkdir()
            (out / "model").symlink_to(setup["model"], target_is_directory=True)
            (out / "metrics.jsonl").write_text("")
        for overwrite in (False, True):
            cfg = _cfg(setup, out)
            cfg.overwrite = overwrite
            with pytest.raises(ConfigError, match=rf"output {out}/\w+ {relation} the input"):
                train(cfg)
    assert _run_files(setup["model"]) == model_files
    assert not (setup["data"] / "run").exists()


def test_regularisation_options_reach_the_run(setup, tmp_path):
    """train.label_smoothing, model_dropout and min_lr_ratio are wired into the objective, the model and
    the schedule; every step logs per-group gradient norms whose squares sum to the global norm."""
    import math

    from pyft.train.optim import lr_factor

    trainer = build_trainer(_cfg(setup, tmp_path / "reg", max_steps=4, schedule="cosine", label_smoothing=0.1,
                                 model_dropout=0.2, min_lr_ratio=0.1))
    assert trainer.objective.label_smoothing == 0.1
    rates = {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout) and "lora" not in type(m).__module__}
    attn = [m.attention_dropout for m in trainer.model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert attn and set(attn) == {0.2}
    assert rates <= {0.2, 0.0}
    assert lr_factor(4, 4, 0, "cosine", 0.1) == pytest.approx(0.1)
    metrics = trainer.train_step()
    groups = {k: v for k, v in metrics.items() if k.startswith("grad_norm/")}
    assert {"grad_norm/layers.0", "grad_norm/layers.1"} <= set(groups)
    # fp32 norms of a few dozen tensors: the sums of squares agree to a few float32 ulps.
    assert math.sqrt(sum(v * v for v in groups.values())) == pytest.approx(metrics["grad_norm"], rel=1e-5)
    result = trainer.run()
    assert result.steps == 4
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.1 * 1e-2)  # the floor, not 0
