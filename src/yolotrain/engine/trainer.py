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
from typing import Any

import torch

from yolotrain.config import Config
from yolotrain.engine import distributed as dist
from yolotrain.engine.build import Run, build_run, resolve_run, run_view
from yolotrain.engine.callbacks import Callbacks, load_callbacks
from yolotrain.engine.checkpoint import epoch_end_files
from yolotrain.engine.horizon import Horizon
from yolotrain.engine.loggers import register_default_loggers
from yolotrain.engine.phases import PhasePlan
from yolotrain.engine.preempt import Preemption, fork_safe_iter, raise_worker_death
from yolotrain.engine.progress import EpochProgress
from yolotrain.engine.report import epoch_line, final_report, results_row, rewrite_results, run_line
from yolotrain.engine.resume import resume_point
from yolotrain.engine.state import Position
from yolotrain.errors import Preempted
from yolotrain.eval import EvalResult
from yolotrain.loss import LOSS_NAMES
from yolotrain.utils.files import append_csv_row, released_on_failure
from yolotrain.utils.torch_utils import select_device

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
        with released_on_failure(save_dir, owner=dist.is_main()):  # refused settings or data leave no folder
            self.run = build_run(
                cfg, resume_state, save_dir, self.device, lambda: self.callbacks.run("on_before_optimizer_step", self),
                lambda: self.callbacks.has("on_before_optimizer_step"),
            )  # fmt: skip
        self.cfg = self.run.cfg  # the resolved settings, with the batch AutoBatch chose
        self.epoch = self.run.first_epoch
        self.enter_phase(self.epoch)
        if resume_state:
            self.restore(resume_state)
        LOGGER.info(run_line(self.run, self.phase, self.nb))

    def restore(self, state: dict[str, Any]) -> None:
        """Put a checkpoint's whole state back and continue from its position."""
        self.run.checkpointer.load_state_dict(state)
        self.adopt_horizon(self.run.horizon.current)  # the horizon the run had (time= fitted it)
        self.epoch, self.start_iter = resume_point(self.run.state.position, self.nb)
        if dist.is_main():  # the checkpoint's history is authoritative: drop rows written after it
            rewrite_results(self.save_dir / "results.csv", self.run.state.history)
        LOGGER.info(f"resume: at epoch {self.epoch + 1}, iteration {self.start_iter} of {self.nb}")

    def enter_phase(self, epoch: int) -> None:
        """Enter ``epoch``'s phase when it differs from the one in effect: each part applies its share."""
        run = self.run
        plan = run.planner.plan(epoch, run.horizon.current)
        if plan == self.phase:
            return
        run.freezer.enter_phase(plan, epoch)  # the trainable parameters
        nb = run.loaders.use_batch(plan.batch)  # a new training loader when the batch changes
        run.schedule.fit(run.horizon.current, nb)
        run.step.enter_phase(plan, nb)  # the DDP wrap, accumulation, the optimizer's lr and weight decay
        run.state.enter_phase(plan)  # the record checkpoints keep
        if self.phase is not None or run.freezer.prefixes:
            LOGGER.info(plan.describe(nb))
        self.phase = plan

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> EvalResult | None:
        """Train for ``cfg.epochs`` epochs (or as many as fit ``cfg.time``) and return the best validation result."""
        together = False  # every rank ends here at the same point: the normal end or an agreed preemption stop
        try:
            self.callbacks.run("on_pretrain_routine_start", self)
            launch_t0 = self.clock()  # time= counts the set-up too
            self.setup()
            self.run.horizon.start(self.clock, launch_t0)
            self.callbacks.run("on_pretrain_routine_end", self)
            self.callbacks.run("on_train_start", self)
            t0 = time.perf_counter()
            if self.epoch >= self.epochs:
                hint = self.run.horizon.finished_hint
                LOGGER.info(f"resume: this run already finished its {self.epochs} epochs{hint}")
                together = True
                return self.best
            with self.preemption.handling_signals():
                epoch = self.epoch
                while epoch < self.epochs:  # time= may change the count after each epoch
                    self.epoch = epoch
                    self.enter_phase(epoch)  # freeze/unfreeze, its batch, lr and accumulation, mosaic
                    self.callbacks.run("on_train_epoch_start", self)
                    t_epoch = time.perf_counter()
                    losses = self.train_one_epoch(epoch, self.start_iter if epoch == self.run.first_epoch else 0)
                    self.callbacks.run("on_train_epoch_end", self)
                    result = self.validate() if self.validation_due(epoch) else None
                    self.stop = self.run.state.decide_early_stop(epoch, result) or self.stop
                    self.end_epoch(epoch, losses, result, time.perf_counter() - t_epoch)
                    self.callbacks.run("on_fit_epoch_end", self)
                    self.stop, _ = self.preemption.agree(self.stop)
                    self.preemption.raise_if_signalled(f"after epoch {epoch + 1}", str(self.wdir / "last.pt"))
                    if self.stop:
                        break
                    epoch += 1
            self.train_seconds = time.perf_counter() - t0
            self.callbacks.run("on_train_end", self)
            if dist.is_main():
                self.summary = final_report(self.run, self.epoch + 1, self.train_seconds, self.cfg.verbose)
            together = True
            return self.best
        except BaseException as e:
            together = isinstance(e, Preempted)  # raised on every rank right after the flags were agreed
            self.callbacks.run("on_exception", self)
            raise_worker_death(e)
            raise
        finally:
            if self.run is not None:  # stop the loader processes now, after any save
                self.run.loaders.shutdown()
            if self.owns_group:
                dist.cleanup(together)

    def train_one_epoch(self, epoch: int, start: int = 0) -> dict[str, float]:
        """One pass over the training loader from batch ``start``; returns the epoch's mean losses."""
        run, cfg = self.run, self.cfg
        loader = run.loaders.train_loader
        loader.set_epoch(epoch, start, mosaic=self.phase.mosaic)
        run.freezer.train(run.step.train_model)
        run.state.epoch_skipped = 0
        run.horizon.begin_epoch(epoch, start)
        run.step.counters.new_epoch()
        progress = EpochProgress(
            fork_safe_iter(loader), run.step, run.state, start=start, total=self.nb,
            desc=f"epoch {epoch + 1}/{self.epochs}", show=cfg.verbose and dist.is_main(), log_every=cfg.log_every,
        )  # fmt: skip
        for i, batch in progress:
            self.callbacks.run("on_train_batch_start", self)
            run.schedule.apply(run.optimizer, epoch, i)
            outcome = run.step(batch, epoch, i)  # forward/backward; the optimizer step at the window's end
            # loss_items stay on the device: a callback that reads them pays the host read
            self.current_batch, self.loss_items, self.last_iteration = batch, outcome.items, i
            progress.after_batch(batch, outcome.boundary)  # a log point reads the step's counters
            self.callbacks.run("on_train_batch_end", self)
            if outcome.boundary:
                self.at_optimizer_step(epoch, i + 1)
            if self.stop and (outcome.boundary or dist.world_size() == 1):  # ranks leave at the same step
                break
        mean, self.images_per_s = progress.finish()  # the epoch's end is a log point
        run.horizon.share_ran_out()  # validation_due() must agree on every rank
        self.data_wait = run.loaders.data_wait(advise=epoch == run.first_epoch)
        return dict(zip(LOSS_NAMES, mean))

    def at_optimizer_step(self, epoch: int, done: int) -> None:
        """After an optimizer step: refit the horizon early (time=), stop when time is up, agree on stop and save."""
        horizon = self.run.horizon
        self.adopt_horizon(horizon.refit_early(epoch, done, self.nb))
        if not self.stop and horizon.runs_out(epoch, done, self.nb):
            self.stop = True
        self.stop, save_due = self.preemption.agree(self.stop, done)
        if done < self.nb and (save_due or self.preemption.signal_received):
            self.save_within_epoch(epoch, done)

    def validation_due(self, epoch: int) -> bool:
        last = epoch + 1 == self.epochs or self.run.horizon.ran_out
        return self.run.validator is not None and (last or (epoch + 1) % self.cfg.val_period == 0)

    def validate(self) -> EvalResult:
        """Score the EMA (or the raw model) on the validation split."""
        self.callbacks.run("on_val_start", self)
        t0 = self.clock()
        result = self.run.state.metrics = self.run.validator(self.eval_model)
        self.callbacks.run("on_val_end", self)
        self.val_seconds = self.clock() - t0
        return result

    # ----------------------------------------------------------------------------------------- outputs
    def save_within_epoch(self, epoch: int, done: int) -> None:
        """Write last.pt mid-epoch (right after an optimizer step: no half-accumulated gradient), then
        stop if a signal asked for it. Every rank calls it (the save gathers every rank's RNG state)."""
        self.run.step.sync()  # the skipped-step count the checkpoint records
        self.preemption.saved(done)
        self.run.state.position = Position(epoch, done, False, self.nb)
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
        # refit the rest of the run (time=) before the checkpoint records it
        val_seconds, self.val_seconds = (self.val_seconds if m is not None else None), None
        self.adopt_horizon(run.horizon.end_epoch(epoch + 1, val_seconds, self.nb))
        row = results_row(run, epoch, seconds, losses, m, self.images_per_s, self.data_wait)
        improved = run.state.record_epoch(row, m)
        LOGGER.info(epoch_line(run, self.phase, epoch, m, seconds, self.images_per_s, self.data_wait))
        run.state.position = Position(epoch, self.nb, True, self.nb)
        names = epoch_end_files(epoch + 1, self.epochs, improved, self.best is not None, self.cfg.save_epochs)
        run.checkpointer.save(names)  # every rank: the RNG states are gathered first
        self.preemption.saved(0)
        if dist.is_main():
            append_csv_row(self.save_dir / "results.csv", row)
            self.callbacks.run("on_model_save", self)

    def adopt_horizon(self, horizon: Horizon | None) -> None:
        """Fit the lr schedule (decay length and warmup) to a refitted horizon (None: unchanged)."""
        if horizon is not None:
            self.run.schedule.fit(horizon, self.nb)

    # ----------------------------------------------------------------------------------------- for callbacks
    # Read-only views of the run's parts: what loggers and user callbacks read (each has one owner).
    model = run_view("model", "The plain (unwrapped) model being trained.")
    eval_model = run_view("eval_model", "What validation scores: the EMA, or the model without one.")
    epochs = run_view("horizon.current.epochs", "The run's epochs: its horizon's (time=: what the budget allows).")
    precision = run_view("precision", "Autocast and the gradient scaler.")
    optimizer = run_view("optimizer")
    train_loader = run_view("loaders.train_loader")
    nb = run_view("step.iters_per_epoch", "Batches per epoch of the current phase.")
    input_size = run_view("step.input_size", "The last iteration's input size (H, W).")
    names = run_view("names", "The class names.")
    save_dir = run_view("save_dir")
    wdir = run_view("wdir")
    best_metrics = run_view("state.best_metrics")
    history = run_view("state.history", "results.csv's rows so far.")
    # a callback may replace the latest result (at on_val_end / on_fit_epoch_end, before it is used)
    metrics = run_view("state.metrics", "The latest validation result.", settable=True)

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes the run folder)."""
        return dist.is_main()

    @property
    def best(self) -> EvalResult | None:
        return self.run.state.best if self.run else None

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far in the run (reads the step's device counters first)."""
        self.run.step.sync(check=False)
        return self.run.state.skipped_steps
