"""DetectionDataset: eval geometry, training samples, reproducibility, RAM cache, odd image formats."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from data_helpers import augment_settings, make_shapes_split
from PIL import Image

from yolotrain.config import resolve
from yolotrain.data.dataset import DetectionDataset, SampleKey
from yolotrain.data.loader import collate
from yolotrain.data.records import ImageRecord, xywhn_to_xyxy
from yolotrain.data.scan import scan_split
from yolotrain.errors import ConfigError


@pytest.fixture
def records(tmp_path):
    img_dir = make_shapes_split(tmp_path, n=8, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    return recs


def _white_extent(chw: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(chw[0].numpy() > 200)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def test_eval_item_geometry(tmp_path):
    # 100 x 200 image with a white box; imgsz 64 -> scale 0.32, 16 px padding top and bottom.
    p = tmp_path / "images" / "a.png"
    p.parent.mkdir()
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 40:120] = 255
    cv2.imwrite(str(p), img)
    rec = ImageRecord(str(p), 100, 200, np.array([2]), np.array([[0.4, 0.4, 0.4, 0.4]], np.float32))
    ds = DetectionDataset([rec], imgsz=64, augment=False)
    item = ds[0]
    assert item["img"].dtype == torch.uint8 and item["img"].shape == (3, 64, 64)
    assert collate([item])["img"].is_contiguous()
    assert item["ori_shape"] == (100, 200) and item["index"] == 0 and item["im_file"] == str(p)
    (rw, rh), (pw, ph) = item["ratio_pad"]
    assert rw == pytest.approx(0.32) and rh == pytest.approx(0.32) and (pw, ph) == (0, 16)
    assert item["cls"].shape == (1, 1) and item["cls"].dtype == torch.float32 and item["cls"].item() == 2
    box = xywhn_to_xyxy(item["bboxes"].numpy(), 64, 64)[0]
    # original box (40, 20, 120, 60) mapped by ratio_pad, and on the white pixels
    np.testing.assert_allclose(box, [40 * rw + pw, 20 * rh + ph, 120 * rw + pw, 60 * rh + ph], atol=1e-4)
    np.testing.assert_allclose(box, _white_extent(item["img"]), atol=1.0)
    # evaluation is deterministic
    assert torch.equal(ds[0]["img"], item["img"])


def test_train_items_valid_and_reproducible(records):
    ds = DetectionDataset(records, imgsz=64, augment=True, augmentation=augment_settings(degrees=10, shear=2), seed=3)
    for i in range(len(ds)):
        it = ds[SampleKey(i, 0, True)]
        assert it["img"].shape == (3, 64, 64) and it["img"].dtype == torch.uint8
        b = it["bboxes"]
        assert b.shape[1] == 4 and it["cls"].shape == (len(b), 1)
        assert (b >= 0).all() and (b <= 1).all()
    a, b = ds[SampleKey(5, 2, True)], ds[SampleKey(5, 2, True)]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["bboxes"], b["bboxes"])
    other_epoch = ds[SampleKey(5, 3, True)]
    assert not torch.equal(a["img"], other_epoch["img"])
    other_seed = DetectionDataset(records, 64, True, augment_settings(), seed=4)[SampleKey(5, 2, True)]
    assert not torch.equal(a["img"], other_seed["img"])
    # plain int index uses the dataset's own epoch
    ds.set_epoch(2)
    assert torch.equal(ds[5]["img"], a["img"])


def test_train_boxes_follow_pixels_without_mosaic(records):
    # Only geometric augmentation, no colour change: every box must sit on its white rectangle.
    augmentation = augment_settings(mosaic=0.0, degrees=0.0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5)
    ds = DetectionDataset(records, 64, True, augmentation)
    checked = 0
    for i in range(len(ds)):
        it = ds[SampleKey(i, 0, True)]
        if len(it["bboxes"]) == 0:  # the rectangle was moved out of the frame: nothing to compare
            assert (it["img"][0] > 200).sum() < 4
            continue
        box = xywhn_to_xyxy(it["bboxes"].numpy(), 64, 64)[0]
        np.testing.assert_allclose(box, _white_extent(it["img"]), atol=2.0)
        checked += 1
    assert checked >= len(ds) - 2  # most samples keep their box: the comparison above really ran


def test_mosaic_switch(records):
    # With every augmentation off, a non-mosaic training sample is exactly the eval sample.
    augmentation = augment_settings(mosaic=1.0, translate=0, scale=0, fliplr=0, hsv_h=0, hsv_s=0, hsv_v=0)
    train = DetectionDataset(records, 64, True, augmentation)
    ev = DetectionDataset(records, 64, False)
    off = train[SampleKey(1, 0, False)]
    assert torch.equal(off["img"], ev[1]["img"]) and torch.allclose(off["bboxes"], ev[1]["bboxes"])
    on = train[SampleKey(1, 0, True)]
    assert not torch.equal(on["img"], ev[1]["img"])
    train.mosaic_enabled = False  # the dataset's own switch for plain int indices
    assert torch.equal(train[1]["img"], ev[1]["img"])


def test_ram_cache_gives_identical_samples(records):
    augmentation = augment_settings()
    a = DetectionDataset(records, 64, True, augmentation, cache="ram")
    b = DetectionDataset(records, 64, True, augmentation, cache=False)
    assert a.images.ram is not None and len(a.images.ram) == len(records)
    for i in (0, 3):
        assert torch.equal(a[SampleKey(i, 1, True)]["img"], b[SampleKey(i, 1, True)]["img"])
    # cached arrays are not modified by in-place augmentation
    before = a.images.ram[0][0].copy()
    a[SampleKey(0, 0, False)]
    np.testing.assert_array_equal(a.images.ram[0][0], before)


def test_odd_formats_load_as_rgb_uint8(tmp_path):
    d = tmp_path / "images" / "train"
    d.mkdir(parents=True)
    cv2.imwrite(str(d / "gray.png"), np.full((30, 40), 77, np.uint8))
    Image.fromarray(np.full((30, 40, 4), 200, np.uint8), "RGBA").save(d / "rgba.png")
    cv2.imwrite(str(d / "deep.png"), np.full((30, 40), 40000, np.uint16))
    im = Image.new("RGB", (40, 30), (10, 200, 10))
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(d / "exif.jpg", exif=exif)
    recs, _ = scan_split([str(d)], nc=1, use_cache=False)
    ds = DetectionDataset(recs, 64, augment=False)
    shapes = {}
    for i in range(len(ds)):
        it = ds[i]
        assert it["img"].shape == (3, 64, 64) and it["img"].dtype == torch.uint8
        shapes[it["im_file"].rsplit("/", 1)[-1]] = it["ori_shape"]
        img, shape0 = ds.images.load_image(i)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and max(img.shape[:2]) == 64
        assert shape0 == (recs[i].height, recs[i].width)  # decoder agrees with the scan
    assert shapes == {"deep.png": (30, 40), "exif.jpg": (40, 30), "gray.png": (30, 40), "rgba.png": (30, 40)}
    deep = ds.images.load_image([r.im_file.endswith("deep.png") for r in recs].index(True))[0]
    assert deep[0, 0, 0] == 40000 >> 8


def test_bad_settings():
    with pytest.raises(ConfigError, match="imgsz"):
        DetectionDataset([], imgsz=100, augment=False)
    with pytest.raises(ConfigError, match="hyp"):
        DetectionDataset([], imgsz=64, augment=True, augmentation=object())
    with pytest.raises(ConfigError, match="cache"):
        DetectionDataset([], imgsz=64, augment=False, cache="tape")


def test_training_takes_the_augmentation_section_not_the_whole_config():
    with pytest.raises(ConfigError, match="AugmentSettings"):
        DetectionDataset([], imgsz=64, augment=True, augmentation=resolve({}))
    with pytest.raises(ConfigError, match="AugmentSettings"):
        DetectionDataset([], imgsz=64, augment=True)


def test_labels_for_eval_in_original_pixels(records):
    ds = DetectionDataset(records, 64, False)
    boxes, cls = ds.labels_for_eval(0)
    r = records[0]
    np.testing.assert_allclose(boxes, xywhn_to_xyxy(r.bboxes, r.width, r.height))
    assert cls.tolist() == r.cls.tolist()
