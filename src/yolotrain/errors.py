"""Exceptions that carry a one-line, user-facing message.

The CLI catches :class:`YoloTrainError` and prints ``error: <message>`` with exit code 2, so every
message must name the file or key at fault and what is wrong, on one line.
"""


class YoloTrainError(Exception):
    """Base class for errors caused by user input rather than a bug."""


class ConfigError(YoloTrainError):
    """A setting is unknown, of the wrong type or out of range."""


class DataError(YoloTrainError):
    """A dataset file, folder or label is unusable."""


class CheckpointError(YoloTrainError):
    """A checkpoint file is missing, corrupt, unsafe or incompatible."""


class TrainingError(YoloTrainError):
    """Training cannot go on (for example repeated non-finite losses)."""


class Preempted(YoloTrainError):
    """Training stopped on SIGTERM/SIGINT after saving a resumable checkpoint."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", distinct from success (0) and errors (1, 2)
