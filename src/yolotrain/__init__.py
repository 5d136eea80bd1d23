"""yolotrain: a PyTorch training framework for YOLO-style object detectors."""

__version__ = "0.1.0"

from .api import Detector  # noqa: E402
from .config import Config, resolve  # noqa: E402
from .errors import YoloTrainError  # noqa: E402

__all__ = ["Detector", "Config", "resolve", "YoloTrainError", "__version__"]
