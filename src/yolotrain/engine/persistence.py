"""The trainer's persistence: the checkpoint it writes, restoring one, and saving on signals.

Kept apart from the loop in ``trainer.py``; :class:`Trainer` inherits these methods.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import torch

from yolotrain import __version__
from yolotrain.engine import distributed as dist
from yolotrain.engine.checkpoint import save_checkpoint
from yolotrain.engine.resume import rng_state, set_rng_state
from yolotrain.errors import CheckpointError, Preempted
from yolotrain.utils.files import append_csv_row

LOGGER = logging.getLogger("yolotrain")


class CheckpointMixin:
    """Whole-state checkpoints, exact restore, mid-epoch saves and SIGTERM/SIGINT handling."""

    def restore(self, state: dict[str, Any]) -> None:
        """Put the whole training state of a checkpoint back, and the position to continue from."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state["precision"])
        self.best_fitness = state["best_fitness"] if state.get("best_fitness") is not None else -math.inf
        self.best_metrics = state.get("best_metrics")
        self.history = list(state.get("history") or [])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("early_stop"):
            self.early_stop.load_state_dict(state["early_stop"])
        # keep the micro-batching an out-of-memory error forced (the resumed run would hit it again)
        self.micro_batches = int((state.get("phase") or {}).get("micro_batches", 1))
        pos = state["position"]
        # mid-epoch, the position counts batches of this loader; at an epoch end the next epoch may be in
        # another phase (freeze_batch) with another batch count
        if not pos["complete"] and pos["iters_per_epoch"] != self.nb:
            raise CheckpointError(
                f"cannot resume: the run had {pos['iters_per_epoch']} iterations per epoch, the "
                f"data now gives {self.nb} (images were added or removed)"
            )
        self.start_epoch, self.start_iter = (
            (pos["epoch"] + 1, 0) if pos["complete"] else (pos["epoch"], pos["iteration"])
        )
        ranks = state.get("rng_ranks") or []
        # each rank continues its own random streams; with another number of processes, rank 0's
        set_rng_state(ranks[dist.rank()] if len(ranks) == self.world else state["rng"])
        if dist.is_main():  # the checkpoint's history is authoritative: drop rows written after it
            path = self.save_dir / "results.csv"
            path.unlink(missing_ok=True)
            for row in self.history:
                self.write_csv(row)
        LOGGER.info(f"resume: at epoch {self.start_epoch + 1}, iteration {self.start_iter} of {self.nb}")

    def _on_signal(self, signum, _frame) -> None:
        if self.signal_received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_received = signum
        LOGGER.warning(f"{signal.Signals(signum).name} received: saving at the next optimizer step, then exiting")

    def agree_on_flags(self, done: int | None = None) -> None:
        """Make the stop, signal and save-now flags the same on every rank (the max over ranks).

        Called at optimizer-step boundaries. In one process it only evaluates the save timer. A signal that
        reached one rank, or a stop set by a callback on one rank, stops all of them at the same step.
        """
        cfg = self.cfg
        due = done is not None and (
            (cfg.save_period > 0 and done - self.last_save_iter >= cfg.save_period)
            or (cfg.save_minutes > 0 and time.monotonic() - self.last_save_time >= cfg.save_minutes * 60)
        )
        if self.world > 1:
            signum, stop, due = dist.all_reduce_list([self.signal_received, float(self.stop), float(due)], "max")
            self.signal_received, self.stop = int(signum), bool(stop)
        self.save_due = bool(due)

    def save_within_epoch(self, epoch: int, done: int) -> None:
        """Write last.pt mid-epoch when ``save_period``/``save_minutes`` is due or a signal arrived.

        Called on every rank right after an optimizer step and :meth:`agree_on_flags`, so the saved state
        has no half-accumulated gradient and a resumed run continues exactly.
        """
        if not (self.save_due or self.signal_received):
            return
        self.last_save_iter, self.last_save_time = done, time.monotonic()
        rngs = dist.all_gather_object(rng_state())  # a collective: every rank takes part
        if dist.is_main():
            save_checkpoint(self.checkpoint_state(epoch, done, complete=False, rngs=rngs), self.wdir / "last.pt")
            self.callbacks.run("on_model_save", self)
        if self.signal_received:
            raise Preempted(
                f"stopped by {signal.Signals(self.signal_received).name} at epoch {epoch + 1}, "
                f"iteration {done}/{self.nb}; continue with resume={self.wdir / 'last.pt'}"
            )

    def install_signal_handlers(self) -> dict:
        """Turn SIGTERM/SIGINT into a save-then-exit (main thread only; signals cannot be set elsewhere)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    @staticmethod
    def restore_signal_handlers(old: dict) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def write_csv(self, row: dict[str, Any]) -> None:
        append_csv_row(self.save_dir / "results.csv", row)

    def checkpoint_state(
        self, epoch: int, iteration: int, complete: bool, rngs: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The whole training state as tensors and plain data (loadable with ``weights_only=True``).

        ``iteration`` batches of ``epoch`` are done; ``complete`` marks the end of the epoch (including
        validation), so a resume starts the next epoch. ``rngs`` holds every rank's RNG state (from
        ``all_gather_object``); rank 0's alone is taken when it is None.
        """
        rngs = rngs or [rng_state()]
        return {
            "epoch": epoch,
            "position": {"epoch": epoch, "iteration": iteration, "complete": complete, "iters_per_epoch": self.nb},
            "best_fitness": self.best_fitness if math.isfinite(self.best_fitness) else None,
            "model_cfg": self.model.config(),
            "names": list(self.names),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict()["model"] if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "config": self.cfg.to_dict(),
            "data_yaml": self.data["yaml_file"],
            "history": self.history,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "optimizer_name": self.optimizer_name,
            "base_lr": self.lr,
            "best_metrics": self.best_metrics,
            "skipped_steps": self.skipped_steps,
            "early_stop": self.early_stop.state_dict(),
            # derived from the epoch on resume; recorded for inspection (yolotrain ckpt info)
            "phase": {
                "name": self.phase,
                "freeze": list(self.freeze_prefixes),
                "batch": self.phase_global_batch,
                "accumulate": self.accumulate,
                "micro_batches": self.micro_batches,
                "mosaic": bool(getattr(self.train_loader.dataset, "mosaic_enabled", True)),
            },
            "rng": rngs[0],
            "rng_ranks": rngs,
            "versions": {"yolotrain": __version__, "torch": torch.__version__},
        }
