"""MLflow client helpers shared by the training logger and ``yolotrain tune`` (no torch here: tune imports it).

``make_client`` shortens MLflow's HTTP retries unless the user set them (by default MLflow retries a request
7 times with growing pauses, minutes for a server that is down). A tune study gets one parent run
(:func:`study_parent_run`); the trials' runs become its children through :data:`PARENT_ENV`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("yolotrain")
# a tune study's parent run for the trials started from this process: JSON {"run_id", "experiment_id"}
PARENT_ENV = "YOLOTRAIN_MLFLOW_PARENT"
EXPERIMENT = "yolotrain"  # the experiment runs go to unless MLFLOW_EXPERIMENT_NAME names another
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PARAMS_PER_CALL = 100  # MLflow's limit of params in one log_batch
PARAM_CHARS = 6000  # MLflow's limit on a param value's length


def tracking_uri(setting: Any) -> str | None:
    """The tracking URI ``mlflow=`` names: None for ``true`` (MLflow's environment or default)."""
    return None if setting is True else str(setting)


def make_client(setting: Any) -> Any:
    """An ``MlflowClient`` for ``mlflow=``, with short HTTP retries unless the user chose them.

    Raises:
        ImportError: With the install command, when MLflow is not installed.
    """
    try:
        mlflow = importlib.import_module("mlflow")
    except ImportError:
        raise ImportError("mlflow= needs MLflow: pip install 'yolotrain[mlflow]'") from None
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return mlflow.MlflowClient(tracking_uri=tracking_uri(setting))


def experiment_id(client: Any, name: str | None = None) -> str:
    """The id of experiment ``name`` (default ``MLFLOW_EXPERIMENT_NAME`` or :data:`EXPERIMENT`), created if new."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` as strings, in batches MLflow accepts."""
    entities = importlib.import_module("mlflow.entities")
    items = [entities.Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[i : i + PARAMS_PER_CALL])


def log_metrics(client: Any, run_id: str, scalars: dict[str, float], step: int) -> None:
    """Log one step's scalars in one request."""
    entities = importlib.import_module("mlflow.entities")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[entities.Metric(k, float(v), now, int(step)) for k, v in scalars.items()])


def study_parent_run(setting: Any, study: Any, tune_dir: Path, about: dict[str, Any]) -> dict[str, str] | None:
    """The parent run of a tune study (created once, its id kept in the study); None when MLflow fails.

    Returns:
        ``{"run_id", "experiment_id"}`` to put in :data:`PARENT_ENV` for the trials.
    """
    try:
        client = make_client(setting)
        saved = study.user_attrs.get("mlflow_parent")
        if saved:
            client.update_run(saved["run_id"], status="RUNNING")
            return dict(saved)
        exp = experiment_id(client)
        tags = {"yolotrain.study": study.study_name, "yolotrain.run_dir": str(Path(tune_dir).resolve())}
        run = client.create_run(exp, run_name=f"tune {study.study_name}", tags=tags)
        log_params(client, run.info.run_id, {**about["settings"], "space": json.dumps(about["space"])})
        parent = {"run_id": run.info.run_id, "experiment_id": exp}
        study.set_user_attr("mlflow_parent", parent)
        LOGGER.info(f"mlflow: study run {run.info.run_id} at {client.tracking_uri}; each trial is a child run")
        return parent
    except Exception as e:  # tracking must never stop tuning
        LOGGER.warning(f"mlflow: no study run ({type(e).__name__}: {e}); tuning goes on without MLflow")
        return None


def end_study_parent_run(setting: Any, parent: dict[str, str], tune_dir: Path, best: dict[str, Any]) -> None:
    """Log the study's best result and its outputs (trials.csv, best.yaml) to the parent run and close it."""
    try:
        client = make_client(setting)
        if best:
            log_metrics(client, parent["run_id"], {"best/mAP50-95": best["value"]}, best["trial"])
        for name in ("trials.csv", "best.yaml", "space.yaml"):
            if (Path(tune_dir) / name).is_file():
                client.log_artifact(parent["run_id"], str(Path(tune_dir) / name))
        client.set_terminated(parent["run_id"], "FINISHED")
    except Exception as e:
        LOGGER.warning(f"mlflow: could not close the study run ({type(e).__name__}: {e})")


__all__ = [
    "PARENT_ENV",
    "end_study_parent_run",
    "experiment_id",
    "log_metrics",
    "log_params",
    "make_client",
    "study_parent_run",
    "tracking_uri",
]
