"""The ``yolotrain`` logger: one handler, plain lines, quiet on non-zero ranks."""

from __future__ import annotations

import logging
import os
import sys

LOGGER = logging.getLogger("yolotrain")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be redirected later)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool = True) -> logging.Logger:
    """Attach a stderr handler once; ranks other than 0 only log warnings and errors.

    Idempotent, so the CLI and the Python API can both call it.
    """
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if (verbose and rank == 0) else logging.WARNING
    LOGGER.setLevel(level)
    if not any(getattr(h, "_yolotrain", False) for h in LOGGER.handlers):
        handler = _StderrHandler()
        # under torchrun the other ranks' warnings carry their rank (rank 0 writes the plain log)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if world > 1 and rank else "%(message)s"))
        handler._yolotrain = True  # type: ignore[attr-defined]
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    return LOGGER
