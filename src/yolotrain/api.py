"""Python API: ``Detector("n", nc=3).train(data="data.yaml", epochs=10)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolotrain.config import resolve
from yolotrain.engine.callbacks import Callbacks
from yolotrain.utils.logging import LOGGER, setup_logging


class Detector:
    """A model scale or a checkpoint, with train / val / predict.

    Args:
        model: A scale name (``n``, ``s``, ...) or a path to a ``.pt`` checkpoint.
        nc: Number of classes for a fresh model (training takes it from the data).
    """

    def __init__(self, model: str | Path = "n", nc: int | None = None):
        self.model = str(model)
        self.nc = nc
        self.callbacks = Callbacks()
        self.trainer = None
        setup_logging()

    def add_callback(self, event: str, fn) -> None:
        """Run ``fn(trainer)`` at the named training event."""
        self.callbacks.add(event, fn)

    def train(self, **settings: Any):
        """Train with the given settings; returns the best epoch's EvalResult (None without val)."""
        from yolotrain.engine.launch import launch, processes_wanted  # noqa: PLC0415 - torch and the engine load only when a method runs
        from yolotrain.engine.trainer import Trainer  # noqa: PLC0415 - torch and the engine load only when a method runs

        cfg = resolve({"model": self.model, **settings}, command="train")
        n = processes_wanted(cfg)
        if n > 1:
            # torchrun workers re-import the callbacks by name; ones that cannot be are refused up front
            wdir = launch(cfg, n, self.callbacks.items()) / "weights"
            best = _best_result(wdir)
        else:
            self.trainer = Trainer(cfg, callbacks=self.callbacks)
            best = self.trainer.fit()
            wdir = self.trainer.wdir
        self.model = str(wdir / ("best.pt" if (wdir / "best.pt").exists() else "last.pt"))
        return best

    def tune(self, **settings: Any):
        """Tune hyperparameters with Optuna (``trials``, ``space``, ``pruner``... and training settings).

        Every trial trains this model (scale or checkpoint) with the callbacks added to this Detector.
        Returns a :class:`~yolotrain.tune.TuneResult`; ``best_yaml`` holds the best settings.
        """
        from yolotrain.tune import run_tune  # noqa: PLC0415 - torch and the engine load only when a method runs

        result = run_tune({"model": self.model, **settings}, callbacks=self.callbacks.items())
        LOGGER.info(result.summary)
        return result

    def val(self, **settings: Any):
        """Validate the current weights; returns an EvalResult."""
        from yolotrain.runners import run_val  # noqa: PLC0415 - torch and the engine load only when a method runs

        return run_val(resolve({"model": self.model, **settings}, command="val"))

    def predict(self, source: str, **settings: Any):
        """Predict on an image, folder or glob; returns a list of Prediction (also saved to disk)."""
        from yolotrain.runners import run_predict_cfg  # noqa: PLC0415 - torch and the engine load only when a method runs

        preds, _ = run_predict_cfg(resolve({"model": self.model, "source": source, **settings}, command="predict"))
        return preds

    def export(self, format: str = "onnx", **settings: Any) -> Path:
        """Export the current weights (``opset``, ``imgsz``, ``dynamic``, ``half``, ``out``); returns the file."""
        from yolotrain.export import export_from_config  # noqa: PLC0415 - torch and the engine load only when a method runs

        return export_from_config(
            resolve({"model": self.model, "format": format, **settings}, command="export"), nc=self.nc
        )


def _best_result(wdir: Path):
    """The best epoch's EvalResult recorded in ``wdir``'s checkpoint (after a multi-process run)."""
    from yolotrain.checkpoint_file import load_checkpoint  # noqa: PLC0415 - torch and the engine load only when a method runs
    from yolotrain.eval import EvalResult  # noqa: PLC0415 - torch and the engine load only when a method runs

    last = wdir / "last.pt"
    best = load_checkpoint(last).get("best_metrics") if last.is_file() else None
    return EvalResult.from_dict(best) if best else None
