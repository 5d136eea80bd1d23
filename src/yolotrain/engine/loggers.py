"""Experiment loggers as callbacks: TensorBoard, run plots, optional Weights & Biases; MLflow in mlflow_logger.py.

Register them on a trainer's callbacks::

    from yolotrain.engine.loggers import TensorBoardLogger, default_loggers
    TensorBoardLogger().register(trainer.callbacks)        # one logger
    for logger in default_loggers():                        # every logger whose package is installed
        logger.register(trainer.callbacks)

Each logger is a class whose methods are named after callback events and take the trainer. They act on
rank 0 only, read what they need from the trainer (``save_dir``, ``history``, ``metrics``, ``best``,
``names``, ``cfg``, ...), and never stop training: a failing logger warns once and, for the remote
services, turns itself off.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from yolotrain.engine.callbacks import EVENTS, Callbacks
from yolotrain.engine.distributed import is_main
from yolotrain.loss import LOSS_NAMES
from yolotrain.utils.plots import (
    plot_confusion_matrix,
    plot_labels,
    plot_pr_curve,
    plot_results,
    plot_train_batch,
    train_batch_image,
)
from yolotrain.utils.torch_utils import memory_mb

LOGGER = logging.getLogger("yolotrain")


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a results row (empty cells of unvalidated epochs are left out)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def _epoch_scalars(trainer: Any) -> tuple[int, dict[str, float]]:
    """(epoch number, scalars) of the last finished epoch, with plain keys grouped under ``system/``."""
    row = dict(trainer.history[-1]) if trainer.history else {}
    epoch = int(row.pop("epoch", trainer.epoch + 1))
    scalars = {(k if "/" in k else f"system/{k}"): v for k, v in _numeric(row).items()}
    scalars["system/skipped_steps_total"] = float(getattr(trainer, "skipped_steps", 0))
    if getattr(trainer, "device", None) is not None:
        scalars["system/memory_mb"] = memory_mb(trainer.device)
    return epoch, scalars


class LoggerCallback:
    """Base class: methods named like callback events become callbacks through :meth:`register`.

    Attributes:
        disable_on_error: Whether the first error turns the whole logger off (remote services) rather
            than only warning once per event (local plots, where one bad plot should not stop the rest).
    """

    disable_on_error = True

    def __init__(self) -> None:
        self.disabled = False
        self._failed: set[str] = set()

    def register(self, callbacks: Callbacks) -> LoggerCallback:
        """Add this logger's event methods to ``callbacks``; returns the logger."""
        for event in EVENTS:
            fn = getattr(self, event, None)
            if callable(fn):
                callbacks.add(event, self._guard(event, fn))
        return self

    def _guard(self, event: str, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def run(trainer: Any) -> None:
            if self.disabled or not is_main():
                return
            try:
                fn(trainer)
            except Exception as e:  # a logger must never end a training run
                if event not in self._failed:
                    LOGGER.warning(
                        f"{type(self).__name__}.{event} failed: {type(e).__name__}: {e}"
                        + ("; this logger is off for the rest of the run" if self.disable_on_error else "")
                    )
                self._failed.add(event)
                self.disabled = self.disable_on_error

        return run


# ------------------------------------------------------------------------------------------ TensorBoard
class TensorBoardLogger(LoggerCallback):
    """Scalars and a labelled training batch for TensorBoard (``tensorboard --logdir runs/train``).

    Args:
        log_dir: Event file folder; by default the run folder.
        batch_every: Log per-iteration losses and learning rate every this many iterations.
    """

    def __init__(self, log_dir: str | Path | None = None, batch_every: int = 20) -> None:
        super().__init__()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.batch_every = max(1, int(batch_every))
        self.writer = None
        self.iteration = 0
        self.image_logged = False

    def on_train_start(self, trainer: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - tensorboard loads only when logging

        log_dir = self.log_dir or Path(trainer.save_dir)
        self.writer = SummaryWriter(str(log_dir))
        # A resumed run continues its iteration count instead of overwriting the first steps.
        self.iteration = int(trainer.epoch) * int(getattr(trainer, "nb", 0) or 0)
        cfg = getattr(trainer, "cfg", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            self.writer.add_text("config", "```\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```", 0)
        LOGGER.info(f"tensorboard: view with 'tensorboard --logdir {log_dir.parent}'")

    def on_train_batch_end(self, trainer: Any) -> None:
        if self.writer is None:
            return
        step = self.iteration
        self.iteration += 1
        batch = getattr(trainer, "current_batch", None)
        if not self.image_logged and batch is not None:
            self.writer.add_image("train/batch", train_batch_image(batch, trainer.names), step, dataformats="HWC")
            self.image_logged = True
        if step % self.batch_every:
            return
        items = getattr(trainer, "loss_items", None)
        if items is not None:
            for name, v in zip(LOSS_NAMES, [float(x) for x in items]):
                self.writer.add_scalar(f"batch/{name}", v, step)
        for j, group in enumerate(trainer.optimizer.param_groups):
            self.writer.add_scalar(f"batch/lr_pg{j}", group["lr"], step)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if self.writer is None:
            return
        epoch, scalars = _epoch_scalars(trainer)
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Any) -> None:
        if self.writer is None:
            return
        best = getattr(trainer, "best", None)
        if best is not None:
            self.writer.add_text(
                "best",
                f"mAP50 {best.map50:.4f}, mAP50-95 {best.map50_95:.4f}, P {best.precision:.4f}, R {best.recall:.4f}",
                0,
            )
        self.close()

    def on_exception(self, trainer: Any) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------------------ plots
class PlotsLogger(LoggerCallback):
    """Image files in the run folder: labels.jpg, train_batch0..2.jpg, results.png, PR and confusion plots.

    Does nothing when the trainer's ``cfg.plots`` is false.

    Args:
        save_dir: Output folder; by default the run folder.
        n_batches: Training batches drawn at the start of training.
        results_every: Redraw results.png every this many epochs (and always at the end).
    """

    disable_on_error = False

    def __init__(self, save_dir: str | Path | None = None, n_batches: int = 3, results_every: int = 10) -> None:
        super().__init__()
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.n_batches = n_batches
        self.results_every = results_every
        self.batches_done = 0

    def _dir(self, trainer: Any) -> Path | None:
        cfg = getattr(trainer, "cfg", None)
        if cfg is not None and not getattr(cfg, "plots", True):
            return None
        return self.save_dir or Path(trainer.save_dir)

    def on_train_start(self, trainer: Any) -> None:
        out = self._dir(trainer)
        records = getattr(getattr(trainer.train_loader, "dataset", None), "records", None)
        if out is not None and records is not None:
            plot_labels(records, trainer.names, out / "labels.jpg")

    def on_train_batch_end(self, trainer: Any) -> None:
        batch = getattr(trainer, "current_batch", None)
        if self.batches_done >= self.n_batches or batch is None:
            return
        out = self._dir(trainer)
        if out is not None:
            plot_train_batch(batch, trainer.names, out / f"train_batch{self.batches_done}.jpg")
        self.batches_done += 1

    def _plot_results(self, trainer: Any) -> None:
        out = self._dir(trainer)
        if out is not None and (out / "results.csv").is_file():
            plot_results(out / "results.csv", out / "results.png")

    def on_fit_epoch_end(self, trainer: Any) -> None:
        # Drawing costs ~0.5 s on a CPU: every `results_every` epochs keeps a live picture of long runs
        # without slowing short ones; the final one is drawn at train end.
        if (trainer.epoch + 1) % self.results_every == 0:
            self._plot_results(trainer)

    def on_train_end(self, trainer: Any) -> None:
        self._plot_results(trainer)
        out = self._dir(trainer)
        result = getattr(trainer, "best", None) or getattr(trainer, "metrics", None)
        curves = getattr(result, "curves", None)
        if out is None or curves is None:
            return

        plot_pr_curve(curves, trainer.names, out / "PR_curve.png")
        for normalize, name in ((False, "confusion_matrix.png"), (True, "confusion_matrix_normalized.png")):
            plot_confusion_matrix(
                curves.confusion, trainer.names, out / name, normalize=normalize, conf=curves.conf, iou=curves.iou
            )


# ------------------------------------------------------------------------------------------ remote
_ARTIFACT_SUFFIXES = (".png", ".jpg", ".csv", ".yaml")


def _run_files(save_dir: Path) -> list[Path]:
    """Small run outputs worth uploading: plots, results.csv, args.yaml, and best.pt."""
    files = sorted(p for p in save_dir.glob("*") if p.suffix in _ARTIFACT_SUFFIXES)
    best = save_dir / "weights" / "best.pt"
    return files + ([best] if best.is_file() else [])


class WandbLogger(LoggerCallback):
    """Config, per-epoch metrics and run plots to Weights & Biases (``WANDB_MODE=offline`` works offline).

    Args:
        project: W&B project; by default the run's ``project`` folder name.
    """

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project
        self.wandb: Any = None

    def on_train_start(self, trainer: Any) -> None:
        wandb = importlib.import_module("wandb")
        save_dir = Path(trainer.save_dir)
        wandb.init(
            project=self.project or save_dir.parent.name or "yolotrain",
            name=save_dir.name,
            config=trainer.cfg.to_dict(),
            dir=str(save_dir),
        )
        self.wandb = wandb

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if self.wandb is not None:
            epoch, scalars = _epoch_scalars(trainer)
            self.wandb.log(scalars, step=epoch)

    def on_train_end(self, trainer: Any) -> None:
        if self.wandb is None:
            return
        images = [f for f in _run_files(Path(trainer.save_dir)) if f.suffix in (".png", ".jpg")]
        if images:
            self.wandb.log({f"plots/{f.stem}": self.wandb.Image(str(f)) for f in images})
        self.wandb.finish()
        self.wandb = None

    def on_exception(self, trainer: Any) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=1)
            self.wandb = None


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (so absent extras cost nothing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a stub in sys.modules without a spec raises ValueError
        return module in sys.modules


def default_loggers() -> list[LoggerCallback]:
    """Run plots and MLflow (inert unless the run's ``mlflow`` setting is on), plus TensorBoard and W&B for
    each whose package is installed."""
    from yolotrain.engine.mlflow_logger import MLflowLogger  # noqa: PLC0415 - it builds on this module's LoggerCallback

    loggers: list[LoggerCallback] = [PlotsLogger(), MLflowLogger()]
    if _installed("tensorboard"):
        loggers.append(TensorBoardLogger())
    if _installed("wandb"):
        loggers.append(WandbLogger())
    return loggers


def register_default_loggers(callbacks: Callbacks) -> list[LoggerCallback]:
    """Register :func:`default_loggers` on ``callbacks``; returns them."""
    return [logger.register(callbacks) for logger in default_loggers()]


__all__ = [
    "LoggerCallback",
    "PlotsLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "default_loggers",
    "register_default_loggers",
]
