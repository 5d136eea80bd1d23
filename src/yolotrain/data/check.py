"""``yolotrain data check``: what a dataset holds and everything wrong with it, before training.

Run it with ``yolotrain data check data=path/data.yaml`` (add ``json=true`` for a JSON summary as
the last stdout line). The exit code is 1 when a split cannot be used (its entry is missing or
unreadable, it has no usable image, or ``train`` has no box to learn from), else 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yolotrain.data.data_yaml import load_data_yaml
from yolotrain.data.labels import ScanReport
from yolotrain.data.records import ImageRecord
from yolotrain.data.scan import scan_split
from yolotrain.errors import DataError

LOGGER = logging.getLogger("yolotrain")

# COCO's size ranges, on box area in original-image pixels (COCO itself uses the mask area).
SMALL_AREA = 32**2
LARGE_AREA = 96**2
PERCENTILES = (0, 5, 50, 95, 100)
# a train split whose most frequent class is in this many times more images than its rarest is long-tailed
LONG_TAIL_RATIO = 10.0


@dataclass
class SplitCheck:
    """What ``data check`` found in one split.

    Attributes:
        name: Split name.
        usable: False when training/evaluating on the split would fail or be meaningless.
        error: Why the split is unusable, one line.
        report: The scan report (None when the scan itself failed).
        stats: Counts and box statistics (see :func:`split_stats`).
    """

    name: str
    usable: bool = True
    error: str = ""
    report: ScanReport | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.percentile(values, PERCENTILES)
    keys = ("min" if p == 0 else "max" if p == 100 else f"p{p}" for p in PERCENTILES)
    return {k: round(float(v), 1) for k, v in zip(keys, q)}


def split_stats(records: list[ImageRecord], nc: int) -> dict[str, Any]:
    """Image/instance counts, class histogram and box sizes of one split.

    Args:
        records: The split's records.
        nc: Number of classes.

    Returns:
        A JSON-able dict: ``images``, ``background_images``, ``instances``, ``crowd_instances``,
        per class ``class_instances`` / ``class_crowd`` / ``class_images``, ``box_width_px`` and
        ``box_height_px`` percentiles (min, p5, p50, p95, max) and ``area`` counts
        (small < 32², medium, large >= 96²), plus ``duplicate_files`` and ``imbalance_ratio`` (images of
        the most frequent class / images of the rarest, over classes with images; None without any).
    """
    counts = np.asarray([r.num_instances for r in records], dtype=np.int64)
    cls = np.concatenate([r.cls for r in records]) if records else np.zeros(0, np.int64)
    xywh = np.concatenate([r.bboxes for r in records]) if records else np.zeros((0, 4), np.float32)
    crowd = np.concatenate(
        [r.crowd if r.crowd is not None else np.zeros(r.num_instances, bool) for r in records]
    ) if records else np.zeros(0, bool)  # fmt: skip
    img_w = np.repeat(np.asarray([r.width for r in records], dtype=np.float64), counts)
    img_h = np.repeat(np.asarray([r.height for r in records], dtype=np.float64), counts)
    img_idx = np.repeat(np.arange(len(records)), counts)
    w_px, h_px = xywh[:, 2] * img_w, xywh[:, 3] * img_h
    area = w_px * h_px
    # Images per class: count each (image, class) pair once.
    pairs = np.unique(np.stack([img_idx, cls], 1), axis=0) if len(cls) else np.zeros((0, 2), np.int64)
    files = [r.im_file for r in records]
    class_images = np.bincount(pairs[:, 1], minlength=nc)[:nc]
    present = class_images[class_images > 0]
    return {
        "images": len(records),
        "background_images": int((counts == 0).sum()),
        "instances": int(len(cls)),
        "crowd_instances": int(crowd.sum()),
        "class_instances": np.bincount(cls[~crowd], minlength=nc)[:nc].tolist(),
        "class_crowd": np.bincount(cls[crowd], minlength=nc)[:nc].tolist(),
        "class_images": class_images.tolist(),
        "imbalance_ratio": round(float(present.max() / present.min()), 2) if len(present) else None,
        "box_width_px": _percentiles(w_px),
        "box_height_px": _percentiles(h_px),
        "area": {
            "small": int((area < SMALL_AREA).sum()),
            "medium": int(((area >= SMALL_AREA) & (area < LARGE_AREA)).sum()),
            "large": int((area >= LARGE_AREA).sum()),
        },
        "duplicate_files": len(files) - len(set(files)),
    }


def check_dataset(data_yaml: str, use_cache: bool = True) -> tuple[dict[str, Any], list[SplitCheck]]:
    """Scan every split of a data YAML and collect statistics and problems.

    Args:
        data_yaml: The data YAML.
        use_cache: Read and write label caches (their stored reports keep every problem message).

    Returns:
        ``(data, checks)``: the resolved data YAML and one :class:`SplitCheck` per split present.

    Raises:
        DataError: The data YAML itself is unusable (missing, malformed, mixed formats...).
    """
    data = load_data_yaml(data_yaml)
    checks: list[SplitCheck] = []
    files_by_split: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        if not data[split]:
            continue
        chk = SplitCheck(split)
        checks.append(chk)
        try:
            records, chk.report = scan_split(
                data[split], data["nc"], split, root=data["path"], use_cache=use_cache, log_problems=False
            )
        except DataError as e:
            chk.usable, chk.error = False, str(e)
            continue
        chk.stats = split_stats(records, data["nc"])
        files_by_split[split] = {r.im_file for r in records}
        if split == "train" and chk.stats["instances"] == chk.stats["crowd_instances"]:
            chk.usable = False
            chk.error = "train: no boxes to learn from (every image is background or crowd only)"
    # The same file in two splits inflates validation scores: report it, but it is not fatal.
    names = list(files_by_split)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = files_by_split[a] & files_by_split[b]
            if shared:
                chk = next(c for c in checks if c.name == b)
                chk.stats[f"shared_with_{a}"] = len(shared)
    return data, checks


def _row(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:g}" for k, v in values.items()) or "-"


def suggested_rfs_threshold(class_images: list[int], images: int) -> float:
    """An ``rfs_threshold`` for this split: the median class's image share, so the classes rarer than the
    median class repeat (by up to sqrt(median share / rarest share)), the others do not."""
    shares = np.asarray([c for c in class_images if c > 0], dtype=np.float64) / max(images, 1)
    return float(f"{np.median(shares):.2g}") if len(shares) else 0.1


def _balance_lines(split: str, names: list[str], s: dict[str, Any]) -> list[str]:
    """The imbalance ratio, and for a long-tailed train split the settings that address it."""
    ratio = s.get("imbalance_ratio")
    if ratio is None:
        return []
    counts = s["class_images"]
    present = [i for i, c in enumerate(counts) if c > 0]
    if len(present) < 2:  # one class: nothing to compare
        return []
    most = max(present, key=lambda i: counts[i])
    least = min((i for i in present if i != most), key=lambda i: counts[i])
    lines = [
        f"  imbalance ratio {ratio:g} (images of {names[most]} {counts[most]} / of {names[least]} {counts[least]})"
    ]
    if split == "train" and ratio >= LONG_TAIL_RATIO:
        t = suggested_rfs_threshold(counts, s["images"])
        lines.append(
            f"  long-tailed (ratio >= {LONG_TAIL_RATIO:g}): consider sampler=repeat_factor rfs_threshold={t:g} "
            "(rare classes' images repeat) and cls_weights=auto (rare classes weigh more in the loss)"
        )
    return lines


def format_check(data: dict[str, Any], checks: list[SplitCheck]) -> str:
    """The human-readable ``data check`` report: counts, histogram, box sizes, every problem."""
    lines = [f"data: {data['yaml_file']} ({data['format']}, {data['nc']} classes)"]
    width = max(10, *(len(n) for n in data["names"]))
    for chk in checks:
        if not chk.usable and chk.report is None:
            lines.append(f"{chk.name}: UNUSABLE: {chk.error}")
            continue
        s, rep = chk.stats, chk.report
        assert rep is not None
        lines.append(f"{chk.name}: {rep.summary()}")
        lines.append(f"  images {s['images']} ({s['background_images']} background), instances {s['instances']} "
                     f"({s['crowd_instances']} crowd/difficult)")  # fmt: skip
        lines.append(f"  {'class':<{width + 5}} {'instances':>9} {'crowd':>7} {'images':>7}")
        for i, name in enumerate(data["names"]):
            lines.append(f"  {i:>4} {name:<{width}} {s['class_instances'][i]:>9} {s['class_crowd'][i]:>7} "
                         f"{s['class_images'][i]:>7}")  # fmt: skip
        lines.extend(_balance_lines(chk.name, data["names"], s))
        lines.append(f"  box width  px: {_row(s['box_width_px'])}")
        lines.append(f"  box height px: {_row(s['box_height_px'])}")
        a = s["area"]
        lines.append(f"  box area: small {a['small']} (< 32x32 px), medium {a['medium']}, large {a['large']} "
                     "(>= 96x96 px)")  # fmt: skip
        notes = [f"{s['duplicate_files']} image files listed more than once"] if s["duplicate_files"] else []
        notes += [f"{v} images also in {k[12:]}" for k, v in s.items() if k.startswith("shared_with_")]
        empty = [n for n, c in zip(data["names"], s["class_instances"]) if c == 0]
        if empty:
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            notes.append(f"{len(empty)} classes have no (non-crowd) box: {', '.join(empty[:10])}{more}")
        if not chk.usable:
            notes.append(f"UNUSABLE: {chk.error}")
        problems = rep.messages + notes
        lines.append(f"  problems: {len(problems)}" if problems else "  problems: none")
        lines.extend(f"    {m}" for m in problems)
    bad = [c.name for c in checks if not c.usable]
    lines.append(f"result: FAILED ({', '.join(bad)} unusable)" if bad else "result: OK")
    return "\n".join(lines)


def check_summary(data: dict[str, Any], checks: list[SplitCheck]) -> dict[str, Any]:
    """JSON-able summary (``json=true``): per split its usability, error, counts, stats, problems."""
    splits: dict[str, Any] = {}
    for c in checks:
        d: dict[str, Any] = {"usable": c.usable, "error": c.error or None, **c.stats}
        if c.report is not None:
            rep = c.report.to_json()
            d["problems"] = rep.pop("messages")
            d["report"] = {k: v for k, v in rep.items() if k != "split"}
        splits[c.name] = d
    return {
        "yaml_file": data["yaml_file"],
        "format": data["format"],
        "nc": data["nc"],
        "names": data["names"],
        "ok": all(c.usable for c in checks),
        "splits": splits,
    }
