"""Measuring the data path: the consumer's wait share, per-stage times from workers, and advice."""

from __future__ import annotations

import time

import pytest
import torch
from data_helpers import augment_settings, make_shapes_split
from torch.utils.data import Dataset

from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.loader import build_dataloader, set_loader_epoch
from yolotrain.data.profile import STAGES, LoaderStats, StageClock, advise, loader_advice
from yolotrain.data.scan import scan_split


class _Slow(Dataset):
    """Items that take ``delay`` seconds each."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay)
        img = torch.zeros(3, 4, 4, dtype=torch.uint8)
        return {"img": img, "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4), "im_file": "", "ori_shape": (4, 4),
                "ratio_pad": None, "index": i}  # fmt: skip


def test_wait_share_measured():
    # 6 batches of 2 items at 10 ms each (>= 20 ms of waiting per batch) and 100 ms steps.
    # Sleeps only overshoot, so the bounds are one-sided where a loaded machine could stretch them.
    loader = build_dataloader(_Slow(12, 0.01), batch_size=2, workers=0, shuffle=False, epoch_aware=False)
    for _ in loader:
        time.sleep(0.1)
    st = loader.stats
    assert st.batches == 6 and st.images == 12
    assert st.wait_s >= 0.12 and st.busy_s >= 0.6
    assert st.wait_s < st.busy_s and 0 < st.wait_share < 0.5
    # a consumer that does nothing waits nearly all the time
    for _ in loader:
        pass
    assert loader.stats.wait_share > 0.8 and loader.stats.batches == 6  # fresh stats per pass


def test_stage_times_arrive_from_workers(tmp_path):
    img_dir = make_shapes_split(tmp_path, n=8, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    ds = DetectionDataset(recs, 64, True, augment_settings(), buffer=0)
    loader = build_dataloader(ds, batch_size=4, workers=2, shuffle=True, seed=0)
    set_loader_epoch(loader, 0)
    batches = list(loader)
    st = loader.stats
    assert st.stage_images == 8  # every sample was timed, in the worker processes
    per = st.ms_per_image()
    for stage in ("read", "decode", "affine", "hsv", "collate"):
        assert per[stage] > 0, stage
    assert all("stage_ms" in b for b in batches)
    assert "total" in st.table() and "decode" in st.table()


def _burn_cpu(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


def test_a_stage_charges_the_cpu_time_spent_inside_it_and_nothing_else():
    clock = StageClock()
    with clock.stage("hsv"):
        _burn_cpu(0.02)
    _burn_cpu(0.02)  # outside any stage: charged nowhere
    with clock.stage("hsv"):
        _burn_cpu(0.01)
    ms = clock.take()
    assert 30.0 <= ms["hsv"] < 50.0  # the two intervals inside, not the 20 ms between them
    assert all(ms[k] == 0.0 for k in STAGES if k != "hsv")
    assert clock.take()["hsv"] == 0.0  # take resets
    with pytest.raises(KeyError):
        clock.stage("nosuch")


def test_every_stage_is_reported(tmp_path):
    """Mosaic on half the samples: the other half take the letterbox path; flipud=1 flips every sample."""
    img_dir = make_shapes_split(tmp_path, n=8, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    ds = DetectionDataset(recs, 64, True, augment_settings(mosaic=0.5, flipud=1.0), buffer=0)
    loader = build_dataloader(ds, batch_size=4, workers=0, shuffle=True, seed=0)
    set_loader_epoch(loader, 0)
    list(loader)
    per = loader.stats.ms_per_image()
    assert loader.stats.stage_images == 8 and sorted(per) == sorted(STAGES)
    assert [k for k in STAGES if per[k] <= 0] == []


def _stats(wait_s: float, busy_s: float, images: int, per_image_ms: dict[str, float]) -> LoaderStats:
    st = LoaderStats(wait_s=wait_s, busy_s=busy_s, batches=images // 16, images=images)
    st.stage_ms = {k: per_image_ms.get(k, 0.0) * images for k in STAGES}
    st.stage_images = images
    return st


def test_advice_more_workers_and_cache():
    # 400 images in 4 s of steps: the model takes 100 images/s; 20 ms/image: one worker makes 50/s.
    st = _stats(6.0, 4.0, 400, {"read": 2, "decode": 5, "resize": 1, "mosaic": 4, "affine": 5, "hsv": 3})
    lines = advise(st, workers=0, cpu_count=8, imgsz=640, cache="off", cache_bytes=1.5e9, available_bytes=8e9)
    assert lines[0].startswith("data wait 60% of step time")
    assert any(ln.startswith("workers=2:") and "makes 50 images/s" in ln and "takes 100" in ln for ln in lines)
    # read + decode + resize = 8 of 20 ms
    assert any(
        ln.startswith("cache=ram") and "(40% of loader time)" in ln and "needs 1.5 GB, 8.0 GB" in ln for ln in lines
    )
    assert not any(ln.startswith("imgsz=") for ln in lines)


def test_advice_one_worker_instead_of_none():
    # 400 images in 10 s of steps: 40 images/s; 20 ms/image: one worker (50/s) suffices, but 0 never overlaps.
    st = _stats(5.0, 10.0, 400, {"decode": 4, "affine": 16})
    lines = advise(st, workers=0, cpu_count=2, imgsz=640, cache="off", cache_bytes=1e9, available_bytes=8e9)
    assert lines[1] == (
        "workers=1: one worker makes 50 images/s, the model takes 40"
        " (workers=0 loads between steps, never alongside them)"
    )
    assert len(lines) == 2  # read+decode is 20%: no cache advice


def test_advice_when_cpu_cost_does_not_explain_the_wait():
    # 2 ms/image with 2 workers makes 1000 images/s; the model takes 100: the wait is not the CPU work.
    st = _stats(2.0, 8.0, 800, {"decode": 1.0, "affine": 1.0})
    lines = advise(st, workers=2, cpu_count=8, imgsz=640, cache="ram", cache_bytes=1e9, available_bytes=8e9)
    assert len(lines) == 2 and "1000 images/s with workers=2" in lines[1] and "model's 100 images/s" in lines[1]


def test_advice_smaller_imgsz_when_cores_cannot_keep_up():
    # The model takes 1000 images/s; 2 cores at 12 ms/image after caching make 166.7/s:
    # imgsz 640 * sqrt(166.7 / 1000) = 261 -> 256.
    st = _stats(9.0, 1.0, 1000, {"read": 2, "decode": 5, "resize": 1, "mosaic": 4, "affine": 5, "hsv": 3})
    lines = advise(st, workers=1, cpu_count=2, imgsz=640, cache="off", cache_bytes=1e9, available_bytes=8e9)
    assert any(ln.startswith("workers=2 (every core)") for ln in lines)
    assert any(ln.startswith("imgsz=256:") for ln in lines)
    # when the cache would not fit, only the full 20 ms/image counts: 2 cores make 100/s -> 640*sqrt(0.1) = 202 -> 192
    lines = advise(st, workers=1, cpu_count=2, imgsz=640, cache="off", cache_bytes=9e9, available_bytes=8e9)
    assert any("(does not fit)" in ln for ln in lines)
    assert any(ln.startswith("imgsz=192:") for ln in lines)


def test_advice_nothing_when_data_keeps_up():
    st = _stats(0.5, 9.5, 400, {"decode": 5, "affine": 5})
    lines = advise(st, workers=2, cpu_count=8, imgsz=640, cache="off", cache_bytes=1e9, available_bytes=8e9)
    assert lines[0].startswith("data wait 5%") and lines[1] == "the data path keeps up: no change needed"
    assert len(lines) == 2


@pytest.mark.slow
def test_loader_advice_from_a_real_epoch(tmp_path):
    img_dir = make_shapes_split(tmp_path, n=8, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    ds = DetectionDataset(recs, 64, True, augment_settings())
    loader = build_dataloader(ds, batch_size=4, workers=0, shuffle=True, seed=0)
    set_loader_epoch(loader, 0)
    for _ in loader:
        time.sleep(1.0)  # a slow model: the data keeps up
    lines = loader_advice(loader, workers=0, imgsz=64, cache="off")
    assert lines[0].startswith("data wait ") and "decode" in lines[0]
    assert lines[1] == "the data path keeps up: no change needed"
    # with an instant consumer the wait dominates and advice follows (a number of workers or imgsz)
    for _ in loader:
        pass
    lines = loader_advice(loader, workers=0, imgsz=64, cache="off")
    assert loader.stats.wait_share > 0.5
    assert lines[1].startswith("workers=")  # an instant consumer: as many workers as there are cores
