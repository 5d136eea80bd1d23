"""What a run reports while it trains: its set-up line, the progress bar's text, an epoch's results.csv row and
log line, the final report, and results.csv put back to a checkpoint's history on resume.

Formatting of values the trainer hands over (it decides when to report); the results.csv columns and the
log lines live here, in one place, and the loop stays short.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from yolotrain.engine import distributed as dist
from yolotrain.engine.build import Run
from yolotrain.engine.phases import PhasePlan
from yolotrain.eval import EvalResult, format_table
from yolotrain.loss import LOSS_NAMES
from yolotrain.utils.files import append_csv_row
from yolotrain.utils.torch_utils import memory_mb

LOGGER = logging.getLogger("yolotrain")

# results.csv's metric columns and the EvalResult field each one holds
METRIC_COLUMNS = (("precision", "precision"), ("recall", "recall"), ("map50", "mAP50"), ("map50_95", "mAP50-95"))


def run_line(run: Run, plan: PhasePlan, nb: int) -> str:
    """The set-up's last line: the training images, the phase's batch and accumulation, the warmup, the device."""
    world = dist.world_size()
    return (
        f"train: {len(run.loaders.train_records)} images, batch {plan.batch}"
        + (f" ({run.loaders.rank_batch} per process x {world})" if world > 1 else "")
        + f", accumulate {plan.accumulate} (nominal batch {run.cfg.nbs}), weight decay {plan.weight_decay:g}, "
        f"{nb} iterations/epoch, warmup {run.schedule.warmup_iters} iterations, device {run.device}"
    )


def results_row(
    run: Run, epoch: int, seconds: float, losses: dict[str, float], m: EvalResult | None, images_per_s: float,
    data_wait: float,
) -> dict[str, Any]:  # fmt: skip
    """The results.csv row of 0-based ``epoch``; ``m`` is its validation result (None: not validated, empty cells)."""
    row: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(seconds, 2)}
    row.update({f"train/{k}": round(v, 5) for k, v in losses.items()})
    row.update({f"lr/pg{j}": g["lr"] for j, g in enumerate(run.optimizer.param_groups)})
    for key, name in METRIC_COLUMNS:
        row[f"metrics/{name}"] = round(float(getattr(m, key)), 5) if m is not None else ""
    row["skipped_steps"] = run.state.epoch_skipped
    row["amp_scale"] = run.precision.scale if run.precision.scale is not None else ""
    row["images_per_s"] = round(images_per_s, 2)
    row["data_wait"] = round(data_wait, 3)  # share of the epoch's step time spent waiting for data
    return row


def progress_text(
    mean: tuple[float, ...], batch: dict[str, Any], size: tuple[int, int], skipped: int, images_per_s: float
) -> str:
    """The progress bar's postfix: the epoch's mean losses, the batch's labels and input size, the pace."""
    losses = " ".join(f"{n.split('_')[0]} {v:.3f}" for n, v in zip(LOSS_NAMES, mean))
    return (
        f"{losses} inst {batch['cls'].shape[0]} size {size[-1]}"
        + (f" skipped {skipped}" if skipped else "")
        + f" {images_per_s:.1f} img/s"
    )


def epoch_line(
    run: Run, plan: PhasePlan, epoch: int, m: EvalResult | None, seconds: float, images_per_s: float, data_wait: float
) -> str:
    """The log line of 0-based ``epoch`` (in ``plan``'s phase, named when the run freezes); ``m`` as for the row."""
    phase = f" ({plan.name}, batch {plan.batch})" if run.freezer.prefixes else ""
    line = (
        f"epoch {epoch + 1}{phase}: {images_per_s:.1f} images/s, "
        f"{1000 / max(images_per_s, 1e-9):.1f} ms/image, data wait {data_wait:.0%}, mem {memory_mb(run.device):.0f} MB"
    )
    if m is not None:
        line += (
            f"; P {m.precision:.3f} R {m.recall:.3f} mAP50 {m.map50:.3f} mAP50-95 {m.map50_95:.3f} "
            f"({seconds:.1f}s, val {run.validator.seconds:.1f}s)"
        )
    return line


def final_report(run: Run, epochs: int, train_seconds: float, verbose: bool) -> str:
    """Log the best epoch's per-class table (``verbose``) and the run's summary line; returns the summary."""
    if run.state.best is not None and verbose:
        LOGGER.info("best epoch, per class:\n" + format_table(run.state.best, run.names))
    summary = f"done: {epochs} epochs in {train_seconds / 60:.1f} min; results in {run.save_dir}"
    best = run.state.best_metrics
    if best:
        summary += f"; best mAP50 {best['mAP50']:.3f} mAP50-95 {best['mAP50-95']:.3f}"
    LOGGER.info(summary)
    return summary


def rewrite_results(path: Path, history: list[dict[str, Any]]) -> None:
    """Write results.csv from a checkpoint's history (a resumed run drops the rows written after its checkpoint)."""
    path.unlink(missing_ok=True)
    for row in history:
        append_csv_row(path, row)
