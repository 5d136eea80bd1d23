"""The cyclic garbage collector paused for a block that creates many long-lived objects at once.

Each collection during such a block walks every object made so far, for nothing: they all stay alive. Used by the
label cache's record builder (``data/records.py``) and by the program's start-up (``utils/startup.py``). No torch:
the data tools import it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the collector disabled; afterwards it is enabled again only if it was before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
