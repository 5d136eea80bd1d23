"""The outcome of an evaluation and its human-readable per-class table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from yolotrain.eval.curves import Curves


@dataclass
class EvalResult:
    """Detection metrics over a validation set.

    Attributes:
        map50: COCO AP at IoU 0.50 (all areas, 100 detections per image).
        map50_95: COCO AP averaged over IoU 0.50:0.05:0.95.
        precision: Mean precision over classes present in the ground truth, at ``best_conf``.
        recall: Mean recall over the same classes, at ``best_conf``.
        best_conf: Confidence threshold that maximizes the mean per-class F1 at IoU 0.50.
        images: Images evaluated.
        instances: Non-crowd ground-truth boxes.
        per_class: One dict per class with instances: ``class_id``, ``name``, ``images``,
            ``instances``, ``precision``, ``recall``, ``map50``, ``map50_95``.
        curves: PR curves and confusion matrix for plots (None when there was no ground truth); left
            out of :meth:`to_dict`, so checkpoints and JSON output stay small.
    """

    map50: float = 0.0
    map50_95: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    best_conf: float = 0.0
    images: int = 0
    instances: int = 0
    per_class: list[dict[str, Any]] = field(default_factory=list)
    curves: Curves | None = field(default=None, repr=False, compare=False)

    @property
    def fitness(self) -> float:
        """Single number for picking the best checkpoint (mAP50-95 weighted, mAP50 breaks ties)."""
        return 0.9 * self.map50_95 + 0.1 * self.map50

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict with the user-facing key names (``mAP50``, ``mAP50-95``, ...)."""
        return {
            "mAP50": self.map50,
            "mAP50-95": self.map50_95,
            "precision": self.precision,
            "recall": self.recall,
            "best_conf": self.best_conf,
            "images": self.images,
            "instances": self.instances,
            "per_class": [_plain_row(row) for row in self.per_class],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict` (curves are not stored, so they stay None)."""
        return cls(
            map50=d["mAP50"],
            map50_95=d["mAP50-95"],
            precision=d["precision"],
            recall=d["recall"],
            best_conf=d["best_conf"],
            images=d["images"],
            instances=d["instances"],
            per_class=list(d.get("per_class") or []),
        )


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """Copy of a per-class row with numpy scalars turned into Python numbers (for JSON)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def format_table(result: EvalResult, names: Sequence[str] | None = None) -> str:
    """Aligned text table: an ``all`` row, then one row per class that has instances.

    Args:
        result: Metrics to show.
        names: Class names by index; when given they replace the names stored in ``result``.

    Returns:
        The table as one string, rows separated by newlines, without a trailing newline.
    """
    header = ("class", "images", "instances", "P", "R", "mAP50", "mAP50-95")
    rows = [("all", result.images, result.instances, result.precision, result.recall, result.map50, result.map50_95)]
    for row in result.per_class:
        cid = row.get("class_id")
        name = names[cid] if names is not None and cid is not None and cid < len(names) else row["name"]
        rows.append(
            (name, row["images"], row["instances"], row["precision"], row["recall"], row["map50"], row["map50_95"])
        )
    cells = [list(header)] + [[str(r[0]), str(r[1]), str(r[2])] + [f"{v:.3f}" for v in r[3:]] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    # Names read best left-aligned, numbers right-aligned so digits line up.
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in cells
    ]
    return "\n".join(lines)


__all__ = ["EvalResult", "format_table"]
