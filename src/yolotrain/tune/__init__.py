"""Hyperparameter tuning on Optuna: ``yolotrain tune`` and ``Detector.tune``."""

from yolotrain.tune.report import TuneResult
from yolotrain.tune.runner import run_tune

__all__ = ["TuneResult", "run_tune"]
