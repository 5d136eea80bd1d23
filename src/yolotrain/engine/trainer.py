"""The training loop: ``fit -> train_one_epoch``, each line a call on one named part of the run.

Run it with ``yolotrain train data=path/data.yaml model=n epochs=50`` or, from Python,
``Trainer(resolve({...})).fit()``. One iteration's path: :meth:`Trainer.train_one_epoch` takes a batch
from the loader, sets the lr (:class:`~yolotrain.engine.optim.Schedule`), and calls the step
(:class:`~yolotrain.engine.step.TrainStep`: forward, loss, backward and, at the window's end, the
optimizer step and EMA update); at step boundaries the ranks agree on stop/save flags
(:class:`~yolotrain.engine.preempt.Preemption`) and the checkpointer
(:class:`~yolotrain.engine.checkpoint.Checkpointer`) writes ``last.pt`` when a save is due.
Extras (logging, plots, user code) plug in through named callback events.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from yolotrain.config import Config
from yolotrain.data import set_loader_epoch
from yolotrain.data.profile import loader_advice
from yolotrain.engine import distributed as dist
from yolotrain.engine.build import Run, build_run, resolve_run
from yolotrain.engine.callbacks import Callbacks, load_callbacks
from yolotrain.engine.loggers import register_default_loggers
from yolotrain.engine.phases import PhasePlan, apply_phase, set_train_mode
from yolotrain.engine.preempt import Preemption, fork_safe_iter, shutdown_workers
from yolotrain.engine.state import Position
from yolotrain.errors import CheckpointError, Preempted, TrainingError
from yolotrain.eval import EvalResult, format_table
from yolotrain.loss import LOSS_NAMES
from yolotrain.utils.files import append_csv_row, release_dir
from yolotrain.utils.torch_utils import memory_mb, select_device

LOGGER = logging.getLogger("yolotrain")


class Trainer:
    """Trains a detector as the config says and writes the run folder.

    Callbacks receive the trainer; what they may read is the properties below (``epoch``, ``model``,
    ``metrics``, ``save_dir`` ...) and the run's parts (``trainer.run.step``, ``trainer.run.state`` ...).
    Setting ``trainer.stop = True`` ends training after the current optimizer step.

    Args:
        cfg: A resolved :class:`~yolotrain.config.Config`.
        callbacks: Extra callbacks; more can be added with ``trainer.callbacks.add(event, fn)``.
    """

    def __init__(self, cfg: Config, callbacks: Callbacks | None = None):
        self.cfg = cfg
        self.callbacks = callbacks or Callbacks()
        register_default_loggers(self.callbacks)  # TensorBoard and plots; W&B when installed; MLflow with mlflow=
        for event, fn in load_callbacks(cfg.callbacks):  # callbacks=module:function (also in DDP workers)
            self.callbacks.add(event, fn)
        self.device = select_device(cfg.device)
        self.run: Run | None = None
        self.preemption = Preemption(cfg.save_period, cfg.save_minutes, cfg.save_signal, cfg.requeue)
        self.phase: PhasePlan | None = None  # the phase in effect
        self.epoch = 0
        self.start_iter = 0  # the iteration the first (resumed) epoch starts at
        self.stop = False  # a callback may set this to end training after the current optimizer step
        self.owns_group = False  # whether fit() joined the process group (and must leave it)
        self.train_seconds = 0.0
        self.clock = time.monotonic  # what time= measures with (tests put a fake clock here)
        self.val_seconds: float | None = None  # the last epoch's validation time, by ``clock``
        self.budget_spent = False  # time= ran out mid-epoch: stop and validate
        self.images_per_s = 0.0
        self.data_wait = 0.0  # share of the last epoch's step time spent waiting for the next batch
        self.summary = ""
        # what the current iteration handles, for on_train_batch_* callbacks
        self.current_batch: dict[str, Any] | None = None
        self.loss_items: torch.Tensor | None = None
        self.last_iteration = 0

    # ----------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Join the process group, choose the run folder (and checkpoint), build the run, enter its phase."""
        self.owns_group = dist.setup(self.device, self.cfg.dist_timeout)
        cfg, resume_state, save_dir = resolve_run(self.cfg)
        try:
            self.run = build_run(
                cfg, resume_state, save_dir, self.device, lambda: self.callbacks.run("on_before_optimizer_step", self),
                lambda: self.callbacks.has("on_before_optimizer_step"),
            )  # fmt: skip
        except BaseException:
            if dist.is_main():  # the claimed folder goes again while it is empty (refused settings or data)
                release_dir(save_dir)
            raise
        self.cfg = self.run.cfg  # the resolved settings, with the batch AutoBatch chose
        self.epoch = self.run.first_epoch
        self.enter_phase(self.epoch)
        if resume_state:
            self.restore(resume_state)
        run = self.run
        LOGGER.info(
            f"train: {len(run.loaders.train_records)} images, batch {self.phase.batch}"
            + (f" ({run.loaders.rank_batch} per process x {dist.world_size()})" if dist.world_size() > 1 else "")
            + f", accumulate {self.phase.accumulate} (nominal batch {cfg.nbs}), weight decay "
            f"{self.phase.weight_decay:g}, {self.nb} iterations/epoch, warmup {run.schedule.warmup_iters} "
            f"iterations, device {run.device}"
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Put a checkpoint's whole state back and continue from its position."""
        self.run.checkpointer.load_state_dict(state)
        if self.run.budget is not None:  # the plan the run had fitted (the schedule depends on it)
            self.apply_budget(self.run.budget.plan)
        pos = self.run.state.position
        # mid-epoch, the position counts batches of this loader; at an epoch end the next epoch may be in
        # another phase (freeze_batch) with another batch count
        if not pos.complete and pos.iters_per_epoch != self.nb:
            raise CheckpointError(
                f"cannot resume: the run had {pos.iters_per_epoch} iterations per epoch, the data now gives "
                f"{self.nb} (images were added or removed)"
            )
        self.epoch, self.start_iter = pos.next_start()
        if dist.is_main():  # the checkpoint's history is authoritative: drop rows written after it
            (self.save_dir / "results.csv").unlink(missing_ok=True)
            for row in self.run.state.history:
                append_csv_row(self.save_dir / "results.csv", row)
        LOGGER.info(f"resume: at epoch {self.epoch + 1}, iteration {self.start_iter} of {self.nb}")

    def enter_phase(self, epoch: int) -> None:
        """Apply ``epoch``'s phase when it differs from the one in effect (idempotent)."""
        plan = self.run.planner.plan(epoch)
        if plan != self.phase:
            apply_phase(plan, self.phase, epoch, self.run)
            self.phase = plan

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> EvalResult | None:
        """Train for ``cfg.epochs`` epochs (or as many as fit ``cfg.time``) and return the best validation result."""
        together = False  # every rank ends here at the same point: the normal end or an agreed preemption stop
        try:
            self.callbacks.run("on_pretrain_routine_start", self)
            launch_t0 = self.clock()  # time= counts the set-up too
            self.setup()
            if self.run.budget is not None:
                self.run.budget.start(self.clock, launch_t0)
            self.callbacks.run("on_pretrain_routine_end", self)
            self.callbacks.run("on_train_start", self)
            t0 = time.perf_counter()
            if self.epoch >= self.epochs:
                LOGGER.info(
                    f"resume: this run already finished its {self.epochs} epochs"
                    + ("" if self.run.budget else "; raise epochs= to train longer")
                )
                together = True
                return self.best
            with self.preemption.handling_signals():
                epoch = self.epoch
                while epoch < self.epochs:  # time= may change the count after each epoch
                    self.epoch = epoch
                    self.enter_phase(epoch)  # freeze/unfreeze, its batch, lr and accumulation
                    self.callbacks.run("on_train_epoch_start", self)
                    t_epoch = time.perf_counter()
                    losses = self.train_one_epoch(epoch, self.start_iter if epoch == self.run.first_epoch else 0)
                    self.callbacks.run("on_train_epoch_end", self)
                    result = self.validate() if self.validation_due(epoch) else None
                    self.check_early_stop(epoch, result)
                    self.end_epoch(epoch, losses, result, time.perf_counter() - t_epoch)
                    self.callbacks.run("on_fit_epoch_end", self)
                    self.stop, _ = self.preemption.agree(self.stop)
                    self.preemption.raise_if_signalled(f"after epoch {epoch + 1}", str(self.wdir / "last.pt"))
                    if self.stop:
                        break
                    epoch += 1
            self.train_seconds = time.perf_counter() - t0
            self.callbacks.run("on_train_end", self)
            self.final_report()
            together = True
            return self.best
        except RuntimeError as e:
            self.callbacks.run("on_exception", self)
            if "DataLoader worker" in str(e):  # a loader process died (killed, out of memory, crashed)
                raise TrainingError(f"a data loader worker died: {str(e).splitlines()[0]}") from None
            raise
        except BaseException as e:
            together = isinstance(e, Preempted)  # raised on every rank right after the flags were agreed
            self.callbacks.run("on_exception", self)
            raise
        finally:
            if self.run is not None:  # stop the loader processes now, after any save
                shutdown_workers(self.run.loaders.train_loader)
                shutdown_workers(self.run.loaders.val_loader)
            if self.owns_group:
                dist.cleanup(together)

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict[str, float]:
        """One pass over the training loader from batch ``start``; returns the epoch's mean losses."""
        run, cfg = self.run, self.cfg
        loader = run.loaders.train_loader
        # a function of the epoch, so a run resumed in its last epochs has mosaic off too
        close = self.run.budget.plan.close_mosaic if self.run.budget is not None else cfg.close_mosaic
        loader.dataset.mosaic_enabled = not (close and epoch >= self.epochs - close)
        set_loader_epoch(loader, epoch, skip_batches=start)
        set_train_mode(run.step.train_model, run.model, self.phase)
        run.state.epoch_skipped = 0
        budget = run.budget
        if budget is not None and epoch == 0 and start == 0:
            budget.begin_first_epoch()
        run.step.counters.new_epoch()
        seen, t0, steps_since_log = 0, time.perf_counter(), 0
        bar = tqdm(
            enumerate(fork_safe_iter(loader), start=start), total=self.nb, initial=start,
            desc=f"epoch {epoch + 1}/{self.epochs}", disable=not (cfg.verbose and dist.is_main()),
            dynamic_ncols=True, mininterval=1.0,
        )  # fmt: skip
        for i, batch in bar:
            self.callbacks.run("on_train_batch_start", self)
            run.schedule.apply(run.optimizer, epoch, i)
            outcome = run.step(batch, epoch, i)  # forward/backward; the optimizer step at the window's end
            # loss_items stay on the device: a callback that reads them pays the host read
            self.current_batch, self.loss_items, self.last_iteration = batch, outcome.items, i
            seen += batch["img"].shape[0] * dist.world_size()  # images of the global batch
            steps_since_log += outcome.boundary
            if outcome.boundary and steps_since_log >= cfg.log_every:  # a log point: the one host read
                steps_since_log = 0
                self.log_point(bar, batch, seen / (time.perf_counter() - t0))
            self.callbacks.run("on_train_batch_end", self)
            if outcome.boundary and budget is not None:
                self.check_budget(epoch, i + 1)
            if outcome.boundary:
                self.stop, save_due = self.preemption.agree(self.stop, i + 1)
                if i + 1 < self.nb and (save_due or self.preemption.signal_received):
                    self.save_within_epoch(epoch, i + 1)
            if self.stop and (outcome.boundary or dist.world_size() == 1):  # ranks leave at the same step
                break
        self.images_per_s = seen / max(time.perf_counter() - t0, 1e-9)
        mean = self.log_point(bar, self.current_batch, self.images_per_s)  # the epoch's end is a log point
        if budget is not None:  # validation_due() must agree on every rank
            self.budget_spent = dist.broadcast_object(self.budget_spent)
        stats = getattr(loader, "stats", None)  # the loader measures how long each batch was waited for
        self.data_wait = stats.wait_share if stats is not None else 0.0
        if cfg.profile and epoch == self.run.first_epoch and dist.is_main():
            for line in loader_advice(loader, workers=cfg.workers, imgsz=cfg.imgsz, cache=cfg.cache):
                LOGGER.info(f"profile: {line}")
        return dict(zip(LOSS_NAMES, mean))

    def log_point(self, bar: tqdm, batch: dict[str, Any] | None, images_per_s: float) -> tuple[float, ...]:
        """Read the step's device counters (one host read), act on them, refresh the progress bar.

        Returns the epoch's mean losses so far. Raises :class:`TrainingError` when too many consecutive losses
        were not finite (the limit is checked here, so a run stops at the log point after it was reached).
        """
        values = self.run.step.sync()
        mean = values.mean_losses
        if not bar.disable and batch is not None:
            bar.set_postfix_str(self.progress_text(mean, batch, images_per_s))
        return mean

    def progress_text(self, mean: tuple[float, ...], batch: dict[str, Any], images_per_s: float) -> str:
        losses = " ".join(f"{n.split('_')[0]} {v:.3f}" for n, v in zip(LOSS_NAMES, mean))
        skipped = self.run.state.epoch_skipped
        return (
            f"{losses} inst {batch['cls'].shape[0]} size {self.input_size[-1]}"
            + (f" skipped {skipped}" if skipped else "")
            + f" {images_per_s:.1f} img/s"
        )

    def check_budget(self, epoch: int, done: int) -> None:
        """At an optimizer step: plan early from the first epoch's pace; stop when the budget is spent."""
        budget = self.run.budget
        plan = budget.early_plan(epoch, done, self.nb)
        if plan is not None:
            self.adopt_budget_plan(plan)
        # Rank 0's clock decides; its stop reaches every rank through the flag agreement that follows at this
        # step (no collective of its own), and budget_spent is shared once at the epoch's end.
        if dist.is_main() and not self.stop and budget.exhausted():
            LOGGER.warning(
                f"time budget {budget.hours:g} h spent at epoch {epoch + 1}, iteration {done}/{self.nb}: "
                "stopping (the plan expected more time per epoch)"
            )
            self.stop = self.budget_spent = True

    def validation_due(self, epoch: int) -> bool:
        last = epoch + 1 == self.epochs or self.budget_spent
        return self.run.validator is not None and (last or (epoch + 1) % self.cfg.val_period == 0)

    def validate(self) -> EvalResult:
        """Score the EMA (or the raw model) on the validation split."""
        self.callbacks.run("on_val_start", self)
        t0 = self.clock()
        result = self.run.state.metrics = self.run.validator(self.eval_model)
        self.callbacks.run("on_val_end", self)
        self.val_seconds = self.clock() - t0
        return result

    def check_early_stop(self, epoch: int, result: EvalResult | None) -> None:
        """Update early stopping on rank 0 and make every rank take its decision."""
        if result is None:
            return
        state = self.run.state
        stop = state.early_stop.update(epoch, float(result.map50_95)) if dist.is_main() else False
        if dist.broadcast_object(stop):
            LOGGER.info(state.early_stop.message())
            self.stop = state.stopped_early = True

    # ----------------------------------------------------------------------------------------- outputs
    def save_within_epoch(self, epoch: int, done: int) -> None:
        """Write last.pt mid-epoch (right after an optimizer step: no half-accumulated gradient), then
        stop if a signal asked for it. Every rank calls it (the save gathers every rank's RNG state)."""
        self.run.step.sync()  # the skipped-step count the checkpoint records
        self.preemption.saved(done)
        self.run.state.position = self.position(epoch, done, complete=False)
        self.run.checkpointer.save(["last.pt"])
        if dist.is_main():
            self.callbacks.run("on_model_save", self)
        self.preemption.raise_if_signalled(
            f"at epoch {epoch + 1}, iteration {done}/{self.nb}", str(self.wdir / "last.pt")
        )

    def end_epoch(self, epoch: int, losses: dict[str, float], m: EvalResult | None, seconds: float) -> None:
        """Record the epoch in results.csv and save last.pt / best.pt (rank 0 writes).

        ``m`` is this epoch's validation result, None when the epoch was not validated.
        """
        run = self.run
        if run.budget is not None:  # plan the rest of the run before the checkpoint records it
            val_seconds, self.val_seconds = (self.val_seconds if m is not None else None), None
            self.adopt_budget_plan(run.budget.end_epoch(epoch + 1, val_seconds, self.nb))
        row = {"epoch": epoch + 1, "seconds": round(seconds, 2)}
        row.update({f"train/{k}": round(v, 5) for k, v in losses.items()})
        row.update({f"lr/pg{j}": g["lr"] for j, g in enumerate(run.optimizer.param_groups)})
        for key, name in (("precision", "precision"), ("recall", "recall"), ("map50", "mAP50"),
                          ("map50_95", "mAP50-95")):  # fmt: skip
            row[f"metrics/{name}"] = round(float(getattr(m, key)), 5) if m is not None else ""
        row["skipped_steps"] = run.state.epoch_skipped
        row["amp_scale"] = run.precision.scale if run.precision.scale is not None else ""
        row["images_per_s"] = round(self.images_per_s, 2)
        row["data_wait"] = round(self.data_wait, 3)  # share of the epoch's step time spent waiting for data
        improved = run.state.record_epoch(row, m)
        self.log_epoch(epoch, m, seconds)
        run.state.position = self.position(epoch, self.nb, complete=True)
        names = ["last.pt"]
        if improved or (self.best is None and epoch + 1 == self.epochs):  # no validation: the last epoch
            names.append("best.pt")
        if self.cfg.save_epochs > 0 and (epoch + 1) % self.cfg.save_epochs == 0:
            names.append(f"epoch{epoch + 1}.pt")
        run.checkpointer.save(names)  # every rank: the RNG states are gathered first
        self.preemption.saved(0)
        if dist.is_main():
            append_csv_row(self.save_dir / "results.csv", row)
            self.callbacks.run("on_model_save", self)

    def adopt_budget_plan(self, plan) -> None:
        """Rank 0's plan on every rank (its clock decides for all), and the schedule fitted to it."""
        plan = dist.broadcast_object(plan)
        self.run.budget.plan = plan
        self.apply_budget(plan)

    def apply_budget(self, plan) -> None:
        """Fit the lr schedule (decay length and warmup) to the epochs the time budget allows."""
        self.run.schedule.epochs, self.run.schedule.warmup_iters = plan.epochs, plan.warmup_iters

    def position(self, epoch: int, iteration: int, complete: bool) -> Position:
        return Position(epoch, iteration, complete, self.nb)

    def log_epoch(self, epoch: int, m: EvalResult | None, seconds: float) -> None:
        frozen = f" ({self.phase.name}, batch {self.phase.batch})" if self.run.planner.freeze_prefixes else ""
        line = (
            f"epoch {epoch + 1}{frozen}: {self.images_per_s:.1f} images/s, "
            f"{1000 / max(self.images_per_s, 1e-9):.1f} ms/image, data wait {self.data_wait:.0%}, "
            f"mem {memory_mb(self.run.device):.0f} MB"
        )
        if m is not None:
            line += (
                f"; P {m.precision:.3f} R {m.recall:.3f} mAP50 {m.map50:.3f} mAP50-95 {m.map50_95:.3f} "
                f"({seconds:.1f}s, val {self.run.validator.seconds:.1f}s)"
            )
        LOGGER.info(line)

    def final_report(self) -> None:
        if not dist.is_main():
            return
        if self.best is not None and self.cfg.verbose:
            LOGGER.info("best epoch, per class:\n" + format_table(self.best, self.names))
        b = self.best_metrics
        summary = f"done: {self.epoch + 1} epochs in {self.train_seconds / 60:.1f} min; results in {self.save_dir}"
        if b:
            summary += f"; best mAP50 {b['mAP50']:.3f} mAP50-95 {b['mAP50-95']:.3f}"
        LOGGER.info(summary)
        self.summary = summary

    # ----------------------------------------------------------------------------------------- for callbacks
    # Read-only views of the run's parts: what loggers and user callbacks read (each has one owner).
    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes the run folder)."""
        return dist.is_main()

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def eval_model(self) -> nn.Module:
        return self.run.ema.ema if self.run.ema is not None else self.run.model

    @property
    def precision(self):
        return self.run.precision

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.run.optimizer

    @property
    def train_loader(self):
        return self.run.loaders.train_loader

    @property
    def epochs(self) -> int:
        """The run's number of epochs: ``epochs=``, or with ``time=`` what the budget allows (re-fitted each epoch)."""
        return self.run.budget.plan.epochs if self.run.budget is not None else self.cfg.epochs

    @property
    def nb(self) -> int:
        """Batches per epoch of the current phase."""
        return self.run.step.iters_per_epoch

    @property
    def input_size(self) -> tuple[int, int]:
        return self.run.step.input_size

    @property
    def names(self) -> list[str]:
        return self.run.names

    @property
    def save_dir(self) -> Path:
        return self.run.save_dir

    @property
    def wdir(self) -> Path:
        return self.run.wdir

    @property
    def metrics(self) -> EvalResult | None:
        return self.run.state.metrics

    @metrics.setter
    def metrics(self, result: EvalResult | None) -> None:
        # a callback may replace the latest result (at on_val_end / on_fit_epoch_end, before it is used)
        self.run.state.metrics = result

    @property
    def best(self) -> EvalResult | None:
        return self.run.state.best if self.run else None

    @property
    def best_metrics(self) -> dict | None:
        return self.run.state.best_metrics

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.run.state.history

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far in the run (reads the step's device counters first)."""
        self.run.step.sync(check=False)
        return self.run.state.skipped_steps
