"""What the command line and the Python API run, by name, imported only when it runs.

    run("val", cfg)        # imports yolotrain.runners, then calls run_val(cfg)

Each entry names its function as ``module:function``. :mod:`yolotrain.cli` and :mod:`yolotrain.api` reach
everything that needs torch through this table, so ``yolotrain --help``, ``yolotrain help KEY`` and
``import yolotrain`` load no torch and start fast; the modules named here import what they need at their
top.
"""

from __future__ import annotations

import importlib
from typing import Any

ENTRIES = {
    "train": "yolotrain.runners:run_train",
    "best_result": "yolotrain.runners:best_result",
    "val": "yolotrain.runners:run_val",
    "val_table": "yolotrain.eval:format_table",
    "predict": "yolotrain.runners:run_predict_cfg",
    "info": "yolotrain.runners:run_info",
    "export": "yolotrain.export:export_from_config",
    "tune": "yolotrain.tune:run_tune",
    "ckpt": "yolotrain.engine.ckpt_tools:run_ckpt_command",
    "data": "yolotrain.data.commands:run_data_command",
}


def entry(name: str):
    """The function ``name`` runs, its module imported now."""
    module, _, function = ENTRIES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the function ``name`` runs with the given arguments; returns what it returns."""
    return entry(name)(*args, **kwargs)
