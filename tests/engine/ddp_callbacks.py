"""User callbacks loaded by the DDP tests with ``callbacks=<this file>:<function>`` (not a test module)."""

import gc
import os
import signal
import sys
import time
from pathlib import Path


def on_train_batch_end(trainer):
    """Record which rank saw which images (one line per batch, one file per rank), and the process's garbage
    collector: how many objects start-up froze and whether it collects."""
    rank = os.environ.get("RANK", "0")
    out = Path(os.environ["YT_TEST_OUT"])
    with (out / f"batches_rank{rank}.txt").open("a") as f:
        f.write(f"{trainer.epoch} {trainer.current_batch['index'].tolist()}\n")
    (out / f"gc_rank{rank}.txt").write_text(f"{gc.get_freeze_count()} {gc.isenabled()}")


def record_process(trainer):
    """Record where this worker came from: its parent's pid, whether the fork server's preload is imported here
    (a fork of the server has it; a fresh interpreter does not), and whether SIGHUP, which the server ignores and
    the engine does not handle, is back to its default."""
    preloaded = "yolotrain.engine.forkserver_preload" in sys.modules
    hangup_default = signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    out = Path(os.environ["YT_TEST_OUT"]) / f"process_rank{os.environ.get('RANK', '0')}.txt"
    out.write_text(f"{os.getppid()} {preloaded} {hangup_default}")


def kill_rank1_once(trainer):
    """SIGKILL rank 1 at the last batch of the first epoch, first attempt only (torchrun restarts both)."""
    if (
        os.environ.get("RANK") == "1"
        and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        and trainer.epoch == 0
        and trainer.nb >= 2
    ):
        marker = Path(os.environ["YT_TEST_OUT"]) / "killed"
        if not marker.exists() and _is_last_batch(trainer):
            marker.write_text("1")
            os.kill(os.getpid(), signal.SIGKILL)


def _is_last_batch(trainer):
    return trainer.last_iteration + 1 == trainer.nb


def fail_on_rank1(trainer):
    """Raise on rank 1 only, at its first batch: every rank must end, with the message, not hang."""
    if os.environ.get("RANK") == "1":
        raise RuntimeError("injected failure on rank 1")


def record_size(trainer):
    """Record the multi-scale input size of every batch (one file per rank)."""
    out = Path(os.environ["YT_TEST_OUT"]) / f"sizes_rank{os.environ.get('RANK', '0')}.txt"
    with out.open("a") as f:
        f.write(f"{trainer.epoch} {trainer.last_iteration} {trainer.input_size}\n")


def mark_started(trainer):
    """Write a file once the first batch is done (the SIGTERM test waits for it), then hold every rank there
    until the SIGTERM has arrived (at most a minute): the stop is then mid-epoch however slowly it is delivered
    (a loaded machine once let the run train two more epochs between this file and the signal)."""
    if os.environ.get("RANK") == "0":
        (Path(os.environ["YT_TEST_OUT"]) / "started").write_text("1")
    deadline = time.monotonic() + 60
    while not trainer.preemption.signal_received and time.monotonic() < deadline:
        time.sleep(0.05)  # the signal handler runs in this (the main) thread, between the sleeps
