"""What a study leaves in the tune folder: ``trials.csv``, ``best.yaml``, plots, and the summary line."""

from __future__ import annotations

import csv
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from yolotrain.utils.files import atomic_write

LOGGER = logging.getLogger("yolotrain")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class TuneResult:
    """The state of a study after ``yolotrain tune`` (all its processes' trials).

    Attributes:
        tune_dir: The tune folder.
        best_trial: Number of the best complete trial (None before any completes).
        best_value: Its best-epoch mAP50-95.
        best_params: Its sampled settings.
        best_yaml: ``best.yaml`` (None before any trial completes).
        baseline_value: mAP50-95 of the baseline trial (the given settings), when it completed.
        complete, pruned, failed, running: Trial counts by state.
        epochs_run: Epochs trained over all finished trials.
        epochs_full: Epochs those trials would have trained without pruning (trials x epochs).
        seconds: Wall time of this tune command.
        summary: The final summary line.
        dashboard: The command that opens the study in optuna-dashboard.
    """

    tune_dir: Path
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_yaml: Path | None = None
    dashboard: str = ""
    baseline_value: float | None = None
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    epochs_run: int = 0
    epochs_full: int = 0
    seconds: float = 0.0
    summary: str = ""


def trial_value(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's score: its best validated epoch (what ``best.pt`` holds), else None."""
    if t.value is not None and t.state == TrialState.COMPLETE:
        return t.value
    return max(t.intermediate_values.values()) if t.intermediate_values else None


def write_trials_csv(study: optuna.Study, path: Path, space_keys: list[str]) -> None:
    """One row per trial: number, state, score, epochs run, where pruned, seconds, run folder, settings."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", "mAP50-95", "epochs_run", "pruned_at", "baseline", "seconds", "run", *space_keys])
    for t in study.get_trials(deepcopy=False):
        value = trial_value(t)
        seconds = (
            round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
            if t.datetime_complete and t.datetime_start
            else ""
        )
        w.writerow(
            [
                t.number,
                t.state.name,
                "" if value is None else round(value, 5),
                t.user_attrs.get("epochs_run", 0),
                t.user_attrs.get("pruned_at", ""),
                bool(t.user_attrs.get("baseline", False)),
                seconds,
                t.user_attrs.get("run", ""),
                *[t.params.get(k, "") for k in space_keys],
            ]
        )
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def write_best_yaml(path: Path, settings: dict[str, Any], trial: optuna.trial.FrozenTrial, epochs: int) -> None:
    """The best trial's settings, usable as ``yolotrain train cfg=best.yaml``."""
    header = (
        f"# yolotrain tune: best trial {trial.number}, mAP50-95 {trial.value:.5f} after {epochs} epochs "
        f"(run {trial.user_attrs.get('run', '?')})\n"
        "# train with it: yolotrain train cfg=best.yaml epochs=...\n"
    )
    text = header + yaml.safe_dump({**settings, **trial.params}, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def write_plots(study: optuna.Study, folder: Path, top: int = 6) -> list[Path]:
    """Optimization history, parameter importances, parallel coordinates and learning curves as PNG files.

    The parallel-coordinate view shows the ``top`` most important settings (all of them are unreadable). A
    plot Optuna cannot draw yet (importances need two complete trials) is skipped with a warning.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy: only when a study ends
    from optuna.visualization import matplotlib as ovm  # noqa: PLC0415 - optional plotting, only when a study ends

    folder.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            important = list(optuna.importance.get_param_importances(study, evaluator=_evaluator()))[:top]
    except Exception:  # noqa: BLE001 - too few trials: show every setting
        important = None
    written = []
    for name, draw in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", lambda s: ovm.plot_param_importances(s, evaluator=_evaluator())),
        ("parallel_coordinate", lambda s: ovm.plot_parallel_coordinate(s, params=important)),
        ("intermediate_values", ovm.plot_intermediate_values),
    ):
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax = draw(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(12, 6)
            fig.tight_layout()
            fig.savefig(folder / f"{name}.png", dpi=100)
            plt.close(fig)
            written.append(folder / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - a plot must never cost the study its other outputs
            LOGGER.warning(f"tune: plot {name} skipped: {type(e).__name__}: {e}".splitlines()[0])
            plt.close("all")
    return written


def _evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """PED-ANOVA: needs nothing beyond numpy (Optuna's fANOVA would need scikit-learn)."""
    return optuna.importance.PedAnovaImportanceEvaluator()


def summarize(study: optuna.Study, result: TuneResult, epochs: int) -> TuneResult:
    """Fill ``result`` from the study's trials (all processes') and compose the summary line."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    result.complete = sum(t.state == TrialState.COMPLETE for t in trials)
    result.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    result.failed = sum(t.state == TrialState.FAIL for t in trials)
    result.running = sum(t.state == TrialState.RUNNING for t in trials)
    result.epochs_run = sum(int(t.user_attrs.get("epochs_run", 0)) for t in finished)
    result.epochs_full = len(finished) * epochs
    for t in trials:
        if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE:
            result.baseline_value = t.value
    saved = result.epochs_full - result.epochs_run
    line = (
        f"tune: {len(finished)} trials ({result.complete} complete, {result.pruned} pruned, {result.failed} failed"
        + (f", {result.running} running" if result.running else "")
        + f") in {result.seconds / 60:.1f} min; epochs run {result.epochs_run} of {result.epochs_full}"
        + (f" ({100 * saved / result.epochs_full:.0f}% saved by pruning)" if result.epochs_full else "")
    )
    if result.best_trial is not None:
        line += f"; best trial {result.best_trial} mAP50-95 {result.best_value:.4f}"
        if result.baseline_value is not None:
            line += f" (baseline {result.baseline_value:.4f})"
        line += f"; settings in {result.best_yaml}"
    if result.dashboard:
        line += f"; dashboard: {result.dashboard}"
    result.summary = line
    return result
