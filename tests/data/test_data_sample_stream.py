"""The global sample stream: step k trains the same samples, with the same pixels, on any number of processes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from data_helpers import augment_settings, make_shapes_split

from yolotrain.data.dataset import DetectionDataset
from yolotrain.data.loader import build_dataloader, set_loader_epoch
from yolotrain.data.sample_stream import global_steps, rank_share
from yolotrain.data.scan import scan_split


def test_rank_share_hand_computed():
    order = np.arange(10) * 10  # steps of 4: [0 10 20 30] [40 50 60 70] [80 90]
    assert rank_share(order, 4, 2, 0).tolist() == [0, 20, 40, 60, 80]
    assert rank_share(order, 4, 2, 1).tolist() == [10, 30, 50, 70, 90]
    assert rank_share(order, 4, 2, 0, start_step=1).tolist() == [40, 60, 80]
    assert rank_share(order, 4, 2, 1, start_step=2).tolist() == [90]
    assert rank_share(order, 4, 2, 1, start_step=3).tolist() == []
    assert rank_share(order, 4, 1, 0, start_step=1).tolist() == [40, 50, 60, 70, 80, 90]
    assert global_steps(10, 4) == 3 and global_steps(8, 4) == 2


def test_rank_share_pads_a_last_step_shorter_than_the_world():
    # 9 samples, batch 4 over 4 processes: the last step has one image; every rank takes it, so all take 3 steps
    shares = [rank_share(np.arange(9), 4, 4, r).tolist() for r in range(4)]
    assert shares == [[0, 4, 8], [1, 5, 8], [2, 6, 8], [3, 7, 8]]


def test_rank_share_refuses_a_batch_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide over 3"):
        rank_share(np.arange(10), 8, 3, 0)


@pytest.mark.parametrize("n, batch", [(24, 8), (21, 8), (13, 4), (30, 12)])
def test_every_world_that_divides_the_batch_trains_the_same_steps(n, batch):
    order = np.random.default_rng(n).permutation(n)
    steps = global_steps(n, batch)
    reference = [set(order[k * batch : (k + 1) * batch].tolist()) for k in range(steps)]  # one process
    for world in [w for w in range(2, batch + 1) if batch % w == 0 and (n % batch == 0 or n % batch >= w)]:
        b = batch // world
        for start in range(steps + 1):
            shares = [rank_share(order, batch, world, r, start) for r in range(world)]
            for k in range(start, steps):
                got = set().union(*(s[(k - start) * b : (k - start + 1) * b].tolist() for s in shares))
                assert got == reference[k], (world, start, k)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    img_dir = make_shapes_split(tmp_path_factory.mktemp("stream"), n=12, size=64)
    return scan_split([str(img_dir)], nc=3, use_cache=False)[0]


def _pixel_hashes(loader, epoch: int, skip: int = 0) -> list[dict[int, str]]:
    """Per step of ``loader``'s epoch: {global sample index: hash of its augmented pixels and labels}."""
    set_loader_epoch(loader, epoch, skip)
    steps = []
    for batch in loader:
        hashes = {}
        for j, idx in enumerate(batch["index"].tolist()):
            h = hashlib.sha1(batch["img"][j].numpy().tobytes())
            h.update(batch["bboxes"][batch["batch_idx"] == j].numpy().tobytes())
            hashes[idx] = h.hexdigest()
        steps.append(hashes)
    return steps


def _merged(per_rank: list[list[dict[int, str]]]) -> list[dict[int, str]]:
    assert len({len(r) for r in per_rank}) == 1  # every rank takes the same number of steps
    return [{k: v for r in step for k, v in r.items()} for step in zip(*per_rank)]


def test_same_pixels_per_step_on_one_and_two_processes(records):
    """Mosaic (with its partners), mixup, cutmix, HSV, affine and flips on: a sample's pixels follow its index."""
    augmentation = augment_settings(mixup=0.5, cutmix=0.5, flipud=0.5)
    ds = DetectionDataset(records, 64, True, augmentation, seed=5)
    one = build_dataloader(ds, batch_size=4, workers=0, shuffle=True, seed=5)
    ranks = [build_dataloader(ds, 2, 0, True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for epoch, skip_steps in ((0, 0), (1, 1)):
        ref = _pixel_hashes(one, epoch, skip_steps)
        assert len(ref) == 3 - skip_steps
        assert _merged([_pixel_hashes(ld, epoch, skip_steps) for ld in ranks]) == ref
