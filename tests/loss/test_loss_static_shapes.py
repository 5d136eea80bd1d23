"""The padded, mask-based loss gives the values of the data-dependent one it replaced, and reads nothing back."""

import pytest
import torch
from reference_criterion import ReferenceDetectionLoss

from yolotrain.loss import DetectionLoss
from yolotrain.loss.targets import bucket, pad_targets
from yolotrain.utils.host_sync import HostSyncCounter

NC, REG_MAX, STRIDES = 3, 16, (8, 16, 32)


def raw_preds(b, size=64, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, 4 * REG_MAX + NC, size // s, size // s, generator=g) * 2).requires_grad_(requires_grad)
        for s in STRIDES
    ]


def labels(counts, seed=0):
    """Flat labels: ``counts[i]`` boxes in image i, shuffled across images (as a collate may interleave them)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    idx = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    perm = torch.randperm(n, generator=g)
    return {
        "batch_idx": idx[perm].float(),
        "cls": torch.randint(0, NC, (n, 1), generator=g).float(),
        "bboxes": torch.cat([xy, wh], 1)[perm],
    }


@pytest.mark.parametrize(
    "counts", [[0, 0], [1, 0], [0, 1, 0], [5, 3, 7, 1], [9, 2]], ids=["none", "one", "one-mid", "many", "cap"]
)
def test_loss_and_gradient_equal_the_reference(counts):
    cap = 16 if counts != [9, 2] else 9  # "cap": the largest image holds exactly the cap (a bucket of 9, not 16)
    ref = ReferenceDetectionLoss(NC, REG_MAX, STRIDES)
    new = DetectionLoss(NC, REG_MAX, STRIDES, max_boxes=cap)
    batch = labels(counts)
    p_ref, p_new = raw_preds(len(counts)), raw_preds(len(counts))
    loss_ref, items_ref = ref(p_ref, batch)
    packed = pad_targets(batch, len(counts), cap)
    assert packed.dropped == 0 and packed.rows.shape[1] == bucket(max(counts), cap)
    loss_new, items_new = new(p_new, {"targets": packed})
    assert torch.allclose(items_new, items_ref, rtol=1e-5, atol=1e-7), (items_new, items_ref)
    assert torch.allclose(loss_new, loss_ref, rtol=1e-5)
    loss_ref.backward()
    loss_new.backward()
    for a, b in zip(p_ref, p_new):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_padding_past_the_largest_count_changes_nothing():
    batch = labels([3, 1])
    tight = DetectionLoss(NC, REG_MAX, STRIDES, max_boxes=3)(raw_preds(2), {"targets": pad_targets(batch, 2, 3)})
    wide = DetectionLoss(NC, REG_MAX, STRIDES)(raw_preds(2), {"targets": pad_targets(batch, 2, 64)})
    assert torch.allclose(tight[1], wide[1], rtol=1e-6, atol=1e-8)


def test_pad_targets_packs_by_image_in_order_and_counts_the_overflow():
    batch = {
        "batch_idx": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]),
        "cls": torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]]),
        "bboxes": torch.arange(20, dtype=torch.float32).view(5, 4) / 20,
    }
    packed = pad_targets(batch, 3, max_boxes=3)  # image 1 has four boxes: bucket 4, capped at 3
    assert packed.rows.shape == (3, 3, 5) and packed.dropped == 1
    assert packed.mask.tolist() == [[True, False, False], [True, True, True], [False, False, False]]
    assert packed.rows[1, :, 0].tolist() == [1.0, 3.0, 4.0]  # the first three of image 1, in batch order
    assert packed.rows[0, 0, 0] == 2.0 and torch.equal(packed.rows[0, 0, 1:], batch["bboxes"][1])
    assert [bucket(c, 512) for c in (0, 1, 2, 3, 5, 8, 9, 600)] == [0, 1, 2, 4, 8, 8, 16, 512]


def test_loss_on_packed_labels_reads_nothing_back():
    crit = DetectionLoss(NC, REG_MAX, STRIDES)
    packed = pad_targets(labels([4, 0, 2]), 3)
    preds = raw_preds(3)
    with HostSyncCounter() as reads:
        loss, _ = crit(preds, {"targets": packed})
        loss.backward()
    assert reads.count == 0, reads.report()
