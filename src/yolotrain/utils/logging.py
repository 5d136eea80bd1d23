"""The ``yolotrain`` logger: one handler, plain lines, quiet on non-zero ranks."""

from __future__ import annotations

import logging
import os
import sys

LOGGER = logging.getLogger("yolotrain")


def setup_logging(verbose: bool = True) -> logging.Logger:
    """Attach a stderr handler once; ranks other than 0 only log warnings and errors.

    Idempotent, so the CLI and the Python API can both call it.
    """
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if (verbose and rank == 0) else logging.WARNING
    LOGGER.setLevel(level)
    if not any(getattr(h, "_yolotrain", False) for h in LOGGER.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._yolotrain = True  # type: ignore[attr-defined]
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    return LOGGER
