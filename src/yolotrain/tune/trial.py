"""One trial of ``yolotrain tune``: an ordinary training run in its own folder, watched through callbacks.

The trial's settings go through :func:`yolotrain.config.resolve` like any run's. Callbacks then

* check, once the run has written ``args.yaml``, that it trains with what the sampler proposed
  (``on_train_start``; a mismatch stops the run before any training);
* report mAP50-95 of every validated epoch to Optuna (``on_val_end`` + ``on_fit_epoch_end``) and end the
  run (``trainer.stop``) when the pruner says it is hopeless.

In one process they run as methods of a :class:`TrialReporter`; a distributed trial (``nproc=2``,
``device=0,1``) is started with the engine's ``launch``, and its rank-0 worker rebuilds the reporter from
environment variables through the module-level ``worker_*`` functions (workers import callbacks by name).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from yolotrain.config import Config
from yolotrain.tune.space import SettingsNotApplied, check_applied
from yolotrain.tune.study import make_pruner, make_storage

LOGGER = logging.getLogger("yolotrain")
ENV = "YOLOTRAIN_TUNE_TRIAL"  # JSON: storage, study, trial_id, pruner, warmup, proposed (distributed trials)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class TrialReporter:
    """The callbacks of one trial (rank 0 only acts).

    Args:
        trial: The Optuna trial (``report``/``should_prune`` go to its study's storage).
        proposed: The settings the trial was given (sampled and shared), to check against its ``args.yaml``.
    """

    def __init__(self, trial: optuna.trial.Trial, proposed: dict[str, Any]):
        self.trial = trial
        self.proposed = proposed
        self.validated = False

    def on_train_start(self, trainer) -> None:
        if is_rank0():
            check_applied(self.proposed, Path(trainer.save_dir) / "args.yaml")

    def on_val_end(self, trainer) -> None:
        self.validated = True  # trainer.metrics holds this validation once the epoch ends

    def on_fit_epoch_end(self, trainer) -> None:
        validated, self.validated = self.validated, False
        if not is_rank0():
            return  # the stop set on rank 0 reaches every rank (the trainer agrees on it)
        epoch = trainer.epoch + 1
        self.trial.set_user_attr("epochs_run", epoch)
        if not validated or trainer.metrics is None:
            return
        self.trial.report(float(trainer.metrics.map50_95), epoch)
        if self.trial.should_prune():
            LOGGER.info(f"tune: trial {self.trial.number} pruned after epoch {epoch}")
            self.trial.set_user_attr("pruned_at", epoch)
            trainer.stop = True

    def callbacks(self) -> list[tuple[str, Callable[[Any], None]]]:
        return [
            ("on_train_start", self.on_train_start),
            ("on_val_end", self.on_val_end),
            ("on_fit_epoch_end", self.on_fit_epoch_end),
        ]


_WORKER_REPORTER: TrialReporter | None = None


def _worker_reporter() -> TrialReporter:
    """The reporter of a distributed trial's worker, built from :data:`ENV` on first use."""
    global _WORKER_REPORTER
    if _WORKER_REPORTER is None:
        spec = json.loads(os.environ[ENV])
        study = optuna.load_study(
            study_name=spec["study"],
            storage=make_storage(spec["storage"], Path(spec["storage"]).parent),
            pruner=make_pruner(spec["pruner"], spec["warmup"]),
        )
        _WORKER_REPORTER = TrialReporter(optuna.trial.Trial(study, spec["trial_id"]), spec["proposed"])
    return _WORKER_REPORTER


def worker_on_train_start(trainer) -> None:
    """``on_train_start`` of a distributed trial's workers."""
    if is_rank0():
        _worker_reporter().on_train_start(trainer)


def worker_on_val_end(trainer) -> None:
    """``on_val_end`` of a distributed trial's workers."""
    if is_rank0():
        _worker_reporter().on_val_end(trainer)


def worker_on_fit_epoch_end(trainer) -> None:
    """``on_fit_epoch_end`` of a distributed trial's workers."""
    if is_rank0():
        _worker_reporter().on_fit_epoch_end(trainer)


WORKER_CALLBACKS = (
    ("on_train_start", worker_on_train_start),
    ("on_val_end", worker_on_val_end),
    ("on_fit_epoch_end", worker_on_fit_epoch_end),
)


def train_trial(
    cfg: Config,
    trial: optuna.trial.Trial,
    proposed: dict[str, Any],
    extra_callbacks: list[tuple[str, Callable[[Any], None]]],
    worker_env: dict[str, Any],
) -> None:
    """Train the trial's run; outcomes (reports, pruning, epochs run) land in the study's storage.

    Args:
        cfg: The trial's resolved settings (its run folder, ``resume`` when it continues a dead trial).
        extra_callbacks: The user's callbacks (``Detector.add_callback``), run before the tuner's.
        worker_env: Storage, study and pruner of the study, for the workers of a distributed trial.

    Raises:
        SettingsNotApplied: When the run did not train with the proposed settings.
        Whatever training raises (Preempted on Ctrl-C/SIGTERM, TrainingError...).
    """
    from yolotrain.engine.callbacks import Callbacks  # noqa: PLC0415 - torch and the engine load only when a trial runs
    from yolotrain.engine.launch import launch, processes_wanted  # noqa: PLC0415 - torch and the engine load only when a trial runs
    from yolotrain.engine.trainer import Trainer  # noqa: PLC0415 - torch and the engine load only when a trial runs

    n = processes_wanted(cfg)
    if n > 1:
        run_dir = Path(cfg.project) / cfg.name
        os.environ[ENV] = json.dumps({**worker_env, "trial_id": trial._trial_id, "proposed": proposed})
        try:
            launch(cfg, n, [*extra_callbacks, *WORKER_CALLBACKS])
        except Exception:
            if (run_dir / "args.yaml").is_file():
                check_applied(proposed, run_dir / "args.yaml")  # the precise reason when the workers refused
            raise
        finally:
            os.environ.pop(ENV, None)
        check_applied(proposed, run_dir / "args.yaml")  # also here: never trust a silent worker
        return
    callbacks = Callbacks()
    for event, fn in [*extra_callbacks, *TrialReporter(trial, proposed).callbacks()]:
        callbacks.add(event, fn)
    trainer = Trainer(cfg, callbacks=callbacks)
    trainer.fit()
    check_applied(proposed, Path(trainer.save_dir) / "args.yaml")  # again at the end: what the run kept


__all__ = ["SettingsNotApplied", "TrialReporter", "train_trial", "WORKER_CALLBACKS"]
