"""perspective, flipud, mixup and cutmix in the dataset's training samples: boxes follow the pixels, the
samples depend only on (seed, epoch, index), partners cost no extra decode, and the batches the trainer
plots (train_batch*.jpg) show them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from data_helpers import augment_settings, by_index, make_shapes_split

from yolotrain.data.dataset import MOSAIC_GROUP, DetectionDataset, SampleKey, epoch_order
from yolotrain.data.loader import build_dataloader, set_loader_epoch
from yolotrain.data.records import xywhn_to_xyxy
from yolotrain.data.scan import scan_split

S = 128
# Six colours with channels 0 or 255; none is white, so the pad grey (114) never passes for one of them
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def _rect(k: int) -> tuple[int, int, int, int]:
    """Image k's rectangle: its own band of rows (bands never overlap, whatever the horizontal flips)."""
    return 10 + 5 * k, 18 * k + 4, 60 + 8 * k, 18 * k + 18


@pytest.fixture(scope="module")
def colour_records(tmp_path_factory):
    """Six 128 x 128 black images, image k with one solid rectangle of COLOURS[k] labelled class k."""
    root = tmp_path_factory.mktemp("colours")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for k, colour in enumerate(COLOURS):
        img = np.zeros((S, S, 3), np.uint8)
        x1, y1, x2, y2 = _rect(k)
        img[y1:y2, x1:x2] = colour
        cv2.imwrite(str(root / "images" / f"{k}.png"), img[..., ::-1])
        cx, cy, w, h = (x1 + x2) / 2 / S, (y1 + y2) / 2 / S, (x2 - x1) / S, (y2 - y1) / S
        (root / "labels" / f"{k}.txt").write_text(f"{k} {cx} {cy} {w} {h}\n")
    recs, _ = scan_split([str(root / "images")], nc=len(COLOURS), use_cache=False)
    return sorted(recs, key=lambda r: r.im_file)


def _colour_mask(img: np.ndarray, k: int) -> np.ndarray:
    """Pixels of colour k at any brightness above ~16 % (a blend with black still counts)."""
    on = np.array(COLOURS[k]) > 0
    return (img[..., on] > 40).all(-1) & (img[..., ~on] < 20).all(-1)


def _extent(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _sample(ds: DetectionDataset, i: int, epoch: int, mosaic: bool = True):
    it = ds[SampleKey(i, epoch, mosaic)]
    img = it["img"].permute(1, 2, 0).numpy()
    return img, xywhn_to_xyxy(it["bboxes"].numpy(), S, S), it["cls"].numpy().reshape(-1).astype(int)


def _plain(**kw):
    """One image per sample, whole and unscaled (no mosaic, scale or translation), no colour change."""
    return augment_settings(mosaic=0.0, translate=0.0, scale=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, **kw)


def _boxes_follow_colours(img, boxes, cls, atol=2.0) -> int:
    for box, k in zip(boxes, cls):
        np.testing.assert_allclose(box, _extent(_colour_mask(img, k)), atol=atol, err_msg=f"class {k}")
    return len(boxes)


# ------------------------------------------------------------------------------ perspective
def test_perspective_samples_boxes_follow_pixels(colour_records):
    """Mosaic + perspective (the warp path that builds a window of the canvas): every box on its colour.

    The perspective is 3x the settings' maximum (the dataset takes any value) so that on 128 px samples the
    rectangles become clearly non-rectangular quadrilaterals, which an affine warp cannot make.
    """
    augmentation = augment_settings(perspective=0.003, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    ds = DetectionDataset(colour_records, S, True, augmentation, seed=4)
    checked, fills = 0, []
    for epoch in range(4):
        for i in range(len(ds)):
            img, boxes, cls = _sample(ds, i, epoch)
            for box, k in zip(boxes, cls):
                ext = _extent(_colour_mask(img, k))
                if (box[:2] > 0.5).all() and (box[2:] < S - 0.5).all():
                    np.testing.assert_allclose(box, ext, atol=2.0, err_msg=f"class {k}")
                    checked += 1
                    x1, y1, x2, y2 = box
                    fills.append(_colour_mask(img, k).sum() / ((x2 - x1) * (y2 - y1)))
                else:
                    # cut by the sample's edge: the clipped box of the 4 corners holds the pixels but may be
                    # larger than them (a corner outside decides it), as with the peers' corner-based boxes
                    assert (ext[:2] >= box[:2] - 1).all() and (ext[2:] <= box[2:] + 1).all(), (box, ext)
    assert checked >= 20
    # a scaled rectangle fills its box; a projected one (a quadrilateral with slanted sides) does not
    assert np.mean(np.array(fills) < 0.9) > 0.25


# ------------------------------------------------------------------------------ flipud
def test_flipud_mirrors_the_sample(colour_records):
    off = DetectionDataset(colour_records, S, True, _plain(fliplr=0.5), seed=1)
    on = DetectionDataset(colour_records, S, True, _plain(fliplr=0.5, flipud=1.0), seed=1)
    half = DetectionDataset(colour_records, S, True, _plain(fliplr=0.5, flipud=0.5), seed=1)
    flipped = 0
    for epoch in range(8):
        for i in range(len(off)):
            a, b, c = off[SampleKey(i, epoch, True)], on[SampleKey(i, epoch, True)], half[SampleKey(i, epoch, True)]
            assert torch.equal(b["img"], a["img"].flip(1))  # rows reversed, all else equal
            want = a["bboxes"].clone()
            want[:, 1] = 1.0 - want[:, 1]  # normalized centre y mirrors; sizes stay
            torch.testing.assert_close(b["bboxes"], want, atol=1e-6, rtol=0)
            img, boxes, cls = _sample(on, i, epoch)
            assert _boxes_follow_colours(img, boxes, cls, atol=1.0) == 1
            assert torch.equal(c["img"], a["img"]) or torch.equal(c["img"], b["img"])
            flipped += torch.equal(c["img"], b["img"])
    assert 12 <= flipped <= 36  # flipud=0.5: about half of 48


# ------------------------------------------------------------------------------ mixup
def test_mixup_samples_blend_two_images_with_both_boxes(colour_records):
    ds = DetectionDataset(colour_records, S, True, _plain(fliplr=0.5, mixup=1.0), seed=2)
    for epoch in range(4):
        for i in range(len(ds)):
            img, boxes, cls = _sample(ds, i, epoch)
            # the base image's box first, then the partner's (another image of the group)
            assert len(cls) == 2 and cls[0] == i and cls[1] != i
            _boxes_follow_colours(img, boxes, cls)
            levels = []
            for box, k in zip(boxes.round().astype(int), cls):
                x1, y1, x2, y2 = box
                patch = img[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
                levels.append(patch[..., np.array(COLOURS[k]) > 0].mean())
            # a blend: the two colours at r * 255 and (1 - r) * 255, r neither 0 nor 1
            assert abs(sum(levels) - 255) <= 2 and min(levels) > 40, levels
        # mixup is off while mosaic is closed (close_mosaic), as with the peers
        assert len(_sample(ds, 0, epoch, mosaic=False)[2]) == 1


# ------------------------------------------------------------------------------ cutmix
def test_cutmix_samples_boxes_follow_pixels(colour_records):
    ds = DetectionDataset(colour_records, S, True, _plain(fliplr=0.5, cutmix=1.0), seed=3)
    pasted = trimmed = 0
    for epoch in range(8):
        for i in range(len(ds)):
            img, boxes, cls = _sample(ds, i, epoch)
            _boxes_follow_colours(img, boxes, cls, atol=0.0)  # no resize here: exact
            for k in range(len(COLOURS)):
                x1, y1, x2, y2 = _rect(k)
                area = (x2 - x1) * (y2 - y1)
                visible = _colour_mask(img, k).sum()
                if k in cls:  # a kept box keeps at least 10 % of its pixels
                    assert visible >= 0.1 * area
                    box = boxes[list(cls).index(k)]
                    trimmed += (box[2] - box[0]) * (box[3] - box[1]) < area
                elif visible >= 0.1 * area:  # a colour with 10 % of its pixels left and no box: only a sliver
                    ext = _extent(_colour_mask(img, k))
                    assert min(ext[2] - ext[0], ext[3] - ext[1]) <= 2, (epoch, i, k)
            pasted += any(k != i for k in cls)
        assert len(_sample(ds, 0, epoch, mosaic=False)[2]) == 1  # off while mosaic is closed
    assert pasted >= 10 and trimmed >= 5  # boxes were pasted and cut in many of the 48 samples


# ------------------------------------------------------------------------------ determinism and cost
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    recs, _ = scan_split([str(make_shapes_split(tmp_path_factory.mktemp("mix"), n=20, size=64))], 3, use_cache=False)
    return recs


ALL_ON = dict(mixup=0.5, cutmix=0.5, perspective=0.0005, flipud=0.5, degrees=5.0)


def test_new_augmentations_depend_only_on_seed_epoch_index(shapes):
    """Batch size, workers, the buffer, the RAM cache and a mid-epoch resume never change a sample."""
    augmentation = augment_settings(**ALL_ON)
    alone = DetectionDataset(shapes, 64, True, augmentation, seed=5, buffer=0)
    ref = {i: alone[SampleKey(i, 3, True)] for i in range(len(shapes))}
    plain = DetectionDataset(shapes, 64, True, augment_settings(), seed=5, buffer=0)
    assert sum(not torch.equal(ref[i]["img"], plain[SampleKey(i, 3, True)]["img"]) for i in ref) >= 15
    runs = []
    for batch, workers, kwargs in ((8, 0, {}), (3, 2, {"buffer": 0}), (5, 0, {"cache": "ram"})):
        ds = DetectionDataset(shapes, 64, True, augmentation, seed=5, **kwargs)
        loader = build_dataloader(ds, batch_size=batch, workers=workers, shuffle=True, seed=5)
        set_loader_epoch(loader, 3)
        runs.append(by_index(list(loader)))
        set_loader_epoch(loader, 3, skip_batches=2)  # resume after two batches
        runs.append(by_index(list(loader)))
    for got in runs:
        assert got
        for i, (img, boxes) in got.items():
            assert torch.equal(img, ref[i]["img"]), i
            assert torch.equal(boxes, ref[i]["bboxes"]), i


def test_mix_partners_need_no_extra_decode(shapes, monkeypatch):
    """Mixup and cutmix partners come from the sample's mosaic group: a group is still decoded once."""
    ds = DetectionDataset(shapes, 64, True, augment_settings(mixup=1.0, cutmix=1.0), seed=1, buffer=0)
    calls = []
    real = ds.images.load
    monkeypatch.setattr(ds.images, "load", lambda i: calls.append(i) or real(i))
    order = epoch_order(len(ds), 1, 0).tolist()
    ds.__getitems__([SampleKey(i, 0, True) for i in order[:MOSAIC_GROUP]])
    assert sorted(calls) == sorted(order[:MOSAIC_GROUP])


def test_trainer_batches_show_the_augmentations(shapes):
    """The loader's batches are what the trainer plots into train_batch*.jpg: each setting changes them."""

    def first_batch(**kw):
        ds = DetectionDataset(shapes, 64, True, augment_settings(**kw), seed=0)
        loader = build_dataloader(ds, batch_size=8, workers=0, shuffle=True, seed=0)
        set_loader_epoch(loader, 0)
        return next(iter(loader))

    base = first_batch()
    up = first_batch(flipud=1.0)
    assert torch.equal(up["img"], base["img"].flip(2))  # every image of the batch upside down
    for key in ("mixup", "cutmix", "perspective"):
        other = first_batch(**{key: 1.0 if key != "perspective" else 0.001})
        assert not torch.equal(other["img"], base["img"]), key
    assert len(first_batch(mixup=1.0)["cls"]) > len(base["cls"])  # the partners' boxes come along
