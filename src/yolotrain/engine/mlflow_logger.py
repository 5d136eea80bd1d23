"""MLflow tracking (``mlflow=true`` or ``mlflow=http://host:5000``; ``pip install 'yolotrain[mlflow]'``).

Run it with ``yolotrain train data=data.yaml mlflow=http://127.0.0.1:5000``; ``mlflow=true`` uses
``MLFLOW_TRACKING_URI`` (or MLflow's own default). What goes where:

* params: every setting of the run (``args.yaml``), once, when the run starts;
* metrics, step = the 1-based epoch: losses, learning rates, P/R/mAP of validated epochs, images/s and
  the data-wait share (``system/...``);
* artifacts at the end: ``args.yaml``, ``results.csv``, the plots, and ``weights/best.pt``;
* tags ``yolotrain.run_name`` / ``yolotrain.run_dir`` (the run folder), and the MLflow run id is kept in the
  run's checkpoints (key ``mlflow``), so ``resume=`` continues the same MLflow run instead of starting one.
  On resume, epochs the checkpoint holds but MLflow lacks are logged, and epochs MLflow already has are not
  logged twice.

Only rank 0 talks to the server. ``yolotrain tune ... mlflow=...`` opens one parent run for the study (its id
kept in the study) and every trial is a child run of it (:func:`study_parent_run`, :data:`PARENT_ENV`).

A server that is down or refuses costs one warning and turns the logger off; training and the run folder
are unaffected. MLflow retries a request 7 times with growing pauses by default (minutes for a server that
is down); unless the user set them, the HTTP retry settings are shortened (:mod:`~yolotrain.engine.mlflow_client`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from yolotrain.engine.loggers import LoggerCallback, _epoch_scalars, _numeric, _run_files
from yolotrain.engine.mlflow_client import PARENT_ENV, experiment_id, log_metrics, log_params, make_client
from yolotrain.errors import Preempted

LOGGER = logging.getLogger("yolotrain")


class MlflowRunRecord:
    """The MLflow run a training run logs to, as checkpoint key ``mlflow`` (a part of the checkpoint).

    It is one of the checkpoint's parts only when ``mlflow`` is on, so checkpoints of runs without MLflow
    do not change.
    """

    KEYS = ("mlflow",)

    def __init__(self) -> None:
        self.run_id = ""
        self.experiment_id = ""

    def state_dict(self) -> dict[str, Any]:
        return {"mlflow": {"run_id": self.run_id, "experiment_id": self.experiment_id}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rec = state["mlflow"] or {}
        self.run_id, self.experiment_id = str(rec.get("run_id") or ""), str(rec.get("experiment_id") or "")


def _row_scalars(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(epoch, scalars) of an older results row, named as :func:`_epoch_scalars` names the latest's."""
    row = dict(row)
    epoch = int(row.pop("epoch"))
    return epoch, {(k if "/" in k else f"system/{k}"): v for k, v in _numeric(row).items()}


class MLflowLogger(LoggerCallback):
    """Logs a training run to MLflow when its ``mlflow`` setting is on (inert otherwise: nothing is imported).

    Reads ``trainer.cfg.mlflow`` at ``on_train_start`` (on resume that is the checkpoint's setting) and the
    run's :class:`MlflowRunRecord` at ``trainer.run.mlflow``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.run_id = ""
        self.logged_steps: set[int] = set()

    def on_train_start(self, trainer: Any) -> None:
        cfg = trainer.cfg
        if not getattr(cfg, "mlflow", False):
            return
        record = getattr(trainer.run, "mlflow", None)
        self.client = client = make_client(cfg.mlflow)
        save_dir = Path(trainer.save_dir)
        if record is not None and record.run_id:  # resumed: the same MLflow run continues
            self.run_id = record.run_id
            client.update_run(self.run_id, status="RUNNING")
            self.logged_steps = {m.step for m in client.get_metric_history(self.run_id, "train/box_loss")}
            for row in trainer.history:  # epochs the checkpoint has and the server missed
                epoch, scalars = _row_scalars(row)
                if epoch not in self.logged_steps:
                    log_metrics(client, self.run_id, scalars, epoch)
                    self.logged_steps.add(epoch)
            LOGGER.info(f"mlflow: continuing run {self.run_id} at {client.tracking_uri}")
            return
        parent = json.loads(os.environ.get(PARENT_ENV) or "{}")
        exp = parent.get("experiment_id") or experiment_id(client)
        tags = {"yolotrain.run_name": save_dir.name, "yolotrain.run_dir": str(save_dir.resolve())}
        if parent.get("run_id"):
            tags["mlflow.parentRunId"] = parent["run_id"]
        run = client.create_run(exp, run_name=save_dir.name, tags=tags)
        self.run_id = run.info.run_id
        if record is not None:  # saved with every checkpoint from now on
            record.run_id, record.experiment_id = self.run_id, exp
        log_params(client, self.run_id, cfg.to_dict())
        LOGGER.info(f"mlflow: run {self.run_id} (experiment {exp}) at {client.tracking_uri}")

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if self.client is None:
            return
        epoch, scalars = _epoch_scalars(trainer)
        if epoch in self.logged_steps:  # redone after a resume from an older checkpoint: keep one value per step
            return
        log_metrics(self.client, self.run_id, scalars, epoch)
        self.logged_steps.add(epoch)

    def on_train_end(self, trainer: Any) -> None:
        if self.client is None:
            return
        for f in _run_files(Path(trainer.save_dir)):
            self.client.log_artifact(self.run_id, str(f), "weights" if f.suffix == ".pt" else None)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.client = None

    def on_exception(self, trainer: Any) -> None:
        if self.client is None:
            return
        # a preempted run resumes later: KILLED, not FAILED (resume sets it RUNNING again)
        stopped = isinstance(sys.exc_info()[1], (Preempted, KeyboardInterrupt))  # called inside the except
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")
        self.client = None


__all__ = ["MLflowLogger", "MlflowRunRecord"]
