"""Stopping cleanly: SIGTERM/SIGINT handling, the warning signal, the save timer, flags agreed over ranks.

A stop signal does not stop training where it lands: :class:`Preemption` records it, the trainer finishes
the current accumulation window, saves ``last.pt`` and raises :class:`~yolotrain.errors.Preempted` (exit
code 75). Schedulers signal every process of a job (SLURM) or forward the signal (torchrun), so the same
signal often arrives twice within milliseconds: a repeat within :data:`REPEAT_WINDOW_S` is the same
event; a second signal after that stops at once. The warning signal (``save_signal=USR1``) saves at the
next optimizer step and training goes on; with ``requeue=true`` under SLURM the job is then requeued.
Loader worker processes ignore stop signals (:func:`yolotrain.data.loader.ignore_stop_signals`); the
main process shuts them down. Under DDP the flags are made the same on every rank at each optimizer-step
boundary, so all ranks save and stop at the same step.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from yolotrain.data.loader import STOP_SIGNALS
from yolotrain.engine import distributed as dist
from yolotrain.errors import Preempted, TrainingError

LOGGER = logging.getLogger("yolotrain")
REPEAT_WINDOW_S = 1.0  # a stop signal repeated within this many seconds is the same event delivered twice


def fork_safe_iter(loader: Iterable) -> Iterator:
    """Iterate ``loader`` with stop signals held back until its first batch, while it starts worker processes.

    A signal that arrives between a worker's fork and its :func:`yolotrain.data.loader.ignore_stop_signals`
    would kill it; blocked, it waits, and the worker discards it once it ignores it. The main process gets it
    right after the first batch. (A loader's ``__iter__`` may be a generator that starts the workers only at
    the first ``next``, so the first ``next`` is what is guarded.)
    """
    it = iter(loader)
    guard = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if guard else None
    try:
        first = next(it, _END)
    finally:
        if guard:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if first is _END:
        return
    yield first
    yield from it


_END = object()


def shutdown_workers(loader) -> None:
    """Stop a loader's persistent worker processes now (they would otherwise be stopped at exit)."""
    iterator = getattr(loader, "_iterator", None)  # DataLoader keeps its persistent workers' iterator here
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def raise_worker_death(e: BaseException) -> None:
    """Raise a loader process's death (killed, out of memory, crashed) as a :class:`TrainingError` saying so."""
    if isinstance(e, RuntimeError) and "DataLoader worker" in str(e):
        raise TrainingError(f"a data loader worker died: {str(e).splitlines()[0]}") from None


class Preemption:
    """Signals received, the save timer, and the agreement of stop/save flags over ranks.

    Args:
        save_period: Save within an epoch every this many iterations (0: off).
        save_minutes: Save within an epoch every this many minutes (0: off).
        save_signal: The warning signal's name (``USR1``...): save at the next optimizer step, keep training.
        requeue: After a save asked for by the warning signal, requeue the SLURM job.
    """

    def __init__(self, save_period: int = 0, save_minutes: float = 0.0, save_signal: str = "", requeue: bool = False):
        self.save_period, self.save_minutes = save_period, save_minutes
        self.save_signal = getattr(signal, f"SIG{save_signal.upper()}") if save_signal else None
        self.requeue = requeue
        self.signal_received = 0  # the SIGTERM/SIGINT number: save at the next optimizer step, then exit
        self.signal_time = 0.0
        self.save_requested = False  # the warning signal arrived: save at the next optimizer step
        self.requeued = False
        self.last_save_iter, self.last_save_time = 0, time.monotonic()

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turn SIGTERM/SIGINT into a save-then-exit while inside (main thread only: Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        if self.save_signal is not None:
            old[self.save_signal] = signal.signal(self.save_signal, self._on_save_signal)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        now = time.monotonic()
        if self.signal_received:
            if now - self.signal_time < REPEAT_WINDOW_S:
                return  # the same event delivered twice (to the process group and forwarded by a launcher)
            raise KeyboardInterrupt  # a second signal stops at once
        self.signal_received, self.signal_time = signum, now
        LOGGER.warning(f"{signal.Signals(signum).name} received: saving at the next optimizer step, then exiting")

    def _on_save_signal(self, signum, _frame) -> None:
        self.save_requested = True
        LOGGER.warning(f"{signal.Signals(signum).name} received: saving at the next optimizer step, then going on")

    def agree(self, stop: bool, done: int | None = None) -> tuple[bool, bool]:
        """Make the stop, signal and save-now flags the same on every rank (the max over ranks).

        Args:
            stop: This rank's stop request (a callback's ``trainer.stop``).
            done: Iterations done in the epoch at an optimizer-step boundary; None at an epoch's end (the
                save timer is not evaluated there: the epoch end saves anyway).

        Returns:
            ``(stop, save_due)``, the same on every rank; ``signal_received`` is agreed too.
        """
        due = done is not None and (
            (self.save_period > 0 and done - self.last_save_iter >= self.save_period)
            or (self.save_minutes > 0 and time.monotonic() - self.last_save_time >= self.save_minutes * 60)
        )
        flags = [self.signal_received, float(stop), float(due), float(self.save_requested)]
        if dist.world_size() > 1:
            flags = dist.all_reduce_list(flags, "max")
            self.signal_received, self.save_requested = int(flags[0]), bool(flags[3])
        stop, due = bool(flags[1]), bool(flags[2])
        return stop, due or (done is not None and self.save_requested)

    def saved(self, done: int) -> None:
        """Restart the save timer after a save at iteration ``done`` of the epoch (0 at an epoch's end).

        A save the warning signal asked for is done now; with ``requeue=true`` rank 0 requeues the job.
        """
        self.last_save_iter, self.last_save_time = done, time.monotonic()
        if self.save_requested:
            self.save_requested = False
            if self.requeue and not self.requeued and dist.is_main():
                self.requeued = request_requeue()

    def raise_if_signalled(self, where: str, last: str) -> None:
        """Raise :class:`Preempted` when a signal arrived, naming where training stopped and how to go on."""
        if self.signal_received:
            raise Preempted(
                f"stopped by {signal.Signals(self.signal_received).name} {where}; continue with resume={last}"
            )


def request_requeue() -> bool:
    """Ask SLURM to requeue this job (``scontrol requeue $SLURM_JOB_ID``); warn and return False elsewhere.

    SLURM then stops the job (SIGTERM to every process: the trainer saves and exits 75) and starts it again
    later; the restarted job continues from ``last.pt`` (``resume=auto``, see :mod:`yolotrain.engine.resume`).
    """
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    if not job:
        LOGGER.warning("requeue=true: not running under SLURM (no SLURM_JOB_ID); the job was not requeued")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        LOGGER.warning(f"requeue=true: scontrol is not on PATH; job {job} was not requeued")
        return False
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[0]
        LOGGER.warning(f"requeue=true: scontrol requeue {job} failed: {detail}")
        return False
    LOGGER.warning(f"requeue=true: asked SLURM to requeue job {job}; it will continue from last.pt")
    return True
