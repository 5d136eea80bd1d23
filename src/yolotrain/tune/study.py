"""The Optuna study behind ``yolotrain tune``: storage, sampler, pruner, and which trial to run next.

Storage is an embedded journal file in the tune folder unless ``storage=`` names another file or an RDB URL
(``sqlite:///tune.db``, ``postgresql://user:pw@host/db``): several tuner processes, on one machine or many,
then share the study through Optuna's own storage. Which process runs which trial is decided here:

* a new trial is asked under a file lock in the tune folder, so processes sharing it never start more than
  ``trials`` trials between them;
* every running trial is held by its process through an ``flock`` on ``trials/trial_NNN.lock``. The
  operating system drops the lock when the process dies (Ctrl-C, ``kill -9``, a crash), so a trial still
  RUNNING in the storage whose lock is free was abandoned: the next tuner on this machine takes it over and
  resumes its run folder, under the same trial number. It is never lost silently.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")
MEDIAN_STARTUP_TRIALS = 2  # complete trials the median pruner needs before it compares anything


class FileLock:
    """An exclusive ``flock`` on a file, released by the OS when its process dies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def make_storage(spec: str | None, tune_dir: Path) -> optuna.storages.BaseStorage | str:
    """The storage ``storage=`` names: an RDB URL as it is, else a journal file (default in ``tune_dir``)."""
    if spec and "://" in spec:
        return spec  # sqlite:///, postgresql://, mysql://: Optuna's RDB storage
    path = Path(spec) if spec else tune_dir / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: PLC0415 - the journal storage loads only for file storage

    return JournalStorage(JournalFileBackend(str(path)))


def dashboard_command(spec: str | None, tune_dir: Path) -> str:
    """The shell command that opens the study's storage in ``optuna-dashboard`` (``pip install optuna-dashboard``).

    The dashboard reads an RDB URL as it is and a journal file by its path, the same storage the tuner writes.
    """
    target = spec if spec and "://" in spec else str((Path(spec) if spec else tune_dir / "study.journal").resolve())
    return f"optuna-dashboard {shlex.quote(target)}"


def make_pruner(name: str, warmup: int) -> optuna.pruners.BasePruner:
    """The pruner for ``pruner=``; steps are 1-based epochs, none is pruned at or before epoch ``warmup``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup + 1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup + 1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(trials: int) -> optuna.samplers.BaseSampler:
    """TPE after a few random trials; ``constant_liar`` keeps parallel tuners from proposing the same point.

    Not seeded: two tuner processes seeded alike would propose identical trials.
    """
    return optuna.samplers.TPESampler(n_startup_trials=max(2, min(10, trials // 4)), constant_liar=True)


def open_study(
    tune_dir: Path, storage_spec: str | None, name: str, pruner: optuna.pruners.BasePruner, trials: int, about: dict
) -> optuna.Study:
    """Create or continue the study ``name``; refuse to continue one started with other settings.

    Args:
        about: What the study is about (training settings and space, JSON-able); stored with a new study
            and compared with a continued one.

    Raises:
        ConfigError: When the stored study was started with other settings or another space.
    """
    about = json.loads(json.dumps(about))  # the form it has after a round trip through the storage
    with FileLock(tune_dir / "tune.lock"):
        study = optuna.create_study(
            storage=make_storage(storage_spec, tune_dir),
            study_name=name,
            direction="maximize",
            sampler=make_sampler(trials),
            pruner=pruner,
            load_if_exists=True,
        )
        saved = study.user_attrs.get("about")
        if saved is None:
            study.set_user_attr("about", about)
        elif saved != about:
            raise ConfigError(f"tune folder '{tune_dir}' (study '{name}') {_difference(saved, about)}")
    return study


def _difference(saved: dict, now: dict) -> str:
    hint = "; re-run with the same settings to continue it, or give name= for a new study"
    if saved.get("space") != now.get("space"):
        return "was started with another search space" + hint
    old, new = saved.get("settings", {}), now.get("settings", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            was = f"{key}={old[key]}" if key in old else f"no {key}="
            given = f"{key}={new[key]}" if key in new else f"no {key}="
            return f"was started with {was}, not {given}" + hint
    return "was started with other settings" + hint


@dataclass
class Claim:
    """A trial this process runs: a new one, or one taken over from a dead process (``resumed``)."""

    trial: optuna.trial.Trial
    lock: FileLock
    resumed: bool


def trials_dir(tune_dir: Path, study_name: str) -> Path:
    """Where a study's trial folders go: ``trials/`` for the folder's own study (named after the folder),
    ``trials/study-<name>/`` for any other, so two studies in one folder never share a trial folder."""
    if study_name == tune_dir.name:
        return tune_dir / "trials"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", study_name)
    return tune_dir / "trials" / f"study-{safe}"


def trial_lock(tune_dir: Path, study_name: str, number: int) -> FileLock:
    return FileLock(trials_dir(tune_dir, study_name) / f"trial_{number:03d}.lock")


def next_trial(study: optuna.Study, tune_dir: Path, trials: int) -> Claim | None:
    """The next trial for this process: an abandoned one of this machine first, else a new one.

    Returns:
        None when the study has ``trials`` trials and none is abandoned.
    """
    with FileLock(tune_dir / "tune.lock"):
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get("host") != socket.gethostname():
                continue  # another machine's trial (shared RDB storage): its own tuner resumes it
            lock = trial_lock(tune_dir, study.study_name, frozen.number)
            if not lock.acquire(blocking=False):
                continue  # a live process runs it
            current = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if frozen.number not in {t.number for t in current}:  # it finished while we looked
                lock.release()
                continue
            trial = optuna.trial.Trial(study, frozen._trial_id)  # the same trial, not a copy: numbers stay
            trial.set_user_attr("pid", os.getpid())
            return Claim(trial, lock, resumed=True)
        started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        if len(started) >= trials:
            return None
        trial = study.ask()
        lock = trial_lock(tune_dir, study.study_name, trial.number)
        lock.acquire()
        trial.set_user_attr("host", socket.gethostname())  # only now: the lock is held before anyone looks
        trial.set_user_attr("pid", os.getpid())
        return Claim(trial, lock, resumed=False)


def enqueue_baseline(study: optuna.Study, tune_dir: Path, params: dict[str, Any]) -> None:
    """Make the given settings the study's first trial (once per study), to compare every trial with."""
    with FileLock(tune_dir / "tune.lock"):
        if study.user_attrs.get("baseline_enqueued"):
            return
        study.enqueue_trial(params, user_attrs={"baseline": True})
        study.set_user_attr("baseline_enqueued", True)
