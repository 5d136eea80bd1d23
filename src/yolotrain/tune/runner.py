"""``yolotrain tune``: run trials of an Optuna study until it has ``trials`` of them, then write the outputs.

Layout of the tune folder (``{project}/{name}``, default ``runs/tune/exp``; never auto-incremented, so
running the same command again continues the study)::

    study.journal          the study (unless storage= points elsewhere)
    space.yaml             the search space in use
    trials/trial_000/      each trial's run folder (args.yaml, weights/last.pt, results.csv...);
                           another study in the same folder (study=B) uses trials/study-B/trial_000/
    trials.csv  best.yaml  plots/*.png
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from yolotrain.config import Config, resolve
from yolotrain.engine.mlflow_client import PARENT_ENV, end_study_parent_run, study_parent_run
from yolotrain.errors import ConfigError, Preempted, TrainingError
from yolotrain.tune.options import TuneOptions, split_options
from yolotrain.tune.report import TuneResult, summarize, write_best_yaml, write_plots, write_trials_csv
from yolotrain.tune.space import Dimension, SettingsNotApplied, load_space, space_to_dict
from yolotrain.tune.study import (
    Claim,
    dashboard_command,
    enqueue_baseline,
    make_pruner,
    next_trial,
    open_study,
    trials_dir,
)
from yolotrain.tune.trial import train_trial

LOGGER = logging.getLogger("yolotrain")
# Settings that do not change what a trial computes: they may differ when a study is continued.
VOLATILE = {
    "device", "nproc", "workers", "verbose", "plots", "dist_timeout", "max_restarts", "callbacks", "cfg", "mlflow",
}  # fmt: skip
# Settings the tuner sets for each trial itself.
PER_TRIAL = {"project", "name", "exist_ok", "resume"}


def run_tune(args: Mapping[str, Any], callbacks: list[tuple[str, Callable[[Any], None]]] = ()) -> TuneResult:
    """Run (or continue) the study that ``args`` describe.

    Args:
        args: Tune keys (:mod:`yolotrain.tune.options`) and training settings, as ``key=value`` would give.
        callbacks: Extra ``(event, function)`` pairs for every trial's trainer (the Python API's).

    Returns:
        The study's state when this process stops starting trials.

    Raises:
        ConfigError: For bad settings, a bad space, or a tune folder holding another study.
        SettingsNotApplied: When a trial did not train with the proposed settings.
        Preempted: On Ctrl-C/SIGTERM (the interrupted trial resumes when the command runs again).
    """
    t0 = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tuner logs each trial itself, in one style
    opts, rest = split_options(args)
    base = resolve(rest)
    if not base.val:
        raise ConfigError("setting 'val'=false: tune compares trials on their validation mAP50-95; use val=true")
    for key in sorted(PER_TRIAL & set(rest)):
        if key != "project" and key != "name":
            raise ConfigError(f"setting '{key}' is chosen by tune for each trial; do not give it")
    space = load_space(opts.space)
    tune_dir = Path(base.project if "project" in base.explicit else "runs/tune") / base.name
    tune_dir.mkdir(parents=True, exist_ok=True)
    # what every trial trains with: the given settings (cfg= file included), validated and typed
    settings = {k: getattr(base, k) for k in base.explicit if k not in PER_TRIAL | {"cfg"}}
    settings = lr0_effective(settings, space, base)
    about = {
        "settings": {k: v for k, v in settings.items() if k not in VOLATILE},
        "space": space_to_dict(space),
    }
    storage_spec = opts.storage or str((tune_dir / "study.journal").resolve())
    pruner = make_pruner(opts.pruner, opts.prune_warmup)
    study = open_study(tune_dir, storage_spec, opts.study or tune_dir.name, pruner, opts.trials, about)
    (tune_dir / "space.yaml").write_text(yaml.safe_dump(space_to_dict(space), sort_keys=False))
    if opts.baseline:
        _enqueue_baseline(study, tune_dir, space, base)
    LOGGER.info(f"tune: study '{study.study_name}' in {tune_dir}, {opts.trials} trials, pruner {opts.pruner}")
    result = TuneResult(tune_dir=tune_dir, dashboard=dashboard_command(opts.storage, tune_dir))
    LOGGER.info(f"tune: watch the study with: {result.dashboard}")
    # mlflow=: one parent run for the study; each trial's run is its child (the trainer reads PARENT_ENV)
    parent = study_parent_run(base.mlflow, study, tune_dir, about) if base.mlflow else None
    if parent is not None:
        os.environ[PARENT_ENV] = json.dumps(parent)
    worker_env = {
        "storage": storage_spec,
        "study": study.study_name,
        "pruner": opts.pruner,
        "warmup": opts.prune_warmup,
    }
    try:
        while not _over_budget(opts, t0):
            claim = next_trial(study, tune_dir, opts.trials)
            if claim is None:
                break
            try:
                _run_claim(claim, study, tune_dir, space, settings, list(callbacks), worker_env)
            finally:
                claim.lock.release()
            _write_outputs(study, tune_dir, settings, space, base, result, plots=False)
    except BaseException:
        result.seconds = time.monotonic() - t0
        _write_outputs(study, tune_dir, settings, space, base, result, plots=False)  # the failed trial too
        raise
    finally:
        os.environ.pop(PARENT_ENV, None)
    result.seconds = time.monotonic() - t0
    _write_outputs(study, tune_dir, settings, space, base, result, plots=True)
    if parent is not None:
        best = {"value": result.best_value, "trial": result.best_trial} if result.best_trial is not None else {}
        end_study_parent_run(base.mlflow, parent, tune_dir, best)
    return result


def lr0_effective(settings: dict[str, Any], space: dict[str, Dimension], base: Config) -> dict[str, Any]:
    """The trials' shared settings, with ``optimizer=SGD`` when ``lr0`` is tuned under ``optimizer=auto``.

    ``optimizer=auto`` picks AdamW with its own learning rate for runs of up to 10,000 optimizer steps (most
    tuning runs), so a sampled ``lr0`` would change nothing: every trial would silently train at one lr.
    SGD is what ``auto`` uses for long runs, with ``lr0`` as given.
    """
    if "lr0" not in space or base.optimizer != "auto":
        return settings
    LOGGER.warning(
        "tune: optimizer=auto sets its own learning rate for runs of up to 10,000 optimizer steps, so lr0 "
        "would not be tuned; trials use optimizer=SGD (give optimizer=SGD, Adam or AdamW to choose)"
    )
    return {**settings, "optimizer": "SGD"}


def _over_budget(opts: TuneOptions, t0: float) -> bool:
    if opts.budget and time.monotonic() - t0 >= opts.budget * 3600:
        LOGGER.info(f"tune: budget of {opts.budget:g} h spent; no new trial starts")
        return True
    return False


def _enqueue_baseline(study: optuna.Study, tune_dir: Path, space: dict[str, Dimension], base: Config) -> None:
    """Trial 0 trains with the given settings, unless one of them lies outside the space."""
    params = {k: getattr(base, k) for k in space}
    outside = [k for k, d in space.items() if not d.contains(params[k])]
    if outside:
        LOGGER.warning(f"tune: no baseline trial: {outside[0]}={params[outside[0]]} lies outside the space")
        return
    enqueue_baseline(study, tune_dir, params)


def _run_claim(
    claim: Claim,
    study: optuna.Study,
    tune_dir: Path,
    space: dict[str, Dimension],
    settings: dict[str, Any],
    callbacks: list,
    worker_env: dict[str, Any],
) -> None:
    """Train one claimed trial and tell the study how it ended."""
    trial = claim.trial
    run = trials_dir(tune_dir, study.study_name) / f"trial_{trial.number:03d}"  # per study: never shared
    proposed = {k: d.suggest(trial) for k, d in space.items()}  # a resumed trial gets its stored values back
    last = run / "weights" / "last.pt"
    resume = str(last) if claim.resumed and last.is_file() else ""
    if claim.resumed:
        LOGGER.warning(
            f"tune: trial {trial.number} was left unfinished by a stopped tuner; "
            + (f"resuming {last}" if resume else f"restarting it in {run} (it had no checkpoint yet)")
        )
        trial.set_user_attr("resumed", int(study_trial(study, trial.number).user_attrs.get("resumed", 0)) + 1)
    trial.set_user_attr("run", str(run))
    where = {"project": str(run.parent), "name": run.name, "exist_ok": True, "resume": resume}
    cfg = resolve({**settings, **proposed, **where})
    LOGGER.info(f"tune: trial {trial.number}: " + " ".join(f"{k}={_fmt(v)}" for k, v in proposed.items()))
    try:
        # checked against args.yaml: what the sampler proposed and every shared setting that fixes the result
        expected = {**{k: v for k, v in settings.items() if k not in VOLATILE}, **proposed}
        train_trial(cfg, trial, expected, callbacks, worker_env)
    except (Preempted, KeyboardInterrupt):
        LOGGER.warning(f"tune: trial {trial.number} interrupted; running the same command again resumes it")
        raise
    except SettingsNotApplied as e:
        _fail(study, trial, f"settings not applied: {e}")
        raise SettingsNotApplied(f"trial {trial.number}: {e}") from None
    except (TrainingError, MemoryError) as e:  # a bad point of the space (NaN losses, too big): next trial
        _fail(study, trial, str(e))
        return
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":
            _fail(study, trial, f"out of memory: {str(e).splitlines()[0]}")
            return
        _fail(study, trial, f"{type(e).__name__}: {e}")
        raise
    frozen = study_trial(study, trial.number)
    if frozen.user_attrs.get("pruned_at"):
        study.tell(trial.number, state=TrialState.PRUNED)
    elif frozen.intermediate_values:
        study.tell(trial.number, max(frozen.intermediate_values.values()))
    else:
        _fail(study, trial, "no validated epoch")


def study_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The stored state of trial ``number`` (also what a distributed trial's workers wrote)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _fail(study: optuna.Study, trial: optuna.trial.Trial, why: str) -> None:
    LOGGER.error(f"tune: trial {trial.number} failed: {why}")
    trial.set_user_attr("error", why[:500])
    study.tell(trial.number, state=TrialState.FAIL)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _write_outputs(
    study: optuna.Study,
    tune_dir: Path,
    settings: dict[str, Any],
    space: dict[str, Dimension],
    base: Config,
    result: TuneResult,
    plots: bool,
) -> None:
    """trials.csv, best.yaml (once a trial completed), plots at the end, and the summary."""
    write_trials_csv(study, tune_dir / "trials.csv", list(space))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: t.value)
        result.best_trial, result.best_value, result.best_params = best.number, best.value, dict(best.params)
        result.best_yaml = tune_dir / "best.yaml"
        keep = {k: v for k, v in settings.items() if k not in VOLATILE}
        write_best_yaml(result.best_yaml, keep, best, base.epochs)
    if plots and base.plots and complete:  # plots=false: no plots in the trials' runs nor here
        write_plots(study, tune_dir / "plots")
    summarize(study, result, base.epochs)
