"""yolotrain: a PyTorch training framework for YOLO-style object detectors."""

__version__ = "0.1.0"

from yolotrain.api import Detector  # noqa: E402
from yolotrain.config import Config, resolve  # noqa: E402
from yolotrain.errors import YoloTrainError  # noqa: E402

__all__ = ["Detector", "Config", "resolve", "YoloTrainError", "__version__"]
