"""Resuming a run: find its checkpoint, check what may change, and the RNG state to carry over.

``yolotrain train resume=true`` continues the newest run under ``project``; ``resume=path/last.pt``
continues that one. Settings come from the checkpoint; only those in :data:`OVERRIDABLE` may be given
again (``epochs`` may be raised to extend a run). Another dataset, model or class count is refused.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, resolve
from ..errors import CheckpointError
from .checkpoint import load_checkpoint

LOGGER = logging.getLogger("yolotrain")

# Settings that do not change what is computed, or (epochs) extend it on purpose.
OVERRIDABLE = {"epochs", "device", "workers", "verbose", "plots", "save_period", "save_minutes", "save_epochs",
               "resume", "exist_ok", "amp_check"}
# Settings whose change makes the checkpoint meaningless for this run.
INCOMPATIBLE = ("data", "model", "imgsz", "batch")


def find_latest(project: str | Path) -> Path:
    """The most recently written ``*/weights/last.pt`` under ``project``.

    Raises:
        CheckpointError: When there is none.
    """
    found = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(f"resume=true found no */weights/last.pt under '{project}'; give resume=path/last.pt")
    return found[-1]


def checkpoint_path(cfg: Config) -> Path:
    """The checkpoint ``cfg.resume`` names."""
    value = str(cfg.resume).strip()
    if value.lower() in ("true", "yes", "1", "auto"):
        return find_latest(cfg.project)
    return Path(value)


def prepare_resume(cfg: Config) -> tuple[Config, dict[str, Any], Path]:
    """Load the checkpoint named by ``cfg.resume`` and build the config the resumed run uses.

    Returns:
        The resumed config, the checkpoint state and its path.

    Raises:
        CheckpointError: For a missing/corrupt file or an incompatible change of settings.
    """
    path = checkpoint_path(cfg)
    state = load_checkpoint(path)
    saved = state.get("config")
    if not isinstance(saved, dict) or "position" not in state:
        raise CheckpointError(f"checkpoint '{path}' holds no training state to resume (weights only?); "
                              f"use model={path} to fine-tune from it instead")
    given = {k: getattr(cfg, k) for k in cfg.explicit if k != "cfg"}
    for key in INCOMPATIBLE:
        if key in given and str(given[key]) != str(saved.get(key)):
            raise CheckpointError(f"cannot resume '{path}' with {key}={given[key]}: the run was trained with "
                                  f"{key}={saved.get(key)} (start a new run, or fine-tune with model={path})")
    ignored = sorted(k for k in given if k not in OVERRIDABLE and k not in INCOMPATIBLE
                     and str(given[k]) != str(saved.get(k)))
    if ignored:
        LOGGER.warning(f"resume: {', '.join(ignored)} come from the checkpoint; the new values are ignored")
    values = dict(saved)
    values.update({k: v for k, v in given.items() if k in OVERRIDABLE})
    if values["epochs"] < saved["epochs"]:
        raise CheckpointError(f"cannot resume '{path}' with epochs={values['epochs']}: fewer than the "
                              f"{saved['epochs']} it was started with")
    values["resume"] = str(path)
    values["exist_ok"] = True
    return resolve(values), state, path


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and every CUDA device's RNG state, as plain data."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded (CUDA states only for devices that exist here)."""
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
