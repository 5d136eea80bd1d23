"""Start-up of the ``yolotrain`` program's own process: its heavy imports with the garbage collector paused.

Importing torch, and ``torch._dynamo`` (which every torch optimizer imports when it is built), leaves about half
a million container objects alive. Python's cyclic garbage collector runs while they are created, and its full
passes walk all of them again, for nothing: module-level objects live as long as the process, and so do they
after training starts (every later full pass walks them too). Pausing the collector for those imports and then
moving everything alive to the permanent generation (:func:`gc.freeze`), which later passes skip, took
``yolotrain train`` for one epoch on 16 tiny images from 6.0 to 4.4 CPU-seconds (medians of four interleaved
runs, docs/testing.md); a process of a DDP job, a tune trial or a CI test pays this start-up every time. The
frozen objects include the little cyclic garbage the imports left (about 5 MB), which is never freed; forked
data-loader workers copy fewer pages, as the collector no longer writes to the objects they share with the
parent.

Only the program's own process does this (the ``yolotrain`` console script, ``python -m yolotrain``, the
training processes they start): the collector's settings are process-wide, and a caller's objects (a notebook
calling :func:`yolotrain.cli.main` or the Python API) are not ours to freeze.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from yolotrain import commands
from yolotrain.utils.gc_pause import collector_paused

__all__ = ["imports_then_freeze", "start_program"]


@contextmanager
def imports_then_freeze() -> Iterator[None]:
    """Run the block with the cyclic collector paused, then freeze every object alive and resume collecting."""
    with collector_paused():
        try:
            yield
        finally:
            gc.freeze()  # before the collector resumes, so no pass walks them first


def start_program(command: str, cfg: Any = None, *, builds_optimizer: bool | None = None) -> None:
    """Import what ``command`` runs, and ``torch._dynamo`` where this process will build an optimizer, inside
    :func:`imports_then_freeze`.

    Args:
        command: A :data:`yolotrain.commands.ENTRIES` name (``train``, ``val``, ``tune``, ``data``...).
        cfg: The resolved settings of ``train`` (to tell a process that trains from one that launches workers).
        builds_optimizer: Whether this process will build an optimizer; None: a ``train`` process with ``cfg``
            will unless it launches workers (the fork server of a launch says True for its workers).
    """
    with imports_then_freeze():
        commands.entry(command)
        if builds_optimizer is None and command == "train" and cfg is not None:
            from yolotrain.engine.launch import processes_wanted  # noqa: PLC0415 - torch is imported by now

            builds_optimizer = processes_wanted(cfg) == 1  # a launcher builds none; its workers come back here
        if builds_optimizer:
            importlib.import_module("torch._dynamo")
