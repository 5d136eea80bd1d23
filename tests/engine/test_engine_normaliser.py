"""normaliser.py: the split-batch loss arithmetic, on numbers worked out by hand."""

import pytest
import torch

from yolotrain.engine.normaliser import (
    batch_normaliser,
    gradient_correction,
    part_normaliser,
    provisional_constant,
    split_items,
)


def test_batch_normaliser_is_the_floored_total_over_ranks():
    assert batch_normaliser(3.0, 1) == 3.0
    assert batch_normaliser(3.0, 2) == 1.5  # DDP: averaged gradients times ranks give the global sum back
    assert batch_normaliser(0.4, 2) == 0.5  # floored at 1 before dividing: an almost empty batch
    assert batch_normaliser(torch.tensor(0.0), 1).item() == 1.0


def test_a_split_batch_reports_and_back_propagates_what_the_whole_batch_would():
    # a batch of n = 4 images in two parts: 1 image (target scores 0.5, raw loss terms R1 = (1, 2, 3)) and
    # 3 images (scores 2.5, R2 = (3, 3, 3)); whole batch: S = 3, items R / S = (4/3, 5/3, 2), loss n * R / S
    n = 4
    c = provisional_constant(0.5, n, 1)
    assert c == 2.0  # 0.5 scaled from 1 image to 4
    assert part_normaliser(c, n, 1) == 0.5 and part_normaliser(c, n, 3) == 1.5
    r1, r2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 3.0, 3.0])
    items1, items2 = r1 / 0.5, r2 / 1.5  # what the criterion reports for each part
    s = batch_normaliser(0.5 + 2.5, 1)
    got = split_items(items1 * 1 + items2 * 3, c, n, s)
    assert torch.allclose(got, torch.tensor([4 / 3, 5 / 3, 2.0]))
    # back-propagated: m * R_p / norm_p per part = 2 * R1 + 2 * R2 = n * R / C; corrected by C / S = 2 / 3
    assert gradient_correction(c, s) == pytest.approx(2 / 3)
    assert torch.allclose((2 * r1 + 2 * r2) * gradient_correction(c, s), n * (r1 + r2) / 3)


def test_provisional_constant_is_at_least_one_and_stays_on_the_device():
    assert provisional_constant(0.1, 8, 4) == 1.0  # 0.2 would make the fp16 loss needlessly large
    t = provisional_constant(torch.tensor(0.75), 8, 2)
    assert isinstance(t, torch.Tensor) and t.item() == 3.0
