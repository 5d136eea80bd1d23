"""Validation: run a model over a loader, post-process, and score with the COCO evaluator."""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn
from tqdm import tqdm

from yolotrain.data.records import xywhn_to_xyxy
from yolotrain.engine import distributed as dist
from yolotrain.engine.oom import free_memory, is_oom
from yolotrain.engine.precision import Precision
from yolotrain.errors import TrainingError
from yolotrain.eval import DetectionEvaluator, EvalResult
from yolotrain.ops import Postprocessor, scale_boxes

LOGGER = logging.getLogger("yolotrain")


class Validator:
    """Scores a model on one split.

    Args:
        loader: Loader over a non-augmented :class:`~yolotrain.data.DetectionDataset`.
        names: Class names.
        device: Where the model runs.
        precision: Autocast settings (validation runs under the training precision).
        conf: Confidence threshold before NMS.
        iou: NMS IoU threshold.
        max_det: Detections kept per image.
        agnostic: Class-agnostic NMS.
        multi_label: Multi-label NMS (``multi_label`` setting; Ultralytics' val uses it).
        ap_style: ``coco`` (COCO-exact mAP) or ``ultralytics`` (``ap_style`` setting).
        progress: Show a progress bar.
    """

    def __init__(
        self,
        loader,
        names: list[str],
        device: torch.device,
        precision: Precision,
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        agnostic: bool = False,
        progress: bool = True,
        multi_label: bool = False,
        ap_style: str = "coco",
    ):
        self.loader = loader
        self.records = loader.dataset.records
        self.names = names
        self.device = device
        self.precision = precision
        self.post = Postprocessor(conf=conf, iou=iou, max_det=max_det, agnostic=agnostic, multi_label=multi_label)
        self.progress = progress
        self.ap_style = ap_style
        self.seconds = 0.0
        self.chunk = 0  # images per forward after an out-of-memory error (0: the whole batch)
        self.calls = 0
        self.oom_injector = None  # set by the trainer from YOLOTRAIN_INJECT_OOM

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> EvalResult:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        evaluator = DetectionEvaluator(self.names, ap_style=self.ap_style)
        dtype = next(model.parameters()).dtype  # fp32, or fp16/bf16 for half=true
        bar = tqdm(self.loader, desc="val", leave=False, disable=not self.progress, dynamic_ncols=True)
        for batch in bar:
            imgs = batch["img"].to(self.device, non_blocking=True).float().div_(255)
            imgs = imgs.to(dtype).contiguous(memory_format=torch.channels_last)
            preds = self._forward(model, imgs)
            dets = self.post([p.float() for p in preds], model.stride, model.reg_max)
            for j, det in enumerate(dets):
                rec = self.records[int(batch["index"][j])]
                det = det.cpu()
                det[:, :4] = scale_boxes(det[:, :4], batch["ratio_pad"][j], batch["ori_shape"][j])
                evaluator.add(
                    image_id=int(batch["index"][j]),
                    width=rec.width,
                    height=rec.height,
                    gt_boxes=xywhn_to_xyxy(rec.bboxes, rec.width, rec.height),
                    gt_cls=rec.cls,
                    pred=det.numpy(),
                    gt_crowd=rec.crowd,
                )
        result = self._compute(evaluator)
        model.train(was_training)
        self.seconds = time.perf_counter() - t0
        return result

    def _forward(self, model: nn.Module, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The model's outputs; on out-of-memory, the batch in halves (recursively, down to one image).

        The split is kept for the rest of the run (``self.chunk``), so one OOM does not repeat every batch.
        Validation has no collectives inside the forward, so ranks need not agree on it.
        """
        chunk = self.chunk or imgs.shape[0]
        while True:
            try:
                outs = []
                for part in imgs.split(chunk):
                    if self.oom_injector is not None and ("val", self.calls) in self.oom_injector.limits:
                        self.oom_injector.check(self.calls, "val", part.shape[0])  # val@N:... entries only
                    with self.precision.autocast():
                        outs.append(model(part))
                self.calls += 1
                return [torch.cat(level) for level in zip(*outs)] if len(outs) > 1 else outs[0]
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not is_oom(e):
                    raise
                if chunk == 1:
                    raise TrainingError(
                        "out of memory in validation even with one image per batch; lower imgsz "
                        "or validate on a larger device"
                    ) from None
                chunk = max(chunk // 2, 1)
                self.chunk = chunk
                LOGGER.warning(f"out of memory in validation: continuing with {chunk} images per forward")
            # outside the except block, where the error's traceback no longer holds the failed forward's tensors
            outs = None  # nor do the parts that did fit
            free_memory(imgs.device)

    def _compute(self, evaluator: DetectionEvaluator) -> EvalResult:
        """Score the images seen here, or, under DDP, those of every rank (each evaluated a shard).

        The per-image records are gathered on every rank, scored once on rank 0 (images the sampler
        repeated to even out the shards are counted once) and the result is broadcast, so every rank
        takes the same decisions from it.
        """
        if not dist.is_initialized() or dist.world_size() == 1:
            return evaluator.compute()
        states = dist.all_gather_object(evaluator.state())
        result = None
        if dist.is_main():
            merged = DetectionEvaluator(self.names, ap_style=self.ap_style)
            merged.merge(states)
            result = merged.compute()
        return dist.broadcast_object(result)
