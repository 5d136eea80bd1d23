"""The command `yolotrain tune` prints for optuna-dashboard opens our study: the dashboard's own storage loader
(what its CLI runs on the command's argument) reads it, and its web API lists the study and its trials
(called as a WSGI app: no server, no browser)."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from yolotrain.cli import main
from yolotrain.tune.study import dashboard_command, make_pruner, open_study

# optuna-dashboard is in the dev extra, so `make test` runs these; it is imported where a test asks the dashboard,
# not at collection: every pytest-xdist worker collects this module and only one runs it (3.6 CPU-seconds of import)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("optuna_dashboard") is None, reason="optuna-dashboard is not installed (dev extra)"
)


def _get(app, path: str) -> dict:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []

    def start_response(code: str, headers: list, exc_info=None):
        status.append(code)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    assert status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def _dashboard_study(command: str, name: str) -> dict:
    """What ``optuna-dashboard ARG`` shows for study ``name`` (/api/studies, then its detail)."""
    argv = shlex.split(command)
    assert argv[0] == "optuna-dashboard" and len(argv) == 2, command
    import optuna_dashboard
    from optuna_dashboard._storage_url import get_storage  # the CLI's loader

    app = optuna_dashboard.wsgi(get_storage(argv[1]))  # the loader the dashboard's CLI runs on ARG
    ids = {s["study_name"]: s["study_id"] for s in _get(app, "/api/studies")["study_summaries"]}
    return _get(app, f"/api/studies/{ids[name]}")


@pytest.fixture(scope="module")
def tune_data(tmp_path_factory) -> Path:
    from yolotrain.data import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("dash") / "shapes", n_train=8, n_val=4, size=64)


@pytest.mark.slow
def test_printed_command_opens_the_journal_study_in_the_dashboard(tune_data, tmp_path, capsys):
    args = {
        "data": tune_data, "model": "n", "epochs": 1, "imgsz": 64, "batch": 8, "workers": 0, "verbose": "false",
        "plots": "false", "amp": "off", "channels_last": "false", "project": tmp_path, "name": "dash", "trials": 2,
    }  # fmt: skip
    assert main(["tune", *[f"{k}={v}" for k, v in args.items()]]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    command = summary.split("; dashboard: ", 1)[1]
    assert command == f"optuna-dashboard {shlex.quote(str((tmp_path / 'dash' / 'study.journal').resolve()))}"
    shown = _dashboard_study(command, "dash")
    assert shown["directions"] == ["maximize"]
    assert [t["state"] for t in shown["trials"]] == ["Complete", "Complete"]
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "dash" / "study.journal")))
    stored = optuna.load_study(study_name="dash", storage=journal)
    assert [t["values"][0] for t in shown["best_trials"]] == pytest.approx([stored.best_value])


@pytest.mark.slow
def test_printed_command_for_rdb_storage_opens_it(tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    about = {"settings": {"epochs": 1}, "space": {}}
    study = open_study(tmp_path, url, "rdb-study", make_pruner("none", 0), 2, about)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.25))
    command = dashboard_command(url, tmp_path)
    assert command == f"optuna-dashboard {url}"
    shown = _dashboard_study(command, "rdb-study")
    assert [t["values"][0] for t in shown["best_trials"]] == pytest.approx([0.25])


def test_command_names_an_absolute_quoted_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative project: the command must work from any folder
    odd = Path("my runs") / "tune"
    journal = tmp_path / "my runs" / "tune" / "study.journal"
    assert dashboard_command(None, odd) == f"optuna-dashboard '{journal}'"
    assert dashboard_command("my runs/s.journal", odd) == f"optuna-dashboard '{tmp_path / 'my runs' / 's.journal'}'"
