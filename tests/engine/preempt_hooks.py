"""Callbacks that the preemption tests give on the command line (``callbacks=...:function``)."""

import os
import signal
import time
from pathlib import Path

COUNT = [0]


def wait_for_stop_signal(trainer):
    """At the YT_AT-th batch (rank 0): tell the test (a marker file), then wait until the test's signal lands.

    Waiting makes the iteration the signal arrives at, and so the saved position, deterministic.
    """
    COUNT[0] += 1
    if COUNT[0] != int(os.environ["YT_AT"]) or int(os.environ.get("RANK", "0")) != 0:
        return
    Path(os.environ["YT_MARK"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not trainer.preemption.signal_received and time.monotonic() < deadline:
        time.sleep(0.01)


def send_warning_signal(trainer):
    """At the YT_AT-th batch: SIGUSR1 to this process (SLURM's ``--signal=B:USR1@120``)."""
    COUNT[0] += 1
    if COUNT[0] == int(os.environ["YT_AT"]):
        os.kill(os.getpid(), signal.SIGUSR1)


def record_order(trainer):
    """Append (epoch, iteration, image indices) of every batch to YT_ORDER."""
    with open(os.environ["YT_ORDER"], "a") as f:
        f.write(f"{trainer.epoch} {trainer.last_iteration} {trainer.current_batch['index'].tolist()}\n")


def kill_a_loader_worker(trainer):
    """At the YT_AT-th batch: SIGKILL one of this process's loader workers (an out-of-memory kill, say)."""
    COUNT[0] += 1
    if COUNT[0] == int(os.environ["YT_AT"]):
        import psutil

        os.kill(psutil.Process().children()[0].pid, signal.SIGKILL)
        time.sleep(1.0)  # the worker is gone before the loader asks it for the next batch
