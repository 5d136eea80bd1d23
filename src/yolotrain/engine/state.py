"""The training state that is not a tensor of the model or optimizer: where training is, what it found.

``TrainState`` is the one owner of the position (epoch, iteration), the best result, the metrics history,
the skipped-step and out-of-memory counters, the micro-batch split, early stopping and the RNG streams.
It saves to and loads from the checkpoint's keys listed in :attr:`TrainState.KEYS`.

A checkpoint may be resumed on another number of processes (the position counts global steps, see
:mod:`yolotrain.data.sample_stream`). What is per process is then adapted, and logged: the micro-batch
split is rescaled to the new per-process batch (:meth:`TrainState.load_state_dict`) and the global random
streams are re-seeded from (seed, position, rank) (:meth:`RngStreams.load_state_dict`). Nothing that decides
the samples, their augmentation or the multi-scale sizes draws from those streams; they are kept only so a
same-sized resume continues every library's stream exactly.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from yolotrain.engine import distributed as dist
from yolotrain.engine.early_stop import EarlyStopping
from yolotrain.engine.phases import PhasePlan
from yolotrain.errors import CheckpointError
from yolotrain.eval import EvalResult

LOGGER = logging.getLogger("yolotrain")


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and every CUDA device's RNG state, as plain data."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
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


@dataclass
class Position:
    """``iteration`` batches of ``epoch`` are done; ``complete`` marks the epoch's end (validation included)."""

    epoch: int = 0
    iteration: int = 0
    complete: bool = False
    iters_per_epoch: int = 0

    def next_start(self) -> tuple[int, int]:
        """The (epoch, iteration) training continues from."""
        return (self.epoch + 1, 0) if self.complete else (self.epoch, self.iteration)


@dataclass
class TrainState:
    """Everything about a run's progress that a resumed run needs besides weights and optimizer.

    Args:
        patience: Early-stopping patience in epochs (0: off).
        processes: The number of training processes (a checkpoint from another number is adapted).
    """

    KEYS = (
        "epoch",
        "position",
        "best_fitness",
        "best_metrics",
        "metrics",
        "history",
        "skipped_steps",
        "early_stop",
        "phase",
    )

    patience: int = 0
    processes: int = 1
    position: Position = field(default_factory=Position)
    best_fitness: float = -math.inf
    best: EvalResult | None = None  # this process's best result (best_metrics is what a checkpoint keeps)
    best_metrics: dict[str, Any] | None = None
    metrics: EvalResult | None = None  # the latest validation result
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0  # optimizer steps not taken (non-finite loss or gradients), whole run
    epoch_skipped: int = 0  # the same, this epoch
    micro_batches: int = 1  # the batch is split into this many parts after an out-of-memory error
    oom_events: int = 0
    phase: dict[str, Any] = field(default_factory=dict)  # the applied phase, for inspection (ckpt info)
    stopped_early: bool = False
    early_stop: EarlyStopping = field(init=False)

    def __post_init__(self) -> None:
        self.early_stop = EarlyStopping(self.patience)

    def enter_phase(self, plan: PhasePlan) -> None:
        """The state's share of a phase plan: its record, kept in checkpoints for inspection."""
        self.phase = plan.record()

    def record_epoch(self, row: dict[str, Any], result: EvalResult | None) -> bool:
        """Add an epoch's results row; returns whether ``result`` is the best so far (by mAP50-95)."""
        self.history.append(row)
        if result is None or float(result.map50_95) <= self.best_fitness:
            return False
        self.best_fitness, self.best, self.best_metrics = float(result.map50_95), result, result.to_dict()
        return True

    def decide_early_stop(self, epoch: int, result: EvalResult | None) -> bool:
        """Whether training stops early after ``epoch``: rank 0 decides on its result and every rank returns
        that (call it on every rank). A stop is logged and recorded in ``stopped_early``."""
        if result is None or not self.early_stop.decide(epoch, float(result.map50_95)):
            return False
        LOGGER.info(self.early_stop.message())
        self.stopped_early = True
        return True

    def count_skipped(self, n: int = 1) -> None:
        """Count ``n`` optimizer steps that did not happen (non-finite loss or gradients)."""
        self.skipped_steps += n
        self.epoch_skipped += n

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint keys :attr:`KEYS`."""
        pos = self.position
        return {
            "epoch": pos.epoch,
            "position": {
                "epoch": pos.epoch,
                "iteration": pos.iteration,
                "complete": pos.complete,
                "iters_per_epoch": pos.iters_per_epoch,
            },
            "best_fitness": self.best_fitness if math.isfinite(self.best_fitness) else None,
            "best_metrics": self.best_metrics,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "history": list(self.history),
            "skipped_steps": self.skipped_steps,
            "early_stop": self.early_stop.state_dict(),
            "phase": {**self.phase, "micro_batches": self.micro_batches, "processes": self.processes},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the progress of a checkpoint."""
        missing = [k for k in ("position", "history") if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint has no {', '.join(missing)}: it holds no training state to resume")
        p = state["position"]
        self.position = Position(int(p["epoch"]), int(p["iteration"]), bool(p["complete"]), int(p["iters_per_epoch"]))
        self.best_fitness = state["best_fitness"] if state.get("best_fitness") is not None else -math.inf
        self.best_metrics = state.get("best_metrics")
        self.best = EvalResult.from_dict(self.best_metrics) if self.best_metrics else None
        self.metrics = EvalResult.from_dict(state["metrics"]) if state.get("metrics") else None
        self.history = list(state["history"] or [])
        self.skipped_steps = int(state.get("skipped_steps") or 0)
        if state.get("early_stop"):
            self.early_stop.load_state_dict(state["early_stop"])
        # keep the micro-batching an out-of-memory error forced (the resumed run would hit it again)
        self.phase = dict(state.get("phase") or {})
        micro = int(self.phase.pop("micro_batches", 1))
        saved = int(self.phase.pop("processes", self.processes))
        # after an out-of-memory split, each process now has saved/processes times the images: as many more
        # parts keep each part at the size known to fit (without one, nothing is known: the split starts at 1)
        self.micro_batches = max(1, math.ceil(micro * saved / self.processes)) if micro > 1 else 1
        if self.micro_batches != micro:
            LOGGER.warning(
                f"resume: {self.processes} processes instead of {saved}: micro-batches per step {micro} -> "
                f"{self.micro_batches} (the out-of-memory split keeps its images per micro-batch)"
            )


class RngStreams:
    """The Python, numpy, torch and CUDA random streams of every rank, as checkpoint keys ``rng``/``rng_ranks``.

    Args:
        rank: This process's rank.
        world: The number of processes.
        seed: The run's seed (re-seeding on another number of processes derives from it).
        position: Returns the training position ``(epoch, iteration)`` once the checkpoint is loaded.
    """

    KEYS = ("rng", "rng_ranks")
    STREAMS = ("python", "numpy", "torch", "cuda")

    def __init__(self, rank: int = 0, world: int = 1, seed: int = 0, position: Callable[[], Position] | None = None):
        self.rank, self.world, self.seed = rank, world, int(seed)
        self.position = position or Position
        self.gathered: list[dict[str, Any]] | None = None
        self.reseeded: tuple[str, ...] = ()  # the streams the last load re-seeded instead of restoring

    def gather(self) -> None:
        """Collect every rank's streams (a collective: every rank calls it before a save)."""
        self.gathered = dist.all_gather_object(rng_state())

    def state_dict(self) -> dict[str, Any]:
        ranks, self.gathered = self.gathered or [rng_state()], None  # gathered for one save only
        return {"rng": ranks[0], "rng_ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue this rank's own streams; with another number of processes, re-seed them all.

        Rank r of a new world has no saved stream of its own (and rank 0's for everyone would make the ranks
        draw alike), so every stream is seeded from (seed, epoch, iteration, rank): the same resume gives the
        same streams. The log names the streams re-seeded.
        """
        ranks = state.get("rng_ranks") or []
        saved_world = len(ranks) or 1
        if saved_world == self.world:
            set_rng_state(ranks[self.rank] if ranks else state["rng"])
            self.reseeded = ()
            return
        pos = self.position()
        seed_all(self.seed, pos.epoch, pos.iteration, self.rank)
        self.reseeded = self.STREAMS if torch.cuda.is_available() else self.STREAMS[:3]
        if dist.is_main():
            LOGGER.warning(
                f"resume: {self.world} processes instead of {saved_world}: re-seeded the {', '.join(self.reseeded)} "
                f"random streams of every rank from (seed, epoch {pos.epoch + 1}, iteration {pos.iteration}, rank); "
                "the samples, their augmentation and the multi-scale sizes do not draw from them"
            )


def seed_all(*key: int) -> None:
    """Seed the Python, numpy, torch and CUDA global streams from the integers ``key`` (one stream per key)."""
    words = np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(4, dtype=np.uint64)
    random.seed(int(words[0]))
    np.random.seed(int(words[1] % 2**32))
    torch.manual_seed(int(words[2] % 2**63))  # also seeds every CUDA device
