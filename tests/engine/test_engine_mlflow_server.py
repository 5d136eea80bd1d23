"""MLflow against a real tracking server: ``mlflow server`` on 127.0.0.1 (a free port, a sqlite backend and an
artifact folder in a temp dir), a run stopped and resumed, read back through ``MlflowClient``; and a server
that dies mid-run."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.config import resolve
from yolotrain.engine.trainer import Trainer

# mlflow is in the dev extra, so `make test` runs these; it is imported by the tests that read the server back,
# not here: every pytest-xdist worker collects this module, one runs it (3 CPU-seconds of import for the others)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (dev extra)"),
]

TRAIN = {"model": "n", "epochs": 2, "imgsz": 64, "batch": 8, "workers": 0, "verbose": False, "amp": "off"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An ``mlflow server`` process on 127.0.0.1, its store and artifacts in ``root``."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
            "--workers", "1",
        ]  # fmt: skip
        self.log = open(root / "server.log", "w")  # noqa: SIM115 - closed in stop()
        # job execution (MLflow's GenAI jobs) starts huey consumer processes that these tests never use: in a suite
        # run they cost 34 CPU-seconds of this 2-core machine
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start in 120 s: " + (root / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group (its workers too)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.log.close()


@pytest.fixture
def server(tmp_path):
    """A server of the test's own: for a test that stops it."""
    srv = Server(tmp_path / "mlflow")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests that leave it running (a start costs tens of seconds here); each of them logs
    to an experiment no other test uses, so what it reads back is its own."""
    srv = Server(tmp_path_factory.mktemp("mlflow_shared"))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_env_run(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "YOLOTRAIN_MLFLOW_PARENT"):
        monkeypatch.delenv(var, raising=False)


class Stop(BaseException):
    """Raised from a callback to stop training, as a kill would, after the epoch-1 checkpoint."""


def _stop_at_first_save(trainer) -> None:
    raise Stop


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_run_stopped_and_resumed_is_one_mlflow_run(tiny_data, tmp_path, shared_server):
    server = shared_server  # runs go to the default experiment "yolotrain", which no other test of the module uses
    # stopped right after epoch 1's checkpoint was written and before its metrics reached MLflow
    # (on_model_save comes before on_fit_epoch_end): the resumed run must fill in epoch 1 and log epoch 2
    cfg = resolve({**TRAIN, "data": str(tiny_data), "project": str(tmp_path / "runs"), "mlflow": server.uri})
    first = Trainer(cfg)
    first.callbacks.add("on_model_save", _stop_at_first_save)
    with pytest.raises(Stop):
        first.fit()
    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    run_id = load_checkpoint(last)["mlflow"]["run_id"]
    assert run_id

    import mlflow

    client = mlflow.MlflowClient(server.uri)
    assert client.get_run(run_id).info.status == "FAILED"  # an error other than preemption
    assert _steps(client, run_id, "train/box_loss") == []

    Trainer(resolve({"resume": str(last)})).fit()

    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # no second run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["imgsz"] == "64"
    assert run.data.params["mlflow"] == server.uri
    assert run.data.tags["yolotrain.run_name"] == "exp"
    assert run.data.tags["yolotrain.run_dir"] == str((tmp_path / "runs" / "exp").resolve())
    for key in ("train/box_loss", "train/cls_loss", "lr/pg0", "metrics/mAP50-95", "system/images_per_s",
                "system/data_wait"):  # fmt: skip
        assert _steps(client, run_id, key) == [1, 2], key  # each epoch once: none missing, none twice
    rows = (tmp_path / "runs" / "exp" / "results.csv").read_text().splitlines()
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "train/box_loss")}
    box_col = rows[0].split(",").index("train/box_loss")
    assert logged == {i + 1: pytest.approx(float(r.split(",")[box_col])) for i, r in enumerate(rows[1:])}
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"args.yaml", "results.csv", "results.png", "weights"} <= artifacts
    assert [f.path for f in client.list_artifacts(run_id, "weights")] == ["weights/best.pt"]
    best = Path(client.download_artifacts(run_id, "weights/best.pt", str(tmp_path / "dl")))
    assert best.read_bytes() == (tmp_path / "runs" / "exp" / "weights" / "best.pt").read_bytes()


def _kill_server_after_epoch_1(server):
    def hook(trainer) -> None:
        if trainer.epoch == 0:
            server.stop()

    return hook


def test_server_stopped_mid_run_warns_once_and_training_goes_on(tiny_data, tmp_path, server, caplog):
    cfg = resolve({**TRAIN, "data": str(tiny_data), "project": str(tmp_path / "runs"), "mlflow": server.uri})
    trainer = Trainer(cfg)
    trainer.callbacks.add("on_fit_epoch_end", _kill_server_after_epoch_1(server))  # after epoch 1 was logged
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        trainer.fit()
    warnings = [r.getMessage() for r in caplog.records if "MLflowLogger" in r.getMessage()]
    assert len(warnings) == 1 and "off for the rest of the run" in warnings[0], warnings
    run = tmp_path / "runs" / "exp"
    assert len((run / "results.csv").read_text().splitlines()) == 3  # header + both epochs: nothing lost locally
    assert (run / "weights" / "best.pt").is_file() and (run / "results.png").is_file()
    assert load_checkpoint(run / "weights" / "last.pt")["mlflow"]["run_id"]


def test_server_down_from_the_start_costs_one_warning(tiny_data, tmp_path, caplog):
    cfg = resolve(
        {
            **TRAIN,
            "epochs": 1,
            "data": str(tiny_data),
            "project": str(tmp_path),
            "mlflow": f"http://127.0.0.1:{_free_port()}",
        }
    )
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        Trainer(cfg).fit()
    warnings = [r.getMessage() for r in caplog.records if "MLflowLogger" in r.getMessage()]
    assert len(warnings) == 1 and "on_train_start failed" in warnings[0], warnings
    assert (tmp_path / "exp" / "weights" / "best.pt").is_file()


def test_tune_logs_one_parent_run_per_study_and_a_child_per_trial(tiny_data, tmp_path, shared_server, monkeypatch):
    from yolotrain.cli import main

    server = shared_server
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tune-study")  # honoured, and apart from the resume test's runs
    args = {**TRAIN, "epochs": 1, "data": tiny_data, "project": tmp_path, "name": "study", "trials": 2,
            "mlflow": server.uri, "plots": False, "channels_last": False}  # fmt: skip
    assert main(["tune", *[f"{k}={v}" for k, v in args.items()]]) == 0
    import mlflow

    client = mlflow.MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("tune-study").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.data.tags["yolotrain.study"] == "study" and parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["yolotrain.run_name"] for c in children) == ["trial_000", "trial_001"]
    best = max(c.data.metrics["metrics/mAP50-95"] for c in children)
    assert parent.data.metrics["best/mAP50-95"] == pytest.approx(best, abs=1e-4)
    assert {"trials.csv", "best.yaml", "space.yaml"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
