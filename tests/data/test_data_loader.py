"""Collate and loader reproducibility across worker counts, epochs, persistent workers and ranks."""

from __future__ import annotations

import pytest
import torch
from data_helpers import augment_settings, make_shapes_split

from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.loader import EpochSampler, build_dataloader, collate, set_loader_epoch
from yolotrain.data.scan import scan_split


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    img_dir = make_shapes_split(root, n=10, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    return recs


def _epoch(loader, epoch: int, skip: int = 0, mosaic: bool = True) -> list[dict]:
    set_loader_epoch(loader, epoch, skip, mosaic)
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    keys = ("img", "cls", "bboxes", "batch_idx", "index")
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in keys)


def test_collate_shapes_and_batch_index():
    items = []
    for i, n in enumerate([2, 0, 3]):
        items.append({
            "img": torch.full((3, 8, 8), i, dtype=torch.uint8),
            "cls": torch.arange(n, dtype=torch.float32).reshape(-1, 1),
            "bboxes": torch.rand(n, 4),
            "im_file": f"f{i}", "ori_shape": (8, 8), "ratio_pad": ((1, 1), (0, 0)), "index": 10 + i,
        })  # fmt: skip
    b = collate(items)
    assert b["img"].shape == (3, 3, 8, 8) and b["img"].dtype == torch.uint8
    assert b["cls"].shape == (5, 1) and b["bboxes"].shape == (5, 4)
    assert b["batch_idx"].dtype == torch.float32 and b["batch_idx"].tolist() == [0, 0, 2, 2, 2]
    assert b["index"].tolist() == [10, 11, 12] and b["im_file"] == ["f0", "f1", "f2"]
    assert len(b["ori_shape"]) == 3 and len(b["ratio_pad"]) == 3


def test_same_batches_with_0_and_2_workers_and_epochs_differ(records):
    ds = DetectionDataset(records, 64, True, augment_settings(), seed=7)
    l0 = build_dataloader(ds, batch_size=4, workers=0, shuffle=True, seed=7)
    l2 = build_dataloader(ds, batch_size=4, workers=2, shuffle=True, seed=7)
    e0_w0, e1_w0 = _epoch(l0, 0), _epoch(l0, 1)
    e0_w2, e1_w2 = _epoch(l2, 0), _epoch(l2, 1)
    assert len(e0_w0) == 3 and e0_w0[0]["img"].shape == (4, 3, 64, 64)
    assert _same(e0_w0, e0_w2) and _same(e1_w0, e1_w2)
    assert not _same(e0_w0, e1_w0)
    # epoch order depends only on (seed, epoch): going back to epoch 0 repeats it exactly
    assert _same(_epoch(l2, 0), e0_w0)
    order = torch.cat([b["index"] for b in e0_w0])
    assert sorted(order.tolist()) == list(range(10))


def test_persistent_workers_see_mosaic_switch(records):
    augmentation = augment_settings()
    ds = DetectionDataset(records, 64, True, augmentation, seed=1)
    loader = build_dataloader(ds, batch_size=5, workers=2, shuffle=True, seed=1, persistent_workers=True)
    with_mosaic = _epoch(loader, 3)
    without = _epoch(loader, 3, mosaic=False)  # given in the main process only; workers already hold their copies
    ref_ds = DetectionDataset(records, 64, True, augmentation, seed=1)
    ref = _epoch(build_dataloader(ref_ds, batch_size=5, workers=0, shuffle=True, seed=1), 3, mosaic=False)
    assert _same(without, ref)
    assert not _same(with_mosaic, without)


def test_skip_batches_resumes_mid_epoch(records):
    ds = DetectionDataset(records, 64, True, augment_settings(), seed=2)
    loader = build_dataloader(ds, batch_size=3, workers=0, shuffle=True, seed=2)
    full = _epoch(loader, 4)
    resumed = _epoch(loader, 4, skip=2)
    assert len(loader) == len(full) - 2
    assert _same(resumed, full[2:])
    assert len(_epoch(loader, 5)) == len(full)  # the next epoch is complete again


def test_eval_loader_is_sequential(records):
    ds = DetectionDataset(records, 64, False, rect=False)
    loader = build_dataloader(ds, batch_size=4, workers=0, shuffle=False)
    idx = torch.cat([b["index"] for b in _epoch(loader, 0)]).tolist()
    assert idx == list(range(10))


def test_distributed_shards_are_disjoint(records):
    ds = DetectionDataset(records, 64, False)
    parts = []
    for rank in (0, 1):
        loader = build_dataloader(ds, batch_size=2, workers=0, shuffle=True, seed=3, rank=rank, world_size=2)
        assert isinstance(loader.sampler, EpochSampler)
        parts.append(torch.cat([b["index"] for b in _epoch(loader, 1)]).tolist())
    assert len(parts[0]) == len(parts[1]) == 5
    assert sorted(parts[0] + parts[1]) == list(range(10))


def test_workers_clamped_and_plain_sampler(records):
    ds = DetectionDataset(records, 64, False)
    loader = build_dataloader(ds, batch_size=2, workers=64, shuffle=False)
    assert loader.num_workers <= 2
    plain = build_dataloader(ds, batch_size=4, workers=0, shuffle=True, seed=3, epoch_aware=False)
    loader = build_dataloader(ds, batch_size=4, workers=0, shuffle=True, seed=3)
    # both sampler kinds use the same (seed, epoch) -> order rule
    for e in (0, 1):
        a = torch.cat([b["index"] for b in _epoch(plain, e)])
        b = torch.cat([b["index"] for b in _epoch(loader, e)])
        assert torch.equal(a, b)


def _freeze_count_after_worker_init(queue) -> None:
    import gc

    from yolotrain.data.loader import _seed_worker

    before = gc.get_freeze_count()
    _seed_worker(0)
    queue.put((before, gc.get_freeze_count()))


def test_a_forked_worker_freezes_what_it_inherited():
    """A loader worker's garbage collector leaves the objects it inherited alone (gc.freeze at worker start), so
    a full collection in the worker does not copy the main process's heap pages (see the shared-cache memory
    test for the measured effect)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_freeze_count_after_worker_init, args=(queue,))
    proc.start()
    before, after = queue.get(timeout=60)
    proc.join(timeout=60)
    assert before == 0 and after > 1000  # the test process's modules, functions, ... are inherited objects


def test_the_mosaic_switch_is_an_argument_of_set_epoch(records):
    ds = DetectionDataset(records, 64, True, augment_settings(), seed=1)
    loader = build_dataloader(ds, batch_size=5, workers=0, shuffle=True, seed=1)
    ds.mosaic_enabled = False  # the dataset's own switch (plain int indices) is not read back by the sampler
    set_loader_epoch(loader, 2, mosaic=True)
    assert {key.mosaic for key in loader.sampler} == {True}
    set_loader_epoch(loader, 2, 1, mosaic=False)  # the tail of the run: off, and a mid-epoch skip keeps it
    keys = list(loader.sampler)
    assert len(keys) == 5 and {key.mosaic for key in keys} == {False} and {key.epoch for key in keys} == {2}
    set_loader_epoch(loader, 3)  # each call sets it: on unless told otherwise
    assert {key.mosaic for key in loader.sampler} == {True}
