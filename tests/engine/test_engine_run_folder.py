"""Run folders are claimed atomically (utils/files.py, engine/build.py): runs started at once never share one;
a fresh run in a used folder (exist_ok=true) starts a fresh results.csv and keeps the old one aside; tune
trials of different studies in one folder never share a trial folder (tune/study.py)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from yolotrain.cli import main
from yolotrain.config import resolve
from yolotrain.engine.build import run_dir
from yolotrain.tune.study import trial_lock, trials_dir
from yolotrain.utils.files import claim_dir, set_aside

SRC = Path(__file__).resolve().parents[2] / "src"


def test_runs_claimed_at_once_by_threads_get_one_folder_each(tmp_path):
    n = 16
    start, got = threading.Barrier(n), []

    def claim():
        start.wait()  # all threads ask for the same name at the same moment
        got.append(claim_dir(tmp_path / "exp"))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == sorted(["exp", *(f"exp{i}" for i in range(2, n + 1))])


def test_a_folder_another_run_creates_after_the_look_is_not_shared(tmp_path, monkeypatch):
    """The race, made certain: this run looks, sees no ``exp``, and another run creates it before this one
    does. Creating the folder is the claim, so this run must move on to ``exp2``."""
    (tmp_path / "exp").mkdir()  # the other run's folder
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p, *a, **k: p.name != "exp" and real_exists(p, *a, **k))
    assert claim_dir(tmp_path / "exp") == tmp_path / "exp2"


# claim_dir, the claim run_dir makes (test_run_dir_claims_the_folder): it needs no torch, so the four processes
# start in a fraction of a second each; they sleep to the same instant, then race for the same name
CLAIM = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from yolotrain.utils.files import claim_dir
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
    print(claim_dir(Path(sys.argv[1]) / "exp"))
    """
)


@pytest.mark.slow
def test_processes_started_together_get_one_folder_each(tmp_path):
    import time

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    at = str(time.time() + 5)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), at], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]  # fmt: skip
    folders = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert len(set(folders)) == 4 and all(Path(f).is_dir() for f in folders), folders


def test_run_dir_claims_the_folder(tmp_path):
    cfg = resolve({"project": str(tmp_path), "name": "exp"})
    first, second = run_dir(cfg, create=False), run_dir(cfg, create=False)
    assert first.is_dir() and second.is_dir() and (first.name, second.name) == ("exp", "exp2")
    same = resolve({"project": str(tmp_path), "name": "exp", "exist_ok": True})
    assert run_dir(same) == first and (first / "weights").is_dir()


def test_set_aside_picks_the_first_free_name(tmp_path):
    (tmp_path / "results.csv").write_text("a\n")
    (tmp_path / "results.old1.csv").write_text("older\n")
    assert set_aside(tmp_path / "results.csv") == tmp_path / "results.old2.csv"
    assert not (tmp_path / "results.csv").exists() and (tmp_path / "results.old2.csv").read_text() == "a\n"
    assert set_aside(tmp_path / "results.csv") is None


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_fresh_run_with_exist_ok_starts_a_fresh_results_csv(tiny_data, tmp_path):
    args = ["train", f"data={tiny_data}", "model=n", "imgsz=32", "batch=8", "workers=0", "val=false",
            f"project={tmp_path}", "name=exp", "exist_ok=true", "verbose=false", "plots=false"]  # fmt: skip
    assert main([*args, "epochs=2"]) == 0
    assert main([*args, "epochs=1"]) == 0
    run = tmp_path / "exp"
    assert [r["epoch"] for r in _rows(run / "results.csv")] == ["1"]  # the new run's rows only, one header
    assert [r["epoch"] for r in _rows(run / "results.old1.csv")] == ["1", "2"]  # the earlier run's, kept


def test_refused_run_leaves_no_folder(tmp_path, capsys):
    assert main(["train", f"data={tmp_path / 'missing.yaml'}", f"project={tmp_path}", "name=exp"]) != 0
    assert not (tmp_path / "exp").exists()


def test_trial_folders_are_per_study(tmp_path):
    tune = tmp_path / "exp"
    assert trials_dir(tune, "exp") == tune / "trials"  # the folder's own study: the documented layout
    assert trials_dir(tune, "B") == tune / "trials" / "study-B"
    assert trials_dir(tune, "../x y") == tune / "trials" / "study-.._x_y"  # stays inside the folder
    assert trial_lock(tune, "A", 0).path == tune / "trials" / "study-A" / "trial_000.lock"
