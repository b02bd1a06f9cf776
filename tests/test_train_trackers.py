"""Trackers (pyft.train.trackers) for real and offline: what each wrote is read back with an independent
reader: TensorBoard's EventAccumulator, the LevelDB-log records of a W&B offline run, MLflow's client
on the run's SQLite store; and `train.report_to` errors."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pyft.errors import ConfigError
from pyft.train.monitor import RunInfo
from pyft.train.trackers import MlflowListener, TensorBoardListener, WandbListener, flatten, tracker_listeners

pytestmark = [
    # SQLAlchemy 2.1 deprecates the `noload` strategy that MLflow 3.18's store still configures.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"),
]

CONFIG = {"model": "m", "method": "dpo", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
          "train": {"lr": 2e-4, "max_steps": 6, "resume": None, "betas": [0.9, 0.999], "gradient_checkpointing": False},
          "notes": "x" * 7000}  # longer than MLflow's 6000-character parameter values


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and nothing written outside tmp_path: W&B's and MLflow's per-user files go there too."""
    home = tmp_path / "home"
    for var, sub in [("HOME", ""), ("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"),
                     ("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_DATA_DIR", "wandb-data"),
                     ("WANDB_ARTIFACT_DIR", "wandb-artifacts"), ("MPLCONFIGDIR", "mpl")]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    for var, value in [("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_CONSOLE", "off"),
                       ("WANDB_DISABLE_CODE", "true"), ("WANDB_DISABLE_GIT", "true"),
                       ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true")]:
        monkeypatch.setenv(var, value)
    for var in ("WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_RESUME", "MLFLOW_TRACKING_URI",
                "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return home


def _records(start: int = 0, total: int = 6) -> list[dict[str, Any]]:
    """Step and eval records of a synthetic DPO run (evaluations at steps 0, 3 and 6)."""
    out: list[dict[str, Any]] = [] if start else [{"step": 0, "eval_loss": 0.6931, "eval_rewards/margins": 0.0}]
    for s in range(start + 1, total + 1):
        out.append({"step": s, "epoch": 0, "loss": 0.7 - 0.05 * s, "lr": 2e-4 * (1 - s / 10), "grad_norm": 1.0 + s,
                    "tokens": 100 * s, "rewards/margins": 0.1 * s, "grad_norm/layers.0": 0.5 * s,
                    **({"tokens_per_s": 1000.0 + s} if s % 2 == 0 else {})})
        if s % 3 == 0:
            out.append({"step": s, "eval_loss": 0.69 - 0.01 * s, "eval_rewards/margins": 0.05 * s})
    return out


def _pngs(tmp_path: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for name, color in [("loss", (200, 30, 30)), ("rewards", (20, 90, 220))]:
        pixels = np.zeros((12, 16, 3), dtype=np.uint8)
        pixels[:, :8] = color
        pixels[3, 5] = (1, 2, 3)
        path = tmp_path / f"{name}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _pixels(path_or_bytes: Path | bytes) -> np.ndarray:
    import io

    from PIL import Image

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def _run(out: Path, start: int = 0) -> RunInfo:
    out.mkdir(parents=True, exist_ok=True)
    return RunInfo(out, 6, start, "dpo", CONFIG, 2, lambda r: "")


def _drive(listener: Any, run: RunInfo, records: list[dict[str, Any]], artifacts: list[Path]) -> None:
    listener.on_start(run)
    for r in records:
        (listener.on_eval if "eval_loss" in r else listener.on_step)(r)
    listener.on_end(artifacts)


def _expected(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)]: `train/<key>` for steps, `eval/<key>` for evaluations (TensorBoard's tags)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step":
                series.setdefault(("eval/" if k.startswith("eval") else "train/") + k, []).append((r["step"], v))
    return series


# -- TensorBoard ---------------------------------------------------------------------------------------
def test_tensorboard_scalars_config_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, records, pngs = tmp_path / "run", _records(), _pngs(tmp_path)
    _drive(TensorBoardListener(out), _run(out), records, pngs)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    expected = _expected(records)
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    assert "train/loss" in expected and "eval/eval_rewards/margins" in expected and "train/epoch" in expected
    for tag, points in expected.items():
        # Event files hold float32 scalars: equal after rounding the value to float32.
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(s, float(np.float32(v))) for s, v in points], tag
    (text,) = acc.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert json.loads("\n".join(line.removeprefix("    ") for line in shown.splitlines())) == CONFIG
    for png in pngs:
        (image,) = acc.Images(f"plots/{png.stem}")
        assert image.step == 6
        assert np.array_equal(_pixels(image.encoded_image_string), _pixels(png))


def test_tensorboard_resume_purges_steps_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    first = _records()
    _drive(TensorBoardListener(out), _run(out), [r for r in first if r["step"] <= 5], [])  # killed after step 5
    second = [{**r, "loss": r["loss"] + 1} if "loss" in r else r for r in _records(start=3)]
    _drive(TensorBoardListener(out), _run(out, start=3), second, [])
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    want = [(r["step"], r["loss"]) for r in first if "loss" in r and r["step"] <= 3]
    want += [(r["step"], r["loss"]) for r in second if "loss" in r]
    assert got == [(s, float(np.float32(v))) for s, v in want]


# -- Weights & Biases ----------------------------------------------------------------------------------
def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``.wandb`` transaction log: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log framing: 32 KiB blocks of chunks, each ``crc32c u32, length u16, type u8, data``
    (type 1 full, 2 first, 3 middle, 4 last); a block tail shorter than a chunk header is padding."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break  # zeroed tail
        assert kind in (1, 2, 3, 4), kind
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_run(out: Path, which: int = -1) -> tuple[Path, list[Any]]:
    import wandb

    wandb.teardown()  # run.finish() leaves W&B's service writing the log in the background: wait for it
    runs = sorted((out / "wandb").glob("offline-run-*"))
    (log,) = runs[which].glob("run-*.wandb")
    return runs[which], _wandb_records(log)


def _wandb_history(records: list[Any]) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            rows.setdefault(items.pop("_step"), {}).update(items)
    return rows


def test_wandb_offline_run_holds_config_metrics_and_images(tmp_path, offline):
    out, records, pngs = tmp_path / "run", _records(), _pngs(tmp_path)
    listener = WandbListener(out)
    _drive(listener, _run(out), records, pngs)
    run_dir, log = _wandb_run(out)
    run_id = (out / "wandb" / "run-id.txt").read_text().strip()
    assert run_dir.name.endswith("-" + run_id)
    (run_record,) = [r.run for r in log if r.WhichOneof("record_type") == "run"]
    assert (run_record.run_id, run_record.project, run_record.display_name) == (run_id, "pyft", "run")
    config = {i.key: json.loads(i.value_json) for i in run_record.config.update}
    assert {k: v for k, v in config.items() if not k.startswith("_")} == CONFIG
    # Every step's metrics at that step, the evaluations merged into the rows of their step.
    rows = _wandb_history(log)
    want: dict[int, dict[str, Any]] = {}
    for tag, points in _expected(records).items():
        for step, value in points:
            want.setdefault(step, {})[tag] = value
    assert sorted(rows) == sorted(want)
    for step, row in rows.items():
        scalars = {k: v for k, v in row.items() if not k.startswith("_") and not k.startswith("plots/")}
        assert scalars == want[step], step  # JSON round-trips doubles exactly
    for png in pngs:  # the curves, as images of the last step
        assert rows[6][f"plots/{png.stem}/_type"] == "image-file"
        media = run_dir / "files" / rows[6][f"plots/{png.stem}/path"]
        assert media.parent == run_dir / "files" / "media" / "images" / "plots"
        assert np.array_equal(_pixels(media), _pixels(png))
    (exit_record,) = [r.exit for r in log if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0
    assert not any(Path.cwd().glob("wandb")), "W&B wrote into the working directory"


def test_wandb_resumed_run_keeps_its_id_and_a_failure_exits_1(tmp_path):
    out = tmp_path / "run"
    _drive(WandbListener(out), _run(out), [r for r in _records() if r["step"] <= 5], [])  # killed after step 5
    first_id = (out / "wandb" / "run-id.txt").read_text().strip()
    time.sleep(1.1)  # W&B names an offline run's folder after the second it starts, and the run id
    listener = WandbListener(out)
    listener.on_start(_run(out, start=3))
    for r in _records(start=3)[:2]:
        listener.on_step(r)
    try:
        raise RuntimeError("training failed")
    except RuntimeError:
        listener.on_end([])
    run_dir, log = _wandb_run(out, which=-1)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2
    assert run_dir.name.endswith("-" + first_id)
    (run_record,) = [r.run for r in log if r.WhichOneof("record_type") == "run"]
    assert run_record.run_id == first_id
    (exit_record,) = [r.exit for r in log if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 1
    assert sorted(_wandb_history(log)) == [4, 5]


# -- MLflow ----------------------------------------------------------------------------------------------
def _mlflow_client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}")


def test_mlflow_local_store_params_metrics_artifacts(tmp_path):
    out, records, pngs = tmp_path / "run", _records(), _pngs(tmp_path)
    _drive(MlflowListener(out), _run(out), records, pngs)
    client = _mlflow_client(out)
    run_id = (out / "mlflow" / "run-id.txt").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "pyft"
    assert run.data.tags["pyft.objective"] == "dpo"
    assert run.data.params == {
        "model": "m", "method": "dpo", "lora.r": "4", "lora.target_modules": '["q_proj", "v_proj"]',
        "train.lr": "0.0002", "train.max_steps": "6", "train.resume": "null", "train.betas": "[0.9, 0.999]",
        "train.gradient_checkpointing": "false", "notes": "x" * 6000,
    }
    expected = _expected(records)
    assert sorted(run.data.metrics) == sorted(expected)
    for key, points in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == sorted(points), key  # SQLite keeps doubles: exact
    assert sorted(a.path for a in client.list_artifacts(run_id, "plots")) == ["plots/loss.png", "plots/rewards.png"]
    local = Path(client.download_artifacts(run_id, "plots", str(tmp_path / "download")))
    for png in pngs:
        assert (local / png.name).read_bytes() == png.read_bytes()
    # The run's own store and artifacts live in the output directory.
    assert (out / "mlflow" / "artifacts").is_dir()


def test_mlflow_resume_continues_the_run_and_failure_is_marked(tmp_path):
    out = tmp_path / "run"
    _drive(MlflowListener(out), _run(out), [r for r in _records() if r["step"] <= 5], [])  # killed after step 5
    run_id = (out / "mlflow" / "run-id.txt").read_text().strip()
    listener = MlflowListener(out)
    listener.on_start(_run(out, start=3))
    for r in _records(start=3):
        listener.on_step(r) if "loss" in r else listener.on_eval(r)
    try:
        raise RuntimeError("training failed")
    except RuntimeError:
        listener.on_end([])
    client = _mlflow_client(out)
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FAILED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == [1, 2, 3, 4, 4, 5, 5, 6]  # MLflow keeps both values of the steps logged again


def test_mlflow_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "my-experiment")
    out = tmp_path / "run"
    records = [r for r in _records() if r["step"] <= 2]
    _drive(MlflowListener(out), _run(out), records, [])
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("my-experiment").experiment_id])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert history == [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert not (out / "mlflow" / "mlflow.db").exists()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": {},
                                                                               "f": None}


# -- train.report_to -----------------------------------------------------------------------------------
def test_report_to_auto_none_and_explicit(tmp_path, monkeypatch):
    assert [type(x) for x in tracker_listeners("auto", tmp_path)] == [TensorBoardListener]
    assert [type(x) for x in tracker_listeners(None, tmp_path)] == [TensorBoardListener]
    assert tracker_listeners("none", tmp_path) == []
    assert tracker_listeners([], tmp_path) == []
    got = tracker_listeners(["mlflow", "wandb", "tensorboard", "wandb"], tmp_path)
    assert [type(x) for x in got] == [MlflowListener, WandbListener, TensorBoardListener]
    assert [type(x) for x in tracker_listeners("wandb", tmp_path)] == [WandbListener]
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed
    assert tracker_listeners("auto", tmp_path) == []  # auto stays silent, as pyft always did


@pytest.mark.parametrize("tracker, module, pip", [("tensorboard", "tensorboard", "tensorboard"),
                                                  ("wandb", "wandb", "wandb"),
                                                  ("mlflow", "mlflow", "mlflow-skinny"),
                                                  ("mlflow", "sqlalchemy", "sqlalchemy alembic")])
def test_report_to_missing_library(tmp_path, monkeypatch, tracker, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ConfigError, match=rf"^train\.report_to: {tracker} needs the `{module}` package, which is not "
                                          rf"installed \(pip install {pip}, or pip install 'pyft\[track\]'"):
        tracker_listeners(["tensorboard", tracker] if tracker != "tensorboard" else [tracker], tmp_path)


def test_mlflow_remote_store_needs_no_sqlalchemy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert [type(x) for x in tracker_listeners("mlflow", tmp_path)] == [MlflowListener]


@pytest.mark.parametrize("value, message", [
    ("comet", ("train.report_to: unknown tracker 'comet' (expected tensorboard, wandb, mlflow, a list of them, "
               "auto or none)")),
    (["wandb", "none"], "train.report_to: none stands alone; got ['wandb', 'none']"),
    (["auto", "mlflow"], "train.report_to: auto stands alone; got ['auto', 'mlflow']"),
])
def test_report_to_bad_values(tmp_path, value, message):
    with pytest.raises(ConfigError) as e:
        tracker_listeners(value, tmp_path)
    assert str(e.value) == message


def test_report_to_in_the_config(tmp_path):
    from pyft.train import load_config

    common = {"model": str(tmp_path / "m"), "data": str(tmp_path / "d"), "output": str(tmp_path / "o")}
    assert load_config(**common).train.report_to == "auto"
    cfg = load_config(**common, overrides=["train.report_to=[tensorboard,wandb,mlflow]"])
    assert cfg.train.report_to == ["tensorboard", "wandb", "mlflow"]
    assert load_config(**common, overrides=["train.report_to=none"]).train.report_to == "none"
    with pytest.raises(ConfigError, match=r"^train\.report_to: unknown tracker 'tensorbord'"):
        load_config(**common, overrides=["train.report_to=[tensorbord]"])
    with pytest.raises(ConfigError, match=r"^train\.report_to: expected"):
        load_config(**common, overrides=["train.report_to=3"])


# -- a real run ----------------------------------------------------------------------------------------
def test_training_run_reports_to_all_three(tokenizer_dirs, tmp_path, capsys, single_thread):
    """A tiny SFT run with train.report_to=[tensorboard,wandb,mlflow]: each tracker holds every step's
    loss as metrics.jsonl has it, the evaluations, the config and loss.png; stderr has one progress
    line per log step."""
    from helpers import CONVERSATIONS, write_jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import pyft.data
    from pyft.testing import make_tiny_model
    from pyft.train import load_config, train

    model = make_tiny_model(tmp_path / "model", tokenizer_dirs["chatml"], arch="qwen2")
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CONVERSATIONS for _ in range(2)])
    pyft.data.prepare(src, model, tmp_path / "data", val_ratio=0.25, seed=0)
    out = tmp_path / "run"
    cfg = load_config(model=str(model), data=str(tmp_path / "data"), output=str(out),
                      lora={"r": 4, "alpha": 8, "dropout": 0.0},
                      train={"lr": 1e-2, "max_steps": 4, "batch_size": 4, "log_every": 2, "eval_every": 2,
                             "schedule": "constant"},
                      overrides=["train.report_to=[tensorboard,wandb,mlflow]"])
    capsys.readouterr()
    train(cfg)
    err = capsys.readouterr().err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if "eval_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in evals] == [0, 2, 4]
    assert [line.split("  ")[0] for line in err.splitlines() if line.startswith("step ")] == ["step 2/4", "step 4/4"]
    assert sum(line.startswith("[eval] step ") for line in err.splitlines()) == 3
    loss = [(r["step"], r["loss"]) for r in steps]
    eval_loss = [(r["step"], r["eval_loss"]) for r in evals]

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, float(np.float32(v))) for s, v in loss]
    assert [(e.step, e.value) for e in acc.Scalars("eval/eval_loss")] == [(s, float(np.float32(v))) for s, v in eval_loss]
    assert "plots/loss" in acc.Tags()["images"]

    run_dir, log = _wandb_run(out)
    rows = _wandb_history(log)
    assert [(s, rows[s]["train/loss"]) for s, _ in loss] == loss
    assert [(s, rows[s]["eval/eval_loss"]) for s, _ in eval_loss] == eval_loss
    assert (run_dir / "files" / rows[4]["plots/loss/path"]).is_file()
    (run_record,) = [r.run for r in log if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run_record.config.update}
    assert config["train"]["report_to"] == ["tensorboard", "wandb", "mlflow"] and config["method"] == cfg.method

    client = _mlflow_client(out)
    run_id = (out / "mlflow" / "run-id.txt").read_text().strip()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == loss
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/eval_loss")] == eval_loss
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "4"
    assert "plots/loss.png" in [a.path for a in client.list_artifacts(run_id, "plots")]


def test_tensorboard_samples_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    listener = TensorBoardListener(out)
    listener.on_start(_run(out))
    listener.on_samples({"step": 4, "samples": [{"prompt": "Hi?", "completion": "Hello, world."},
                                                {"prompt": "2+2?", "completion": "4"}]})
    listener.on_end([])
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("samples/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert text.step == 4 and "Hello, world." in shown and "'2+2?'" in shown and shown.count("---") == 1
