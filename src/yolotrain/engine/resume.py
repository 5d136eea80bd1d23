"""Resuming a run: find its checkpoint, check what may change, and the RNG state to carry over.

``yolotrain train resume=true`` continues the newest run under ``project``; ``resume=path/last.pt``
continues that one. Settings come from the checkpoint; only those in :data:`OVERRIDABLE` may be given
again (``epochs`` may be raised to extend a run). Another dataset, model or class count is refused.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.config import MAY_CHANGE, REFUSED, SETTINGS, Config, resolve
from yolotrain.engine.distributed import restart_count
from yolotrain.engine.state import Position
from yolotrain.errors import CheckpointError
from yolotrain.utils.files import atomic_write

LOGGER = logging.getLogger("yolotrain")

# Each setting declares what a resume does with a new value (config.Setting.on_resume).
# Settings that do not change what is computed, or (epochs) extend it on purpose.
OVERRIDABLE = frozenset(k for k, s in SETTINGS.items() if s.on_resume == MAY_CHANGE)
# Settings whose change makes the checkpoint meaningless for this run.
INCOMPATIBLE = tuple(k for k, s in SETTINGS.items() if s.on_resume == REFUSED)


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
    if value.lower() in ("true", "yes", "1"):
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
        raise CheckpointError(
            f"checkpoint '{path}' holds no training state to resume (weights only?); "
            f"use model={path} to fine-tune from it instead"
        )
    given = {k: getattr(cfg, k) for k in cfg.explicit if k != "cfg"}
    for key in INCOMPATIBLE:
        if key in given and str(given[key]) != str(saved.get(key)):
            raise CheckpointError(
                f"cannot resume '{path}' with {key}={given[key]}: the run was trained with "
                f"{key}={saved.get(key)} (start a new run, or fine-tune with model={path})"
            )
    ignored = sorted(
        k for k in given if k not in OVERRIDABLE and k not in INCOMPATIBLE and str(given[k]) != str(saved.get(k))
    )
    if ignored:
        LOGGER.warning(
            f"resume: {', '.join(ignored)} {'comes' if len(ignored) == 1 else 'come'} from the checkpoint; "
            f"the new value{'s are' if len(ignored) > 1 else ' is'} ignored"
        )
    values = {k: v for k, v in given.items() if k in OVERRIDABLE}
    if values.get("epochs", saved["epochs"]) < saved["epochs"]:
        raise CheckpointError(
            f"cannot resume '{path}' with epochs={values['epochs']}: fewer than the "
            f"{saved['epochs']} it was started with"
        )
    values["resume"] = str(path)
    values["exist_ok"] = True
    # the checkpoint's settings as a file's, not the user's: callbacks it names are not run (resolve warns)
    return resolve(values, recorded=saved, recorded_from=f"checkpoint '{path}'"), state, path


def saved_processes(state: dict[str, Any]) -> int:
    """How many processes wrote the checkpoint ``state`` (each rank's random streams are in it)."""
    return len(state.get("rng_ranks") or []) or 1


def note_world_change(state: dict[str, Any], world: int, batch: int, sync_bn: bool) -> None:
    """Log what a resume on another number of processes changes (nothing when the number is the same).

    The samples of every step are the same (the position counts global steps); what each process computes
    alone is not: without SyncBN, BatchNorm's batch statistics come from the per-process batch.
    """
    saved = saved_processes(state)
    if saved == world or batch % saved or batch % world:
        return
    was, now = batch // saved, batch // world
    if sync_bn:
        LOGGER.info(
            f"resume: {world} processes instead of {saved}, the same global batch {batch} and samples per step; "
            "BatchNorm statistics stay over the global batch (sync_bn)"
        )
        return
    LOGGER.warning(
        f"resume: {world} processes instead of {saved}: the per-process batch changed from {was} to {now} images "
        f"(global batch {batch} and the samples of every step are the same); BatchNorm statistics are computed "
        "per process, so they will differ from the uninterrupted run's (sync_bn=true computes them over the "
        "global batch)"
    )


ELASTIC_MARKER = ".torchelastic_run"


def slurm_restart_count() -> int:
    """How many times SLURM has requeued or restarted this job (0 outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def elastic_job_key() -> str | None:
    """What identifies this job across restarts (None when neither SLURM nor torchrun runs it).

    Under SLURM the job id, which a requeued job keeps. Under torchrun, its run id when the user gave one
    (``--rdzv_id``; ``--standalone`` makes a random one), else the host and the elastic agent's pid, which
    survive restarts because the agent restarts the workers.
    """
    slurm_job = os.environ.get("SLURM_JOB_ID", "").strip()
    if slurm_job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
        return f"slurm:{slurm_job}" + (f":{task}" if task else "")
    if "TORCHELASTIC_RUN_ID" not in os.environ and "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"run:{run_id}"
    return f"agent:{socket.gethostname()}:{os.getppid()}"


def restart_note() -> str:
    """`` (torchrun restart N)`` / `` (SLURM restart N)`` for the log, empty for a first start."""
    if restart_count():
        return f" (torchrun restart {restart_count()})"
    return f" (SLURM restart {slurm_restart_count()})" if slurm_restart_count() else ""


def mark_elastic_run(save_dir: Path) -> None:
    """Record the torchrun job in the run folder, so restarted workers find this folder again."""
    key = elastic_job_key()
    if key is not None:
        atomic_write(save_dir / ELASTIC_MARKER, lambda f: f.write(key.encode()))


def elastic_resume(cfg: Config) -> Config:
    """Apply ``resume=auto`` (the default after a torchrun restart): continue this job's run if it has one.

    ``resume=auto`` continues, in order: the run folder marked with this torchrun job (restarted workers),
    else ``{project}/{name}/weights/last.pt`` when ``exist_ok=true``; otherwise it starts a new run. The
    folder of a restarted job that died before its first checkpoint is reused for the new start.

    Returns:
        The config, ``resume`` set to a path or cleared (unchanged unless ``resume=auto`` applies).
    """
    value = str(cfg.resume).strip().lower()
    restarts = restart_count() or slurm_restart_count()
    auto = value == "auto" or (value == "" and restarts > 0)
    if not auto:
        return cfg
    folder = None
    key = elastic_job_key()
    if key is not None:
        for marker in sorted(Path(cfg.project).glob(f"*/{ELASTIC_MARKER}")):
            if marker.read_text(errors="replace").strip() == key:
                folder = marker.parent
                break
    if folder is None and cfg.exist_ok:
        folder = Path(cfg.project) / cfg.name
    last = folder / "weights" / "last.pt" if folder is not None else None
    if last is not None and last.is_file():
        # a warning, so it shows with verbose=false too: a restart is worth knowing about
        (LOGGER.warning if restarts else LOGGER.info)(f"resume=auto: continuing {last}" + restart_note())
        return cfg.replace(resume=str(last))
    if folder is not None:  # restarted before the first checkpoint: start again in the same folder
        LOGGER.info(f"resume=auto: no checkpoint in {folder} yet; starting the run there")
        return cfg.replace(resume="", name=folder.name, project=str(folder.parent), exist_ok=True)
    return cfg.replace(resume="")


def resume_point(position: Position, iters_per_epoch: int) -> tuple[int, int]:
    """The (epoch, iteration) a run continues at from its checkpoint's ``position``.

    Mid-epoch, the position counts batches of the loader it was saved with; at an epoch's end the next epoch
    may be in another phase (``freeze_batch``) with another batch count, so only a mid-epoch position must match.

    Raises:
        CheckpointError: When the data now gives another number of batches per epoch than the mid-epoch position.
    """
    if not position.complete and position.iters_per_epoch != iters_per_epoch:
        raise CheckpointError(
            f"cannot resume: the run had {position.iters_per_epoch} iterations per epoch, the data now gives "
            f"{iters_per_epoch} (images were added or removed)"
        )
    return position.next_start()
