"""The fast data path keeps its promises: one decode per image per batch, samples that depend only on
(seed, epoch, index), warps that match the slow path, reduced JPEG decodes with exact geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from data_helpers import augment_settings, by_index, make_shapes_split

from yolotrain.data import augment as A
from yolotrain.data import mosaic as M
from yolotrain.data.dataset import MOSAIC_GROUP, DetectionDataset, SampleKey, epoch_order
from yolotrain.data.image_io import decode_image, jpeg_reduction, read_bytes
from yolotrain.data.loader import _stack_images, build_dataloader, collate, set_loader_epoch
from yolotrain.data.records import ImageRecord, xywhn_to_xyxy
from yolotrain.data.scan import scan_split


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    img_dir = make_shapes_split(tmp_path_factory.mktemp("fast"), n=20, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    return recs


def test_sample_depends_only_on_seed_epoch_index(records):
    """Batch size, workers, the buffer, the RAM cache and a mid-epoch resume never change a sample."""
    augmentation = augment_settings()
    alone = DetectionDataset(records, 64, True, augmentation, seed=5, buffer=0)
    ref = {i: alone[SampleKey(i, 3, True)] for i in range(len(records))}  # one at a time, no batch
    runs = []
    for batch, workers, kwargs in ((8, 0, {}), (3, 2, {"buffer": 0}), (5, 0, {"cache": "ram"})):
        ds = DetectionDataset(records, 64, True, augmentation, seed=5, **kwargs)
        loader = build_dataloader(ds, batch_size=batch, workers=workers, shuffle=True, seed=5)
        set_loader_epoch(loader, 3)
        runs.append(by_index(list(loader)))
        set_loader_epoch(loader, 3, skip_batches=2)  # resume after two batches
        runs.append(by_index(list(loader)))
    for got in runs:
        assert got  # every run delivered samples
        for i, (img, boxes) in got.items():
            assert torch.equal(img, ref[i]["img"]), i
            assert torch.equal(boxes, ref[i]["bboxes"]), i


def test_one_decode_per_image_per_batch(records, monkeypatch):
    ds = DetectionDataset(records, 64, True, augment_settings(mosaic=1.0), seed=1, buffer=0)
    calls = []
    real = ds.images.load
    monkeypatch.setattr(ds.images, "load", lambda i: calls.append(i) or real(i))
    order = epoch_order(len(ds), 1, 0).tolist()
    keys = [SampleKey(i, 0, True) for i in order[:MOSAIC_GROUP]]  # the first group, whole
    ds.__getitems__(keys)
    assert sorted(calls) == sorted(order[:MOSAIC_GROUP])  # each image once, partners included
    calls.clear()
    ds.__getitems__([SampleKey(i, 0, True) for i in order])  # 20 images: groups of 8 and 12
    assert sorted(calls) == list(range(20))
    calls.clear()
    ds[keys[0]]  # alone: itself and three partners
    assert len(calls) == 4


def test_mosaic_partners_come_from_the_group(records):
    ds = DetectionDataset(records, 64, True, augment_settings(), seed=2)
    n = len(ds)
    order = epoch_order(n, 2, 4).tolist()
    # 20 samples: groups are positions 0-7 and 8-19 (the last group takes the remainder)
    groups = [order[:8], order[8:]]
    for pos, i in enumerate(order):
        group = groups[0] if pos < 8 else groups[1]
        partners = ds.mosaic_partners(i, 4, np.random.default_rng(pos))
        assert len(partners) == 3 and len(set(partners)) == 3
        assert i not in partners and set(partners) <= set(group)


def test_epoch_order_is_the_sampler_rule():
    # DistributedSampler's rule, written independently: randperm seeded with seed + epoch
    g = torch.Generator()
    g.manual_seed(7 + 3)
    assert epoch_order(11, 7, 3).tolist() == torch.randperm(11, generator=g).tolist()


def test_window_canvas_warp_equals_full_canvas_warp():
    s = 48
    rng = np.random.default_rng(0)
    items = [
        (rng.integers(0, 255, (s, int(rng.integers(20, s + 1)), 3), dtype=np.uint8), np.zeros((0, 4)), np.zeros(0))
        for _ in range(4)
    ]
    smaller = 0
    for seed in range(6):
        r = np.random.default_rng(seed)
        center = M.mosaic_center(s, r)
        m, _ = A.affine_matrix((2 * s, 2 * s), (s, s), 10.0, 0.1, 0.5, 2.0, r)
        full, _, _ = M.mosaic4(items, s, center=center)
        ref = cv2.warpAffine(full, m[:2], (s, s), flags=cv2.INTER_LINEAR, borderValue=A.PAD_COLOR)
        x0, y0, x1, y1 = A.source_window(m, (s, s), (2 * s, 2 * s))
        part, _, _ = M.mosaic4(items, s, center=center, window=(x0, y0, x1, y1))
        assert part.shape[:2] == (y1 - y0, x1 - x0)
        smaller += part.size < full.size
        shift = np.eye(3)
        shift[:2, 2] = (x0, y0)
        got = cv2.warpAffine(part, (m @ shift)[:2], (s, s), flags=cv2.INTER_LINEAR, borderValue=A.PAD_COLOR)
        # the same pixels up to OpenCV's fixed-point rounding of the shifted matrix (+-1 on rare pixels)
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002
    assert smaller >= 3  # scales above ~0.6 read only part of the canvas


@pytest.mark.parametrize("scale,tx,ty", [(0.5, 3.3, -7.6), (1.37, -20.2, 5.5), (1.0, 0.0, 0.0), (0.8, 60.0, -90.0)])
def test_scale_translate_warp_boxes_follow_pixels(scale, tx, ty):
    img = np.zeros((80, 100, 3), np.uint8)
    img[20:50, 30:70] = 255
    m = np.array([[scale, 0, tx], [0, scale, ty], [0, 0, 1]], dtype=np.float64)
    out, applied = A.scale_translate_warp(img, m, (64, 64))
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(applied[:2, :2], m[:2, :2], rtol=0.05)  # within rounding of the ends
    box = A.transform_boxes(np.array([[30, 20, 70, 50]], np.float32), applied)[0].clip(0, 64)
    ys, xs = np.nonzero(out[..., 0] > 127)
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        assert len(xs) == 0
        return
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.0)
    # the uncovered output is the pad grey, as with warpAffine
    ref = cv2.warpAffine(img, m[:2], (64, 64), flags=cv2.INTER_LINEAR, borderValue=A.PAD_COLOR)
    assert np.mean(np.abs(out.astype(int) - ref.astype(int))) < 8


def test_mosaic_boxes_follow_pixels(records):
    """Every mosaic sample's boxes lie on white pixels (fast path: no rotation, flips included)."""
    augmentation = augment_settings(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5)
    ds = DetectionDataset(records, 64, True, augmentation, seed=3)
    checked = 0
    for i in range(len(ds)):
        it = ds[SampleKey(i, 1, True)]
        img = it["img"][0].numpy()
        for box in xywhn_to_xyxy(it["bboxes"].numpy(), 64, 64):
            x1, y1, x2, y2 = np.round(box).astype(int)
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            inner = img[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
            assert (inner > 200).mean() > 0.9, (i, box)
            checked += 1
    assert checked > 10


def test_jpeg_reduction_and_reduced_decode(tmp_path):
    buf = np.frombuffer(b"\xff\xd8\xff" + bytes(10), np.uint8)
    # long side 640: 1/8 gives 80, 1/4 gives 160, 1/2 gives 320
    assert jpeg_reduction(buf, 640, 64) == 8
    assert jpeg_reduction(buf, 640, 100) == 4
    assert jpeg_reduction(buf, 640, 320) == 2
    assert jpeg_reduction(buf, 640, 321) == 1
    png = np.frombuffer(b"\x89PNG" + bytes(10), np.uint8)
    assert jpeg_reduction(png, 640, 64) == 1
    p = tmp_path / "big.jpg"
    img = np.zeros((203, 301, 3), np.uint8)
    img[40:120, 60:200] = 255
    cv2.imwrite(str(p), img)
    small = decode_image(read_bytes(p), p, 4)
    assert small.shape == (51, 76, 3)  # ceil(203 / 4), ceil(301 / 4)


def test_reduced_decode_keeps_eval_geometry(tmp_path):
    p = tmp_path / "images" / "a.jpg"
    p.parent.mkdir()
    img = np.zeros((400, 600, 3), np.uint8)
    img[100:300, 150:450] = 255
    cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
    rec = ImageRecord(str(p), 400, 600, np.array([0]), np.array([[0.5, 0.5, 0.5, 0.5]], np.float32))
    item = DetectionDataset([rec], imgsz=64, augment=False)[0]  # 600 // 8 >= 64: decoded at 1/8
    assert item["ori_shape"] == (400, 600)
    (rw, rh), (pw, ph) = item["ratio_pad"]
    assert rw == pytest.approx(64 / 600, rel=0.02) and (pw, ph) == (
        0,
        10,
    )  # 400*64/600 = 42.7 -> 43 rows, 21 padded, 10 on top
    box = xywhn_to_xyxy(item["bboxes"].numpy(), 64, 64)[0]
    np.testing.assert_allclose(box, [150 * rw + pw, 100 * rh + ph, 450 * rw + pw, 300 * rh + ph], atol=1e-3)
    ys, xs = np.nonzero(item["img"][0].numpy() > 127)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.0)


def test_stack_images_matches_torch_stack():
    rng = np.random.default_rng(0)
    hwc = [rng.integers(0, 255, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    views = [torch.from_numpy(a).permute(2, 0, 1) for a in hwc]
    expected = torch.stack([torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in hwc])
    got = _stack_images(views)
    assert got.is_contiguous() and torch.equal(got, expected)
    assert torch.equal(_stack_images([v.contiguous() for v in views]), expected)  # plain CHW tensors too
    with pytest.raises(ValueError, match="differ in size"):
        _stack_images([views[0], torch.from_numpy(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)).permute(2, 0, 1)])
    empty = {
        "cls": torch.zeros(0, 1),
        "bboxes": torch.zeros(0, 4),
        "im_file": "",
        "ori_shape": (5, 7),
        "ratio_pad": None,
    }
    batch = collate([{"img": v, "index": k, "ratio_pad": None, **empty} for k, v in enumerate(views)])
    assert torch.equal(batch["img"], expected)
