"""Rectangular evaluation batches: aspect-ratio order, smallest stride-multiple shapes, exact geometry, ranks."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from yolotrain.config import resolve
from yolotrain.config_sections import AugmentSettings
from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.loader import build_dataloader, set_loader_epoch
from yolotrain.data.records import ImageRecord, xywhn_to_xyxy
from yolotrain.engine.build import build_loader

# (h, w) of five images; aspect h/w = 2, 0.5, 0.75, 1.333, 0.625
SIZES = [(64, 32), (32, 64), (48, 64), (64, 48), (40, 64)]


def _records(tmp_path) -> list[ImageRecord]:
    recs = []
    for k, (h, w) in enumerate(SIZES):
        img = np.zeros((h, w, 3), np.uint8)
        img[h // 4 : h // 2, w // 4 : 3 * w // 4] = 255
        p = tmp_path / f"{k}.png"
        cv2.imwrite(str(p), img)
        box = [0.5, 0.375, 0.5, 0.25]  # the white block, normalized xywh
        recs.append(ImageRecord(str(p), h, w, [k % 2], [box]))
    return recs


def _batches(ds, batch, rank=-1, world=1):
    loader = build_dataloader(ds, batch_size=batch, workers=0, shuffle=False, rank=rank, world_size=world)
    set_loader_epoch(loader, 0)
    return list(loader)


def test_rect_batches_sorted_and_smallest_stride_multiple(tmp_path):
    ds = DetectionDataset(_records(tmp_path), imgsz=128, augment=False, stride=32)
    assert ds.rect  # the default for evaluation
    batches = _batches(ds, 2)
    # sorted aspect ratios: 0.5 (1), 0.625 (4) | 0.75 (2), 1.333 (3) | 2 (0)
    assert [b["index"].tolist() for b in batches] == [[1, 4], [2, 3], [0]]
    # 0.625 * 128 = 80 -> 96 rows; a batch spanning 1 -> square; aspect 2 -> 128 / 2 = 64 columns
    assert [tuple(b["img"].shape) for b in batches] == [(2, 3, 96, 128), (2, 3, 128, 128), (1, 3, 128, 64)]


def test_rect_geometry_maps_back_exactly(tmp_path):
    recs = _records(tmp_path)
    ds = DetectionDataset(recs, imgsz=128, augment=False, stride=32)
    for b in _batches(ds, 2):
        h, w = b["img"].shape[-2:]
        for j, idx in enumerate(b["index"].tolist()):
            (rw, rh), (pw, ph) = b["ratio_pad"][j]
            oh, ow = SIZES[idx]
            assert b["ori_shape"][j] == (oh, ow)
            box = xywhn_to_xyxy(b["bboxes"][b["batch_idx"] == j].numpy(), w, h)[0]
            orig = np.array([ow / 4, oh / 4, 3 * ow / 4, oh / 2])
            np.testing.assert_allclose(box, orig * [rw, rh, rw, rh] + [pw, ph, pw, ph], atol=1e-3)
            ys, xs = np.nonzero(b["img"][j, 0].numpy() > 127)
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.0)


def test_square_stays_available(tmp_path):
    recs = _records(tmp_path)
    for ds in (
        DetectionDataset(recs, imgsz=128, augment=False, rect=False),
        build_loader(recs, resolve({"rect": False, "workers": 0}), 128, 2, train=False).dataset,  # cfg.rect=false
    ):
        batches = _batches(ds, 2)
        assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
        assert all(b["img"].shape[-2:] == (128, 128) for b in batches)
    # training never uses rect batches
    assert not DetectionDataset(recs, 128, True, AugmentSettings.defaults(), rect=True).rect


def test_rect_under_two_ranks_each_batch_one_shape(tmp_path):
    ds = DetectionDataset(_records(tmp_path), imgsz=128, augment=False, stride=32)
    seen = []
    for rank in (0, 1):
        for b in _batches(ds, 1, rank=rank, world=2):  # global batch 2: the shapes of the one-rank plan
            seen += b["index"].tolist()
            assert b["img"].shape[0] == 1
    # rank 0 gets positions 0, 2, 4; rank 1 gets 1, 3 and the padding (position 0 again)
    assert sorted(seen) == sorted([1, 4, 2, 3, 0] + [1])
    shapes = {rank: [tuple(b["img"].shape[-2:]) for b in _batches(ds, 1, rank=rank, world=2)] for rank in (0, 1)}
    assert shapes[0] == [(96, 128), (128, 128), (128, 64)] and shapes[1] == [(96, 128), (128, 128), (128, 64)]
    assert torch.equal(_batches(ds, 1, 1, 2)[2]["index"], torch.tensor([1]))  # padded image in the last batch's shape
