"""Python API: ``Detector("n", nc=3).train(data="data.yaml", epochs=10)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolotrain.commands import run
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
        cfg = resolve({"model": self.model, **settings}, command="train")
        # the trainer is kept before it fits, so after a failed run det.trainer is the one that failed
        trainer, wdir = run("train", cfg, self.callbacks, keep=lambda t: setattr(self, "trainer", t))
        # worker processes trained: the best result is in the checkpoint
        best = run("best_result", wdir) if trainer is None else trainer.best
        self.model = str(wdir / ("best.pt" if (wdir / "best.pt").exists() else "last.pt"))
        return best

    def tune(self, **settings: Any):
        """Tune hyperparameters with Optuna (``trials``, ``space``, ``pruner``... and training settings).

        Every trial trains this model (scale or checkpoint) with the callbacks added to this Detector.
        Returns a :class:`~yolotrain.tune.TuneResult`; ``best_yaml`` holds the best settings.
        """
        result = run("tune", {"model": self.model, **settings}, callbacks=self.callbacks.items())
        LOGGER.info(result.summary)
        return result

    def val(self, **settings: Any):
        """Validate the current weights; returns an EvalResult."""
        return run("val", resolve({"model": self.model, **settings}, command="val"))

    def predict(self, source: str, **settings: Any):
        """Predict on an image, folder or glob; returns a list of Prediction (also saved to disk)."""
        preds, _ = run("predict", resolve({"model": self.model, "source": source, **settings}, command="predict"))
        return preds

    def export(self, format: str = "onnx", **settings: Any) -> Path:
        """Export the current weights (``opset``, ``imgsz``, ``dynamic``, ``half``, ``out``); returns the file."""
        return run("export", resolve({"model": self.model, "format": format, **settings}, command="export"), nc=self.nc)
