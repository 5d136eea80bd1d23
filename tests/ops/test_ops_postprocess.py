"""Decoding, NMS and letterbox inversion on hand-built raw outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from yolotrain.ops import Postprocessor, decode, non_max_suppression, scale_boxes

REG_MAX = 16
NC = 3
STRIDES = torch.tensor([8.0, 16.0, 32.0])


def _raw(size: int = 64, b: int = 1) -> list[torch.Tensor]:
    """Raw outputs predicting nothing: flat box logits, very negative class logits."""
    out = []
    for s in STRIDES.tolist():
        t = torch.zeros(b, 4 * REG_MAX + NC, size // int(s), size // int(s))
        t[:, 4 * REG_MAX :] = -20.0
        out.append(t)
    return out


def _encode(
    preds: list[torch.Tensor],
    level: int,
    gx: int,
    gy: int,
    ltrb: tuple[int, int, int, int],
    cls: int,
    logit: float,
    img: int = 0,
) -> list[float]:
    """Write one detection into the raw outputs; return its expected xyxy box in pixels."""
    t = preds[level]
    t[img, : 4 * REG_MAX, gy, gx] = -30.0
    for side, d in enumerate(ltrb):
        t[img, side * REG_MAX + d, gy, gx] = 30.0  # near one-hot bin -> expected distance d
    t[img, 4 * REG_MAX + cls, gy, gx] = logit
    s = STRIDES[level].item()
    ax, ay = gx + 0.5, gy + 0.5
    left, tp, r, btm = ltrb
    return [(ax - left) * s, (ay - tp) * s, (ax + r) * s, (ay + btm) * s]


def test_decode_shape_and_values() -> None:
    preds = _raw()
    box = _encode(preds, 1, 2, 1, (1, 1, 2, 3), cls=2, logit=3.0)
    out = decode(preds, STRIDES, REG_MAX)
    assert out.shape == (1, 64 + 16 + 4, 4 + NC)
    a = 64 + 1 * 4 + 2  # level-1 offset + row-major cell index
    assert out[0, a, :4].tolist() == pytest.approx(box, abs=1e-3)
    assert out[0, a, 4 + 2].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-5)


def test_nms_returns_encoded_boxes_and_suppresses_duplicates() -> None:
    preds = _raw()
    box_a = _encode(preds, 0, 2, 2, (2, 2, 2, 2), cls=0, logit=4.0)
    _encode(preds, 0, 3, 2, (3, 2, 1, 2), cls=0, logit=2.0)  # same box, lower score -> suppressed
    dup_other_cls = _encode(preds, 0, 2, 3, (2, 3, 2, 1), cls=1, logit=1.0)  # same box, other class
    box_c = _encode(preds, 2, 1, 1, (1, 1, 0, 0), cls=2, logit=3.0)
    dets = non_max_suppression(decode(preds, STRIDES, REG_MAX), conf=0.25, iou=0.7)
    assert len(dets) == 1 and dets[0].shape == (3, 6)
    d = dets[0]
    assert d[:, 5].tolist() == [0.0, 2.0, 1.0]  # sorted by score
    assert torch.allclose(d[:, :4], torch.tensor([box_a, box_c, dup_other_cls]), atol=1e-3)
    assert d[:, 4].tolist() == pytest.approx(torch.sigmoid(torch.tensor([4.0, 3.0, 1.0])).tolist(), rel=1e-5)

    agnostic = non_max_suppression(decode(preds, STRIDES, REG_MAX), conf=0.25, iou=0.7, agnostic=True)[0]
    assert agnostic[:, 5].tolist() == [0.0, 2.0]
    only2 = non_max_suppression(decode(preds, STRIDES, REG_MAX), conf=0.25, classes=[2])[0]
    assert only2[:, 5].tolist() == [2.0]
    assert non_max_suppression(decode(preds, STRIDES, REG_MAX), conf=0.25, max_det=1)[0].shape == (1, 6)
    assert non_max_suppression(decode(preds, STRIDES, REG_MAX), conf=0.99)[0].shape == (0, 6)


def test_postprocessor_per_image_and_max_nms() -> None:
    preds = _raw(b=2)
    box = _encode(preds, 0, 1, 1, (1, 1, 1, 1), cls=1, logit=5.0, img=1)
    _encode(preds, 0, 6, 6, (1, 1, 1, 1), cls=1, logit=4.0, img=1)
    dets = Postprocessor(conf=0.5)(preds, STRIDES, REG_MAX)
    assert dets[0].shape == (0, 6) and dets[1].shape == (2, 6)
    assert dets[1][0, :4].tolist() == pytest.approx(box, abs=1e-3)
    # max_nms keeps only the highest-scoring candidate before NMS.
    dets = Postprocessor(conf=0.5, max_nms=1)(preds, STRIDES, REG_MAX)
    assert dets[1].shape == (1, 6) and dets[1][0, 4] > 0.99


def _letterbox_params(ori_hw: tuple[int, int], new: int) -> tuple[float, tuple[float, float]]:
    h, w = ori_hw
    r = min(new / h, new / w)
    padw, padh = (new - round(w * r)) / 2, (new - round(h * r)) / 2
    return r, (padw, padh)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_scale_boxes_inverts_letterbox(as_numpy: bool) -> None:
    ori = (300, 500)
    r, (padw, padh) = _letterbox_params(ori, 640)
    original = torch.tensor([[50.0, 60.0, 200.0, 250.0, 0.9, 1.0], [0.0, 0.0, 500.0, 300.0, 0.5, 0.0]])
    boxed = original.clone()
    boxed[:, [0, 2]] = boxed[:, [0, 2]] * r + padw
    boxed[:, [1, 3]] = boxed[:, [1, 3]] * r + padh
    inp = boxed.numpy() if as_numpy else boxed
    out = scale_boxes(inp, ((r, r), (padw, padh)), ori)
    assert type(out) is type(inp)
    assert np.allclose(np.asarray(out), original.numpy(), atol=1e-3)
    assert np.allclose(np.asarray(inp), boxed.numpy())  # input untouched


def test_scale_boxes_clips_to_image() -> None:
    boxes = torch.tensor([[-10.0, 0.0, 700.0, 100.0]])
    out = scale_boxes(boxes, ((2.0, 2.0), (0.0, 20.0)), (200, 300))
    assert out.tolist() == [[0.0, 0.0, 300.0, 40.0]]


def test_multi_label_nms_keeps_every_class_above_conf() -> None:
    # Anchor 0 scores 0.9 for class 0 and 0.6 for class 2; anchor 1 overlaps anchor 0 (IoU 0.81) with
    # class 0 at 0.5; anchor 2 is elsewhere, class 1 at 0.2 (below conf 0.3).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 9.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([[0.9, 0.1, 0.6], [0.5, 0.0, 0.0], [0.0, 0.2, 0.0]])
    decoded = torch.cat((boxes, scores), dim=1)[None]
    single = non_max_suppression(decoded, conf=0.3, iou=0.7)[0]
    multi = non_max_suppression(decoded, conf=0.3, iou=0.7, multi_label=True)[0]
    # Single label: anchor 0 as class 0 only; anchor 1 (class 0) suppressed by it.
    assert single[:, 4:].tolist() == [[pytest.approx(0.9), 0.0]]
    # Multi label: anchor 0 twice (class 0 and class 2), anchor 1 still suppressed within class 0.
    assert multi[:, 4:].tolist() == [[pytest.approx(0.9), 0.0], [pytest.approx(0.6), 2.0]]
    assert torch.equal(multi[1, :4], boxes[0])
    # max_det and classes apply to the (anchor, class) pairs.
    assert len(non_max_suppression(decoded, conf=0.3, iou=0.7, multi_label=True, max_det=1)[0]) == 1
    only2 = non_max_suppression(decoded, conf=0.3, iou=0.7, multi_label=True, classes=[2])[0]
    assert only2[:, 5].tolist() == [2.0]


@pytest.mark.slow
def test_torchvision_loads_on_the_first_nms_not_with_the_training_path():
    # torchvision.ops imports torch._dynamo (about 2 CPU-seconds per process): the DDP launcher, which imports the
    # training path but never trains, paid it for nothing before NMS loaded it on first use.
    code = (
        "import json, sys, torch, yolotrain.engine.trainer, yolotrain.engine.launch, yolotrain.ops as ops\n"
        "heavy = lambda: sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules)\n"
        "before = heavy()\n"
        "boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])\n"
        "raw = torch.cat((boxes, torch.tensor([[0.9], [0.8]])), 1)[None]\n"
        "kept = ops.non_max_suppression(raw, conf=0.1, iou=0.5)[0]\n"
        "print(json.dumps([before, heavy(), len(kept)]))"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(src)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [[], ["torch._dynamo", "torchvision"], 1]
