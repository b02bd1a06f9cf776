"""Experiment trackers as training listeners: TensorBoard, Weights & Biases, MLflow (``train.report_to``).

Each tracker gets the run's resolved config, every step's and evaluation's metrics at their optimizer
step, and at the end the PNG curves (``loss.png``, ``rewards.png``). Metric names are the same in all
three, as TensorBoard's tags always were: ``train/<key>`` for step records (``train/loss``,
``train/rewards/margins``) and ``eval/<key>`` for evaluations (``eval/eval_loss``).

``train.report_to``:

- ``auto`` (default): TensorBoard when it is installed, silently nothing otherwise (what pyft always did);
- a name or a list of names (``[tensorboard, wandb, mlflow]``): exactly those, and a run refuses to
  start when one's library is missing, naming the ``pip install`` that adds it (``pip install
  'pyft[track]'`` adds all three);
- ``none``: no tracker.

Where each writes (``output`` is the run's output directory):

- ``tensorboard``: ``output/tensorboard`` (``tensorboard --logdir output/tensorboard``).
- ``wandb``: ``wandb.init(project=$WANDB_PROJECT or "pyft", name=$WANDB_NAME or the output folder's
  name, dir=output)``; the mode is W&B's own (``wandb login`` for the cloud, ``WANDB_MODE=offline``
  to write ``output/wandb/offline-run-*`` for a later ``wandb sync``). A resumed run continues the
  W&B run it started (its id is kept in ``output/wandb/run-id.txt``); W&B ignores the steps it
  already holds, so the steps between the checkpoint and the interruption keep their first values.
- ``mlflow``: ``$MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///mlflow.db``, ...); otherwise a
  store of the run's own, ``sqlite:///output/mlflow/mlflow.db`` with artifacts in
  ``output/mlflow/artifacts`` (view it with ``mlflow ui --backend-store-uri
  sqlite:///output/mlflow/mlflow.db``). The experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``pyft``,
  the run is named after the output folder, parameters are the flattened config (``train.lr``),
  and a resumed run continues its MLflow run (id in ``output/mlflow/run-id.txt``).

A run that ends with an exception is marked failed in W&B (exit code 1) and MLflow (``FAILED``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import string
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyft.errors import ConfigError

if TYPE_CHECKING:
    from pyft.train.monitor import Listener, RunInfo

#: Tracker name -> (module that must import, what to pip install).
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}
#: Values of ``train.report_to`` that stand alone.
SPECIAL = ("auto", "none")


def report_to_names(report_to: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Check ``train.report_to`` and return it as a list (``["auto"]``, ``[]`` for ``none``, or names).

    Raises:
        ConfigError: an unknown name, or ``auto``/``none`` mixed with names.
    """
    if report_to is None:
        return ["auto"]
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    known = (*TRACKERS, *SPECIAL)
    for name in names:
        if name not in known:
            raise ConfigError(f"train.report_to: unknown tracker {name!r} (expected {', '.join(TRACKERS)}, "
                              f"a list of them, auto or none)")
    special = [n for n in names if n in SPECIAL]
    if special and len(names) > 1:
        raise ConfigError(f"train.report_to: {special[0]} stands alone; got {names}")
    if names == ["none"]:
        return []
    return list(dict.fromkeys(names))  # in order, once each


def tracker_listeners(report_to: str | list[str] | None, output: str | os.PathLike[str]) -> list[Listener]:
    """The listeners ``train.report_to`` asks for (see the module docs).

    Raises:
        ConfigError: an unknown tracker, or a tracker named explicitly whose library is not installed.
    """
    names = report_to_names(report_to)
    out = Path(output)
    if names == ["auto"]:
        try:
            return [TensorBoardListener(out)]
        except ConfigError:
            return []
    factories = {"tensorboard": TensorBoardListener, "wandb": WandbListener, "mlflow": MlflowListener}
    return [factories[name](out) for name in names]


def _require(tracker: str, module: str | None = None, pip: str | None = None) -> Any:
    """Import ``module`` (default: the tracker's) or raise a ConfigError saying what to install."""
    default_module, default_pip = TRACKERS[tracker]
    module, pip = module or default_module, pip or default_pip
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"train.report_to: {tracker} needs the `{module}` package, which is not installed "
                          f"(pip install {pip}, or pip install 'pyft[track]' for every tracker; "
                          f"train.report_to=none turns trackers off)") from None


def tag(key: str) -> str:
    """The tracker name of a record's key: ``train/loss``, ``eval/eval_loss``."""
    return f"{'eval' if key.startswith('eval') else 'train'}/{key}"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers under their tracker names (everything but ``step``)."""
    return {tag(k): float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _failed() -> bool:
    """Whether the listener's ``on_end`` runs while an exception propagates (it is called from a
    ``finally`` or ``except`` block of the loop)."""
    return sys.exc_info()[0] is not None


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if text.isascii() and text.replace("-", "").isalnum() else None


class TensorBoardListener:
    """Scalars, the config (as text) and the PNG curves (as images) in ``output/tensorboard``."""

    def __init__(self, output: Path) -> None:
        _require("tensorboard")
        self.output = output
        self.writer: Any = None
        self.step = 0

    def on_start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run drops the events a killed run wrote after its checkpoint.
        self.writer = SummaryWriter(str(self.output / "tensorboard"),
                                    purge_step=run.start_step + 1 if run.start_step else None)
        self.step = run.start_step
        if run.start_step == 0:
            text = json.dumps(run.config, indent=2, default=str)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # a markdown code block

    def _scalars(self, record: dict[str, Any]) -> None:
        self.step = record["step"]
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, self.step)

    def on_step(self, record: dict[str, Any]) -> None:
        self._scalars(record)

    def on_eval(self, record: dict[str, Any]) -> None:
        self._scalars(record)

    def on_samples(self, record: dict[str, Any]) -> None:
        """The samples of a step as one markdown text entry (``samples``)."""
        parts = [f"**prompt:** `{s['prompt']!r}`\n\n**completion:** {s['completion']}" for s in record["samples"]]
        self.writer.add_text("samples", "\n\n---\n\n".join(parts), record["step"])

    def on_end(self, artifacts: list[Path]) -> None:
        if self.writer is None:
            return
        try:
            if artifacts:
                import numpy as np
                from PIL import Image

                for path in artifacts:
                    with Image.open(path) as image:
                        pixels = np.asarray(image.convert("RGB"))
                    self.writer.add_image(f"plots/{Path(path).stem}", pixels, self.step, dataformats="HWC")
        finally:
            self.writer.close()
            self.writer = None


class WandbListener:
    """A Weights & Biases run: config, metrics at their optimizer step, PNG curves as images."""

    def __init__(self, output: Path) -> None:
        self.wandb = _require("wandb")
        self.output = output
        self.run: Any = None
        self.step = 0

    def on_start(self, run: RunInfo) -> None:
        wandb = self.wandb
        id_file = self.output / "wandb" / "run-id.txt"
        run_id = os.environ.get("WANDB_RUN_ID") or (_read_id(id_file) if run.start_step > 0 else None)
        resume = "allow" if run_id else None
        run_id = run_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n", encoding="utf-8")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "pyft",
                              name=os.environ.get("WANDB_NAME") or self.output.resolve().name,
                              dir=str(self.output), config=run.config, id=run_id, resume=resume,
                              job_type="train", tags=[run.objective])
        self.step = run.start_step

    def _log(self, record: dict[str, Any]) -> None:
        self.step = record["step"]
        self.run.log(scalars(record), step=self.step)

    def on_step(self, record: dict[str, Any]) -> None:
        self._log(record)

    def on_eval(self, record: dict[str, Any]) -> None:
        self._log(record)

    def on_end(self, artifacts: list[Path]) -> None:
        if self.run is None:
            return
        failed = _failed()
        try:
            images = {f"plots/{Path(p).stem}": self.wandb.Image(str(p)) for p in artifacts}
            if images:
                self.run.log(images, step=self.step)
        finally:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 2e-4}}`` -> ``{"train.lr": 2e-4}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class MlflowListener:
    """An MLflow run: the flattened config as parameters, metrics with their step, PNGs as artifacts."""

    def __init__(self, output: Path) -> None:
        self.mlflow = _require("mlflow")
        self.output = output
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        self.artifact_location: str | None = None
        if self.uri is None:  # the run's own store: a SQLite database (MLflow's file store is deprecated)
            _require("mlflow", "sqlalchemy", "sqlalchemy alembic")
            _require("mlflow", "alembic", "sqlalchemy alembic")
            store = self.output.resolve() / "mlflow"
            self.uri = f"sqlite:///{store / 'mlflow.db'}"
            self.artifact_location = (store / "artifacts").as_uri()
        self.client: Any = None
        self.run_id: str | None = None
        self._pending: list[Any] = []

    def on_start(self, run: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        if self.artifact_location is not None:
            (self.output / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = client = MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "pyft"
        experiment = client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(name, artifact_location=self.artifact_location))
        id_file = self.output / "mlflow" / "run-id.txt"
        previous = _read_id(id_file) if run.start_step > 0 else None
        if previous is not None:
            try:
                client.update_run(previous, status="RUNNING")
                self.run_id = previous
                return  # parameters are immutable in MLflow and were logged when the run started
            except MlflowException:
                pass  # not in this store (another MLFLOW_TRACKING_URI): start a new run
        created = client.create_run(experiment_id, run_name=self.output.resolve().name,
                                    tags={"pyft.objective": run.objective, "pyft.output": str(self.output.resolve())})
        self.run_id = created.info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run_id + "\n", encoding="utf-8")
        params = [Param(key, (value if isinstance(value, str) else json.dumps(value, default=str))[:MAX_PARAM_VAL_LENGTH])
                  for key, value in flatten(run.config).items()]
        client.log_batch(self.run_id, params=params)  # the client splits it into MLflow's batch limits

    def _add(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow names hold letters, digits and ``_-. /:`` only (a parameter group may be named otherwise).
        self._pending += [Metric(re.sub(r"[^\w\-. /:]", "_", key), value, now, record["step"])
                          for key, value in scalars(record).items()]

    def _flush(self) -> None:
        if self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []

    def on_step(self, record: dict[str, Any]) -> None:
        self._add(record)
        if "tokens_per_s" in record:  # log steps: one database write per train.log_every steps
            self._flush()

    def on_eval(self, record: dict[str, Any]) -> None:
        self._add(record)
        self._flush()

    def on_end(self, artifacts: list[Path]) -> None:
        if self.run_id is None:
            return
        failed = _failed()
        try:
            self._flush()
            for path in artifacts:
                self.client.log_artifact(self.run_id, str(path), artifact_path="plots")
        finally:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            self.run_id = None
