"""Training phases: what the model, batch, accumulation, lr and weight decay are at an epoch.

``PhasePlanner.plan(epoch)`` is a pure function of the epoch (freeze/unfreeze with ``freeze=``,
``freeze_epochs=``, ``freeze_batch=``, ``scale_lr=``), so a resumed run lands in the right phase.
:func:`apply_phase` puts a plan into effect; the trainer calls it at every epoch start when the plan
differs from the one applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.nn as nn

from yolotrain.config import Config
from yolotrain.engine.freeze import FROZEN, keep_frozen_bn_eval, phase_at, scale_lr, set_frozen
from yolotrain.engine.optim import accumulation, scaled_weight_decay

LOGGER = logging.getLogger("yolotrain")


@dataclass(frozen=True)
class PhasePlan:
    """One phase's settings; equal plans mean nothing needs to change."""

    name: str  # "frozen" or "unfrozen"
    frozen: tuple[str, ...]  # the module prefixes frozen in this phase (empty when unfrozen)
    batch: int  # the global batch
    accumulate: int  # batches per optimizer step
    lr: float  # every group's initial lr (the schedule multiplies it)
    weight_decay: float  # of the decayed group

    def record(self) -> dict:
        """The plan as plain data, for the checkpoint (inspection with ``yolotrain ckpt info``)."""
        return {"name": self.name, "freeze": list(self.frozen), "batch": self.batch, "accumulate": self.accumulate}


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
        # freeze= without freeze_epochs keeps the part frozen for the whole run (time= may fit more than epochs=)
        whole_run = cfg.epochs if not cfg.time else 2**31
        self.freeze_until = (cfg.freeze_epochs or whole_run) if freeze_prefixes else 0

    def plan(self, epoch: int) -> PhasePlan:
        """The phase of 0-based ``epoch``."""
        cfg = self.cfg
        name = phase_at(epoch, self.freeze_until)
        batch = cfg.freeze_batch if name == FROZEN and cfg.freeze_batch else self.batch
        if cfg.scale_lr:  # bubbliiiing-style: fit the lr to the batch, one optimizer step per batch
            accumulate, lr = 1, scale_lr(batch, cfg.nbs, self.base_lr, self.optimizer_name)
        else:  # accumulate to the nominal batch; the lr stays
            accumulate, lr = accumulation(batch, cfg.nbs), self.base_lr
        wd = scaled_weight_decay(cfg.weight_decay, batch, accumulate, cfg.nbs)
        frozen = self.freeze_prefixes if name == FROZEN else ()
        return PhasePlan(name, frozen, batch, accumulate, lr, wd)


def apply_phase(plan: PhasePlan, applied: PhasePlan | None, epoch: int, run) -> None:
    """Put ``plan`` into effect on the run's model, DDP wrapper, loader, schedule, step and optimizer.

    Args:
        plan: The phase to enter.
        applied: The phase in effect (None before the first).
        epoch: The epoch it starts at (for the log).
        run: The :class:`~yolotrain.engine.build.Run` whose parts change.
    """
    prefixes = run.planner.freeze_prefixes
    if prefixes and (applied is None or plan.frozen != applied.frozen):
        n = set_frozen(run.model, prefixes, bool(plan.frozen))
        run.step.rewrap()  # DDP registers the trainable parameters when it wraps
        if n:
            LOGGER.info(
                f"phase: {plan.name} from epoch {epoch + 1} ({n:,} parameters "
                f"{'frozen' if plan.frozen else 'unfrozen'}: {', '.join(prefixes)})"
            )
    nb = run.loaders.use_batch(plan.batch)
    run.schedule.iters_per_epoch = nb
    run.step.configure(plan.accumulate, nb)
    set_group_hyperparameters(run.optimizer, plan.lr, plan.weight_decay)
    run.state.phase = plan.record()
    if applied is not None or prefixes:
        LOGGER.info(
            f"phase: {plan.name}, batch {plan.batch}, accumulate {plan.accumulate}, lr {plan.lr:g}, weight decay "
            f"{plan.weight_decay:g}, {nb} iterations/epoch"
        )


def set_group_hyperparameters(optimizer, lr: float, weight_decay: float) -> None:
    """Every group's initial lr; weight decay on the decayed group only (norms and biases get none)."""
    for g, wd in zip(optimizer.param_groups, (weight_decay, 0.0, 0.0)):
        g["initial_lr"], g["weight_decay"] = lr, wd


def set_train_mode(train_model: nn.Module, model: nn.Module, plan: PhasePlan) -> None:
    """``train()`` the model, keeping the BatchNorm of a frozen part in eval mode (its statistics fixed)."""
    train_model.train()
    if plan.frozen:
        keep_frozen_bn_eval(model, plan.frozen)
