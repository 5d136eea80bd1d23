"""val_resize: the default area path vs a bilinear shrink to a rounded-up size (Ultralytics' val preprocessing)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from data_helpers import augment_settings

from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.records import ImageRecord
from yolotrain.errors import ConfigError


@pytest.fixture
def big_jpeg(tmp_path):
    # 600 x 360 at imgsz 64: the scale is 64/600, so the short side is 38.4 px: 38 rounded, 39 rounded up;
    # the long side is 9x what is needed, so the default path decodes it at 1/8 scale.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:360, 0:600]
    img = np.stack([xx * 255 // 600, yy * 255 // 360, rng.integers(0, 255, (360, 600))], -1).astype(np.uint8)
    path = tmp_path / "wide.jpg"
    cv2.imwrite(str(path), img)
    return ImageRecord(str(path), 360, 600)


def test_bilinear_is_a_full_decode_and_bilinear_resize_to_a_rounded_up_size(big_jpeg):
    img, shape0 = DetectionDataset([big_jpeg], 64, False, val_resize="bilinear").images.load_image(0)
    full = cv2.cvtColor(cv2.imread(big_jpeg.im_file), cv2.COLOR_BGR2RGB)
    assert shape0 == (360, 600) and img.shape == (39, 64, 3)
    np.testing.assert_array_equal(img, cv2.resize(full, (64, 39), interpolation=cv2.INTER_LINEAR))


def test_area_default_rounds_and_differs(big_jpeg):
    img, _ = DetectionDataset([big_jpeg], 64, False).images.load_image(0)
    assert img.shape == (38, 64, 3)
    # the eval sample is letterboxed to 64 x 64 either way; the boxes' scale-back uses the real ratios
    bilinear = DetectionDataset([big_jpeg], 64, False, val_resize="bilinear")
    assert bilinear[0]["img"].shape == (3, 64, 64)


def test_training_ignores_val_resize(big_jpeg):
    train = DetectionDataset([big_jpeg], 64, True, augment_settings(), val_resize="bilinear")
    img, _ = train.images.load_image(0)
    assert img.shape == (38, 64, 3)  # training keeps its own (reduced-decode) path


def test_bad_val_resize_refused(big_jpeg):
    with pytest.raises(ConfigError, match="val_resize"):
        DetectionDataset([big_jpeg], 64, False, val_resize="nearest")


def test_ram_cache_keeps_the_two_resizes_apart(big_jpeg, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOTRAIN_SHM", str(tmp_path / "shm"))
    area = DetectionDataset([big_jpeg], 64, False, cache="ram")
    bilinear = DetectionDataset([big_jpeg], 64, False, val_resize="bilinear", cache="ram")
    assert area.images.load_image(0)[0].shape == (38, 64, 3)
    assert bilinear.images.load_image(0)[0].shape == (39, 64, 3)  # not the area-resized copy cached first
    assert len(list((tmp_path / "shm").glob("yolotrain-ram-*.bin"))) == 2
