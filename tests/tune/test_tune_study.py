"""``yolotrain tune`` end to end on a tiny generated dataset: trials, outputs, continuing, pruning, the
settings check, a killed tuner, two tuners sharing one study, and a distributed trial.

Trials are kept tiny (8 train / 4 val images of 64 px, model n, 1-3 epochs, no plots, fp32).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from yolotrain import Detector
from yolotrain.cli import main
from yolotrain.config import SETTINGS, resolve

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def tune_data(tmp_path_factory) -> Path:
    from yolotrain.data import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("tune") / "shapes", n_train=8, n_val=4, size=64)


def _args(data: Path, project: Path, name: str, **extra) -> list[str]:
    base = {
        "data": data,
        "model": "n",
        "epochs": 2,
        "imgsz": 64,
        "batch": 8,
        "workers": 0,
        "verbose": "false",
        "plots": "false",
        "amp": "off",
        "channels_last": "false",  # the checkpoint digest of NHWC weights is slow on a busy CPU
        "project": project,
        "name": name,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _study(tune_dir: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(tune_dir / "study.journal")))
    return optuna.load_study(study_name=tune_dir.name, storage=storage)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_three_trial_study_end_to_end_then_continued(tune_data, tmp_path, capsys):
    # trials=2, then the same command with trials=3: the study is continued by one trial
    assert main(["tune", *_args(tune_data, tmp_path, "e2e", trials=2, epochs=1, plots="true")]) == 0
    assert "tune: 2 trials (2 complete" in capsys.readouterr().out
    args = _args(tune_data, tmp_path, "e2e", trials=3, epochs=1, plots="true")
    assert main(["tune", *args]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    tune_dir = tmp_path / "e2e"
    study = _study(tune_dir)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # trial 0 is the baseline: the given settings (here the defaults) for every key of the space
    assert all(trials[0].params[k] == pytest.approx(SETTINGS[k].default) for k in trials[0].params)
    assert trials[1].params != trials[0].params and trials[2].params != trials[1].params
    rows = _csv(tune_dir / "trials.csv")
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert [r["epochs_run"] for r in rows] == ["1", "1", "1"]
    for t in trials:  # every trial trained in its own folder with exactly the settings it was given
        recorded = yaml.safe_load((tune_dir / "trials" / f"trial_{t.number:03d}" / "args.yaml").read_text())
        assert all(recorded[k] == pytest.approx(v) for k, v in t.params.items())
        assert recorded["epochs"] == 1 and recorded["imgsz"] == 64
        assert recorded["optimizer"] == "SGD"  # lr0 is tuned: optimizer=auto would ignore it
    best = max(trials, key=lambda t: t.value)
    cfg = resolve({"cfg": tune_dir / "best.yaml"})  # usable as cfg=best.yaml
    assert all(getattr(cfg, k) == pytest.approx(v) for k, v in best.params.items())
    assert cfg.data == str(tune_data) and cfg.imgsz == 64
    assert "project" not in yaml.safe_load((tune_dir / "best.yaml").read_text())
    assert sorted(p.name for p in (tune_dir / "plots").glob("*.png")) == [
        "intermediate_values.png",
        "optimization_history.png",
        "parallel_coordinate.png",
        "param_importances.png",
    ]
    assert summary.startswith("tune: 3 trials (3 complete, 0 pruned, 0 failed)")
    assert f"best trial {best.number} mAP50-95 {best.value:.4f}" in summary and "epochs run 3 of 3" in summary

    # the same command again: the study is complete, nothing new runs
    assert main(["tune", *args]) == 0
    assert len(_study(tune_dir).get_trials()) == 3
    assert "tune: 3 trials (3 complete" in capsys.readouterr().out
    # other training settings for the same tune folder: refused in one line, naming the key
    assert main(["tune", *_args(tune_data, tmp_path, "e2e", trials=4, epochs=2, plots="true")]) == 2
    assert "was started with epochs=1, not epochs=2" in capsys.readouterr().err


def _fake_metric(trainer):
    """Make trial 2's validation bad and every other trial's good, so the pruner's choice is known."""
    if trainer.metrics is not None:
        bad = Path(trainer.save_dir).name == "trial_002"
        trainer.metrics = dataclasses.replace(trainer.metrics, map50_95=0.01 if bad else 0.5 + 0.1 * trainer.epoch)


@pytest.mark.slow
def test_pruner_stops_a_trial_whose_metric_is_bad(tune_data, tmp_path):
    det = Detector("n")
    det.add_callback("on_fit_epoch_end", _fake_metric)  # runs before the tuner's report
    settings = dict(arg.split("=", 1) for arg in _args(tune_data, tmp_path, "prune"))
    result = det.tune(**settings, trials=3, pruner="median", prune_warmup=0)
    trials = _study(tmp_path / "prune").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[0].intermediate_values == {1: 0.5, 2: pytest.approx(0.6)}
    assert trials[2].intermediate_values == {1: 0.01}  # stopped right after its first validated epoch
    assert trials[2].user_attrs["epochs_run"] == 1
    rows = _csv(tmp_path / "prune" / "trials" / "trial_002" / "results.csv")
    assert len(rows) == 1  # the run itself ended, not just the bookkeeping
    assert (result.complete, result.pruned, result.epochs_run, result.epochs_full) == (2, 1, 5, 6)
    assert "epochs run 5 of 6 (17% saved by pruning)" in result.summary
    assert result.best_value == pytest.approx(0.6)


@pytest.mark.slow
def test_trial_whose_settings_do_not_reach_the_trainer_fails_loudly(tune_data, tmp_path, capsys):
    # a callback replaces lr0 before set-up, as a launcher that drops the trial's settings would
    cb = tmp_path / "lose_setting.py"
    cb.write_text("def on_pretrain_routine_start(trainer):\n    trainer.cfg = trainer.cfg.replace(lr0=0.0123)\n")
    args = _args(tune_data, tmp_path, "mismatch", trials=2, callbacks=f"{cb}:on_pretrain_routine_start")
    assert main(["tune", *args]) == 2
    err = capsys.readouterr().err
    assert "error: trial 0: setting 'lr0': tune asked for 0.01 but the run trained with 0.0123" in err
    trials = _study(tmp_path / "mismatch").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL]  # the study stops: no second trial
    assert "settings not applied" in trials[0].user_attrs["error"]
    assert not (tmp_path / "mismatch" / "trials" / "trial_000" / "results.csv").exists()  # no epoch trained
    assert _csv(tmp_path / "mismatch" / "trials.csv")[0]["state"] == "FAIL"


def _popen(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "yolotrain", "tune", *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


@pytest.mark.slow
def test_killed_tuner_resumes_its_trial_when_run_again(tune_data, tmp_path, caplog):
    args = _args(tune_data, tmp_path, "kill", trials=1, epochs=2)
    proc = _popen(args, tmp_path / "first.log")
    last = tmp_path / "kill" / "trials" / "trial_000" / "weights" / "last.pt"
    deadline = time.time() + 180
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert last.exists(), (tmp_path / "first.log").read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    proc.wait(timeout=60)
    assert _study(tmp_path / "kill").get_trials()[0].state == TrialState.RUNNING  # left behind

    assert main(["tune", *args]) == 0
    trials = _study(tmp_path / "kill").get_trials()
    assert len(trials) == 1 and trials[0].state == TrialState.COMPLETE
    assert trials[0].user_attrs["resumed"] == 1 and trials[0].user_attrs["epochs_run"] == 2
    assert "trial 0 was left unfinished by a stopped tuner; resuming" in caplog.text
    epochs = [int(r["epoch"]) for r in _csv(tmp_path / "kill" / "trials" / "trial_000" / "results.csv")]
    assert epochs == [1, 2]  # continued from its checkpoint, not trained again from the start


@pytest.mark.slow
def test_two_tuner_processes_share_one_study(tune_data, tmp_path):
    args = _args(tune_data, tmp_path, "shared", trials=3, epochs=1)
    procs = [_popen(args, tmp_path / f"p{i}.log") for i in range(2)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"p{i}.log").read_text()[-3000:]
    trials = _study(tmp_path / "shared").get_trials()
    assert [t.number for t in trials] == [0, 1, 2]  # exactly trials=3 between them, no duplicate
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {p.pid for p in procs}  # both did part of the work
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    folders = sorted(p.name for p in (tmp_path / "shared" / "trials").iterdir() if p.is_dir())
    assert folders == ["trial_000", "trial_001", "trial_002"]


@pytest.mark.slow
def test_a_trial_may_itself_be_distributed(tune_data, tmp_path, capsys):
    args = _args(tune_data, tmp_path, "ddp", trials=1, epochs=1, nproc=2)
    assert main(["tune", *args]) == 0
    (trial,) = _study(tmp_path / "ddp").get_trials()
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["epochs_run"] == 1 and list(trial.intermediate_values) == [1]  # from the rank-0 worker
    recorded = yaml.safe_load((tmp_path / "ddp" / "trials" / "trial_000" / "args.yaml").read_text())
    assert recorded["nproc"] == 0 and any("yolotrain.tune.trial:worker_" in c for c in recorded["callbacks"])
    assert "tune: 1 trials (1 complete" in capsys.readouterr().out
