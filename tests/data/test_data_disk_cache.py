"""cache=disk: decoded arrays reused across datasets (runs), identical samples, invalidated when an image changes."""

from __future__ import annotations

import os

import cv2
import numpy as np
import psutil
import pytest
import torch
from data_helpers import augment_settings, make_shapes_split

from yolotrain.data.dataset import DetectionDataset, SampleKey
from yolotrain.data.scan import scan_split


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOTRAIN_CACHE", str(tmp_path / "cache"))
    img_dir = make_shapes_split(tmp_path / "ds", n=6, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    return recs


def test_disk_cache_same_samples_and_reused(records, tmp_path, monkeypatch):
    plain = DetectionDataset(records, 64, True, augment_settings(), seed=1, buffer=0)
    first = DetectionDataset(records, 64, True, augment_settings(), seed=1, cache="disk", buffer=0)
    keys = [SampleKey(i, 2, True) for i in range(len(records))]
    for k in keys:
        assert torch.equal(first[k]["img"], plain[k]["img"])
    files = sorted((tmp_path / "cache" / "decoded").rglob("*.npy"))
    assert len(files) == len(records)  # one array per image, nothing half-written left behind
    # a new dataset (a new run) reads them back and decodes nothing
    again = DetectionDataset(records, 64, True, augment_settings(), seed=1, cache="disk", buffer=0)
    monkeypatch.setattr(again.images, "decode", lambda i: pytest.fail("decoded despite cache=disk"))
    for k in keys:
        assert torch.equal(again[k]["img"], plain[k]["img"])
    ev_plain, ev_disk = DetectionDataset(records, 64, False), DetectionDataset(records, 64, False, cache="disk")
    assert torch.equal(ev_disk[0]["img"], ev_plain[0]["img"]) and ev_disk[0]["ori_shape"] == ev_plain[0]["ori_shape"]


def test_disk_cache_invalidated_when_the_image_changes(records, tmp_path):
    ds = DetectionDataset(records, 64, False, cache="disk", rect=False)
    before = ds[0]["img"].clone()
    f = records[0].im_file
    img = cv2.imread(f)
    cv2.imwrite(f, 255 - img)  # same size, new pixels
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = DetectionDataset(records, 64, False, cache="disk", rect=False)[0]["img"]
    assert not torch.equal(after, before)
    assert torch.equal(after, DetectionDataset(records, 64, False, rect=False)[0]["img"])


def test_damaged_cache_file_is_decoded_again(records, tmp_path):
    ds = DetectionDataset(records, 64, False, cache="disk", rect=False)
    ref = ds[1]["img"].clone()
    f = ds.images.disk_cache_file(1)
    f.write_bytes(b"\x93NUMPY garbage")
    fresh = DetectionDataset(records, 64, False, cache="disk", rect=False)
    assert torch.equal(fresh[1]["img"], ref)
    assert np.load(f, allow_pickle=False).shape[2] == 3  # and rewritten


def test_touched_image_gets_a_new_cache_file(records, tmp_path):
    ds = DetectionDataset(records, 64, False, cache="disk", rect=False)
    ds[2]
    old = ds.images.disk_cache_file(2)
    f = records[2].im_file
    data = open(f, "rb").read()
    with open(f, "wb") as fh:  # same bytes and size, a new modification time: an edit the size cannot show
        fh.write(data)
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = ds.images.disk_cache_file(2)
    assert new != old
    DetectionDataset(records, 64, False, cache="disk", rect=False)[2]
    assert new.is_file()


def test_refused_ram_cache_keeps_the_buffer(records, monkeypatch):
    class _Tiny:
        available = 1000  # bytes: no image set fits

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Tiny())
    ds = DetectionDataset(records, 64, False, cache="ram")
    assert ds.images.ram is None and ds.images.buffer == 128  # refused: recent images are still kept
    monkeypatch.undo()
    cached = DetectionDataset(records, 64, False, cache="ram")
    assert cached.images.ram is not None and cached.images.buffer == 0  # all in memory: no second copy
