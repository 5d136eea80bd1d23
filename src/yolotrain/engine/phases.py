"""Training phases: what the model, batch, accumulation, lr, weight decay and mosaic are at an epoch.

``PhasePlanner.plan(epoch, horizon)`` is a pure function of the epoch and the run's
:class:`~yolotrain.engine.horizon.Horizon` (freeze/unfreeze with ``freeze=``, ``freeze_epochs=``,
``freeze_batch=``, ``scale_lr=``; mosaic off in the horizon's ``close_mosaic`` tail), so a resumed run lands
in the right phase. Each part puts its own share of a plan into effect (the trainer's ``enter_phase`` calls
them in turn when the plan differs from the one in effect): the freezer the trainable parameters, the
loaders the batch, the schedule the batches per epoch, the step the accumulation and the optimizer's lr and
weight decay, the train state the record; the loader gets the mosaic switch with its epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from yolotrain.config import Config
from yolotrain.engine.freeze import FROZEN, phase_at, scale_lr
from yolotrain.engine.horizon import Horizon
from yolotrain.engine.optim import accumulation, scaled_weight_decay

LOGGER = logging.getLogger("yolotrain")

# freeze= without freeze_epochs keeps the part frozen for the whole run, however long time= makes it
WHOLE_RUN = 2**31


@dataclass(frozen=True)
class PhasePlan:
    """One phase's settings; equal plans mean nothing needs to change."""

    name: str  # "frozen" or "unfrozen"
    frozen: tuple[str, ...]  # the module prefixes frozen in this phase (empty when unfrozen)
    batch: int  # the global batch
    accumulate: int  # batches per optimizer step
    lr: float  # every group's initial lr (the schedule multiplies it)
    weight_decay: float  # of the decayed group
    mosaic: bool = True  # off only in the horizon's close_mosaic tail

    def record(self) -> dict:
        """The plan as plain data, for the checkpoint (inspection with ``yolotrain ckpt info``)."""
        return {"name": self.name, "freeze": list(self.frozen), "batch": self.batch, "accumulate": self.accumulate}

    def describe(self, iters_per_epoch: int) -> str:
        """The plan for the log."""
        return (
            f"phase: {self.name}, batch {self.batch}, accumulate {self.accumulate}, lr {self.lr:g}, weight decay "
            f"{self.weight_decay:g}, {iters_per_epoch} iterations/epoch" + ("" if self.mosaic else ", mosaic off")
        )


class PhasePlanner:
    """Turns an epoch into its :class:`PhasePlan`.

    Args:
        cfg: The run's config (``freeze_epochs``, ``freeze_batch``, ``scale_lr``, ``nbs``, ``weight_decay``).
        freeze_prefixes: What ``freeze=`` resolved to on this model (empty: no freezing).
        batch: The global batch outside the frozen phase (``batch`` or AutoBatch's choice).
        base_lr: The optimizer's lr0 (``optimizer=auto`` may have chosen it).
        optimizer_name: The resolved optimizer (SGD, Adam, AdamW), for ``scale_lr``'s limits.
    """

    def __init__(self, cfg: Config, freeze_prefixes: list[str], batch: int, base_lr: float, optimizer_name: str):
        self.cfg, self.freeze_prefixes, self.batch = cfg, tuple(freeze_prefixes), batch
        self.base_lr, self.optimizer_name = base_lr, optimizer_name
        self.freeze_until = (cfg.freeze_epochs or WHOLE_RUN) if freeze_prefixes else 0

    def batch_at(self, epoch: int) -> int:
        """The global batch of 0-based ``epoch`` (``freeze_batch`` in the frozen phase)."""
        frozen = phase_at(epoch, self.freeze_until) == FROZEN
        return self.cfg.freeze_batch if frozen and self.cfg.freeze_batch else self.batch

    def plan(self, epoch: int, horizon: Horizon) -> PhasePlan:
        """The phase of 0-based ``epoch`` in a run of ``horizon``."""
        cfg = self.cfg
        name, batch = phase_at(epoch, self.freeze_until), self.batch_at(epoch)
        if cfg.scale_lr:  # bubbliiiing-style: fit the lr to the batch, one optimizer step per batch
            accumulate, lr = 1, scale_lr(batch, cfg.nbs, self.base_lr, self.optimizer_name)
        else:  # accumulate to the nominal batch; the lr stays
            accumulate, lr = accumulation(batch, cfg.nbs), self.base_lr
        wd = scaled_weight_decay(cfg.weight_decay, batch, accumulate, cfg.nbs)
        frozen = self.freeze_prefixes if name == FROZEN else ()
        return PhasePlan(name, frozen, batch, accumulate, lr, wd, horizon.mosaic(epoch))
