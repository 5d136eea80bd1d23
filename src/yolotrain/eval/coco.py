"""COCO-exact detection metrics: collect per-image boxes, then score them with faster-coco-eval.

Typical use in a validation loop::

    evaluator = DetectionEvaluator(names)
    for image_id, (w, h), gt_boxes, gt_cls, pred in batches:    # boxes in original pixels, xyxy
        evaluator.add(image_id, w, h, gt_boxes, gt_cls, pred)   # pred: (m, 6) x1 y1 x2 y2 score cls
    result = evaluator.compute()
    print(format_table(result, names))

mAP comes from the COCO library itself (``COCOeval_faster``, the same numbers pycocotools gives), so
results are comparable with published COCO figures. Precision and recall come from
:mod:`yolotrain.eval.metrics`, which repeats COCO's matching at IoU 0.50 because the library does
not expose it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from yolotrain.errors import DataError
from yolotrain.eval.curves import RECALL_POINTS, Curves, confusion_matrix, pr_curves
from yolotrain.eval.interp_ap import ultralytics_style_ap
from yolotrain.eval.metrics import best_f1_precision_recall, match_detections
from yolotrain.eval.result import EvalResult

LOGGER = logging.getLogger("yolotrain")

AP_STYLES = ("coco", "ultralytics")
_STATE_KEYS = ("image_ids", "sizes", "gt_boxes", "gt_cls", "gt_crowd", "preds")


def _to_numpy(x: Any, dtype: type, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    """Convert a tensor / array / list to a numpy array of shape (n, *shape_tail)."""
    if x is None:
        return np.zeros((0, *shape_tail), dtype=dtype)
    if hasattr(x, "detach"):  # torch.Tensor, possibly on a GPU; avoids importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if shape_tail == () and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # class columns often arrive as (n, 1), e.g. sliced from a label tensor
    if arr.size == 0:
        return np.zeros((0, *shape_tail), dtype=dtype)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(f"{what} must have shape (n, {', '.join(map(str, shape_tail))}), got {arr.shape}")
    return arr


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Corner boxes to COCO's top-left + size, with negative sizes clipped to zero."""
    wh = np.clip(boxes[:, 2:4] - boxes[:, 0:2], 0, None)
    return np.concatenate([boxes[:, 0:2], wh], axis=1)


class DetectionEvaluator:
    """Accumulates ground truth and predictions per image and computes COCO mAP, P and R.

    State is kept as plain lists of numpy arrays so ranks can exchange it with
    ``torch.distributed.all_gather_object`` (see :meth:`state` and :meth:`merge`).

    Args:
        names: Class names; class index ``i`` becomes COCO category id ``i + 1``.
        confusion_conf: Confidence threshold of the confusion matrix in ``result.curves``; None uses the
            best-F1 threshold, so the matrix shows the operating point that P and R describe.
        ap_style: ``coco`` (COCO-exact mAP, the default) or ``ultralytics`` (mAP as the YOLOv5 / Ultralytics
            validators compute it, for like-for-like comparisons; see :mod:`yolotrain.eval.interp_ap`).
            Precision, recall and the curves use COCO's matching either way.
    """

    def __init__(self, names: Sequence[str], confusion_conf: float | None = None, ap_style: str = "coco") -> None:
        if len(names) == 0:
            raise ValueError("DetectionEvaluator needs at least one class name")
        if ap_style not in AP_STYLES:
            raise ValueError(f"ap_style: expected one of {', '.join(AP_STYLES)}, got {ap_style!r}")
        self.names = [str(n) for n in names]
        self.confusion_conf = confusion_conf
        self.ap_style = ap_style
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._state: dict[str, list] = {key: [] for key in _STATE_KEYS}

    def __len__(self) -> int:
        return len(self._state["image_ids"])

    def add(
        self,
        image_id: int,
        width: int,
        height: int,
        gt_boxes: Any,
        gt_cls: Any,
        pred: Any,
        gt_crowd: Any | None = None,
    ) -> None:
        """Record one image.

        Args:
            image_id: Unique id of the image; a repeated id (for example the padding a
                ``DistributedSampler`` adds) is evaluated only once.
            width: Original image width in pixels.
            height: Original image height in pixels.
            gt_boxes: Ground truth (n, 4) xyxy in original pixels (numpy, torch or list); may be empty.
            gt_cls: Ground-truth class indices (n,).
            pred: Predictions (m, 6) ``[x1, y1, x2, y2, score, cls]`` in original pixels; may be empty.
            gt_crowd: Optional (n,) flags marking crowd regions, which neither count as instances nor
                penalize detections that fall on them.

        A box with x2 < x1 or y2 < y1 is stored as zero-size, so an inverted prediction is a false
        positive (pycocotools would give it a negative area and silently ignore it).

        Raises:
            DataError: A ground-truth class is outside ``names``.
            ValueError: Shapes disagree or a predicted class is outside ``names``.
        """
        boxes = _to_numpy(gt_boxes, np.float64, (4,), "gt_boxes")
        cls = _to_numpy(gt_cls, np.float64, (), "gt_cls").round().astype(np.int64)
        crowd = _to_numpy(gt_crowd, bool, (), "gt_crowd") if gt_crowd is not None else np.zeros(len(boxes), bool)
        det = _to_numpy(pred, np.float64, (6,), "pred")
        if not (len(boxes) == len(cls) == len(crowd)):
            raise ValueError(
                f"image {image_id}: gt_boxes ({len(boxes)}), gt_cls ({len(cls)}) and gt_crowd ({len(crowd)}) "
                "must have the same length"
            )
        n_cls = len(self.names)
        if cls.size and (cls.min() < 0 or cls.max() >= n_cls):
            bad = int(cls[(cls < 0) | (cls >= n_cls)][0])
            raise DataError(f"image {image_id}: ground-truth class {bad} is outside the {n_cls} dataset names")
        finite = np.isfinite(det).all(axis=1)
        if not finite.all():
            LOGGER.warning("image %s: dropped %d non-finite predictions", image_id, int((~finite).sum()))
            det = det[finite]
        det_cls = det[:, 5].round()
        if det_cls.size and (det_cls.min() < 0 or det_cls.max() >= n_cls):
            raise ValueError(f"image {image_id}: predicted class {int(det_cls.max())} is outside {n_cls} names")
        det = det.copy()
        det[:, 5] = det_cls
        # Inverted corners become zero-size boxes, so matching here and in COCO see the same geometry.
        boxes = boxes.copy()
        for arr in (boxes, det):
            arr[:, 2:4] = np.maximum(arr[:, 2:4], arr[:, 0:2])
        self._state["image_ids"].append(int(image_id))
        self._state["sizes"].append((int(width), int(height)))
        self._state["gt_boxes"].append(boxes)
        self._state["gt_cls"].append(cls)
        self._state["gt_crowd"].append(crowd)
        self._state["preds"].append(det)

    def state(self) -> dict[str, list]:
        """Everything added so far as a picklable dict of lists (for ``all_gather_object``)."""
        return {key: list(values) for key, values in self._state.items()}

    def merge(self, states: Sequence[dict[str, list]]) -> None:
        """Append states produced by :meth:`state` (typically one per rank).

        Args:
            states: States to append, in order; duplicated image ids are resolved in :meth:`compute`.
        """
        for other in states:
            if set(other) != set(_STATE_KEYS):
                raise ValueError(f"merge expects states with keys {_STATE_KEYS}, got {sorted(other)}")
            for key in _STATE_KEYS:
                self._state[key].extend(other[key])

    def _unique_indices(self) -> list[int]:
        """Indices of the first record of each image id, noting dropped duplicates.

        DDP samplers repeat images to even out shards.
        """
        ids = np.asarray(self._state["image_ids"], dtype=np.int64)
        _, first = np.unique(ids, return_index=True)
        first.sort()
        if first.size < ids.size:
            LOGGER.info("evaluation: %d repeated image ids ignored (each image counts once)", ids.size - first.size)
        return first.tolist()

    def compute(self) -> EvalResult:
        """Compute the metrics over every image added (and merged) so far.

        Returns:
            The metrics; all zeros when there is no ground-truth instance at all.
        """
        keep = self._unique_indices()
        st = {key: [self._state[key][i] for i in keep] for key in _STATE_KEYS}
        n_images, n_cls = len(keep), len(self.names)
        gt_img = np.repeat(np.arange(n_images), [len(b) for b in st["gt_boxes"]])
        gt_boxes = np.concatenate(st["gt_boxes"]) if n_images else np.zeros((0, 4))
        gt_cls = np.concatenate(st["gt_cls"]) if n_images else np.zeros(0, np.int64)
        gt_crowd = np.concatenate(st["gt_crowd"]) if n_images else np.zeros(0, bool)
        det_img = np.repeat(np.arange(n_images), [len(p) for p in st["preds"]])
        preds = np.concatenate(st["preds"]) if n_images else np.zeros((0, 6))

        counted = ~gt_crowd
        n_gt = np.bincount(gt_cls[counted], minlength=n_cls)
        # Unique (image, class) pairs give the number of images showing each class.
        pairs = np.unique(gt_img[counted] * n_cls + gt_cls[counted])
        n_img_cls = np.bincount(pairs % n_cls, minlength=n_cls) if pairs.size else np.zeros(n_cls, np.int64)
        instances = int(n_gt.sum())
        if instances == 0:
            LOGGER.warning("evaluation: no ground-truth instances in %d images, metrics are zero", n_images)
            return EvalResult(images=n_images)

        if self.ap_style == "ultralytics":  # crowd regions left out, as Ultralytics' COCO converter drops them
            ap = ultralytics_style_ap(
                gt_img[counted], gt_boxes[counted], gt_cls[counted], det_img, preds, n_images, n_cls
            )
        else:
            ap = self._coco_ap(st["sizes"], gt_img, gt_boxes, gt_cls, gt_crowd, det_img, preds)
        status = match_detections(
            preds[:, :4], preds[:, 4], preds[:, 5], det_img, gt_boxes, gt_cls, gt_img, gt_crowd, iou_thr=0.5
        )
        conf, precision, recall = best_f1_precision_recall(preds[:, 4], preds[:, 5], status, n_gt)
        cm_conf = conf if self.confusion_conf is None else float(self.confusion_conf)
        curves = Curves(
            recall=RECALL_POINTS.copy(),
            precision=pr_curves(preds[:, 4], preds[:, 5], status, n_gt),
            present=n_gt > 0,
            confusion=confusion_matrix(
                preds[:, :4],
                preds[:, 4],
                preds[:, 5],
                det_img,
                gt_boxes,
                gt_cls,
                gt_img,
                n_cls,
                gt_crowd,
                conf=cm_conf,
                iou_thr=0.5,
            ),
            conf=cm_conf,
        )

        present = np.flatnonzero(n_gt > 0)
        per_class = [
            {
                "class_id": int(c),
                "name": self.names[c],
                "images": int(n_img_cls[c]),
                "instances": int(n_gt[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "map50": float(ap["per_class_50"][c]),
                "map50_95": float(ap["per_class"][c]),
            }
            for c in present
        ]
        result = EvalResult(
            map50=ap["map50"],
            map50_95=ap["map50_95"],
            precision=float(precision[present].mean()),
            recall=float(recall[present].mean()),
            best_conf=conf,
            images=n_images,
            instances=instances,
            per_class=per_class,
            curves=curves,
        )
        LOGGER.info(
            "evaluation: %d images, %d instances, P %.4f R %.4f mAP50 %.4f mAP50-95 %.4f (conf %.3f)",
            n_images,
            instances,
            result.precision,
            result.recall,
            result.map50,
            result.map50_95,
            conf,
        )
        return result

    def _coco_ap(
        self,
        sizes: list[tuple[int, int]],
        gt_img: np.ndarray,
        gt_boxes: np.ndarray,
        gt_cls: np.ndarray,
        gt_crowd: np.ndarray,
        det_img: np.ndarray,
        preds: np.ndarray,
    ) -> dict[str, Any]:
        """Run faster-coco-eval on the flat arrays and read AP out of its precision table."""
        from faster_coco_eval import COCO, COCOeval_faster  # noqa: PLC0415 - only evaluation needs it

        images = [{"id": i + 1, "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.names)]
        # Ids and areas are computed in numpy; the comprehensions only assemble the dicts COCO wants.
        gt_xywh = _xyxy_to_xywh(gt_boxes)
        gt_cols = zip(
            range(1, len(gt_img) + 1),
            (gt_img + 1).tolist(),
            (gt_cls + 1).tolist(),
            gt_xywh.tolist(),
            (gt_xywh[:, 2] * gt_xywh[:, 3]).tolist(),
            gt_crowd.astype(int).tolist(),
        )
        gt_anns = [
            {"id": k, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": z}
            for k, i, c, b, a, z in gt_cols
        ]
        dt_xywh = _xyxy_to_xywh(preds[:, :4])
        dt_cols = zip(
            range(1, len(det_img) + 1),
            (det_img + 1).tolist(),
            (preds[:, 5].astype(np.int64) + 1).tolist(),
            dt_xywh.tolist(),
            (dt_xywh[:, 2] * dt_xywh[:, 3]).tolist(),
            preds[:, 4].tolist(),
        )
        dt_anns = [
            {"id": k, "image_id": i, "category_id": c, "bbox": b, "area": a, "score": s, "iscrowd": 0}
            for k, i, c, b, a, s in dt_cols
        ]

        def quiet(*_args: Any, **_kwargs: Any) -> None:
            """Swallow the library's progress chatter; the summary is logged by compute()."""

        captured = io.StringIO()
        # Some library versions print straight to stdout; keep it off the user's console.
        with contextlib.redirect_stdout(captured):
            # print_function is set as an attribute, not a keyword: older releases lack the keyword.
            coco_gt = COCO({"images": images, "categories": categories, "annotations": gt_anns})
            coco_dt = COCO({"images": images, "categories": categories, "annotations": dt_anns})
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
            ev.print_function = quiet
            ev.params.catIds = [c["id"] for c in categories]
            # Only the "all areas, 100 detections" cell is reported. COCO computes every cell
            # independently, so dropping the others leaves it bit-identical and saves most of the time.
            ev.params.areaRng = [[0.0, 1e5**2]]
            ev.params.areaRngLbl = ["all"]
            ev.params.maxDets = [100]
            ev.evaluate()
            ev.accumulate()
        if captured.getvalue().strip():
            LOGGER.debug("faster-coco-eval output:\n%s", captured.getvalue().rstrip())

        # precision[T, R, K, A, M]: IoU thresholds x recall points x classes x area ranges x maxDets.
        table = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]  # area "all", maxDets 100
        iou50 = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - 0.5)))
        return {
            "map50": _mean_valid(table[iou50]),
            "map50_95": _mean_valid(table),
            "per_class_50": [_mean_valid(table[iou50, :, k]) for k in range(table.shape[2])],
            "per_class": [_mean_valid(table[:, :, k]) for k in range(table.shape[2])],
        }


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries COCO filled in (it marks classes without ground truth with -1); 0 if none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0
