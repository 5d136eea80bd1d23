"""class_balance.py: LVIS repeat factors, the repeat-factor epoch order, class weights (hand-computed cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from yolotrain.data.class_balance import (
    CLS_WEIGHT_CLIP,
    class_image_counts,
    class_weights,
    epoch_length,
    repeat_counts,
    repeat_epoch_order,
    repeat_factors,
)
from yolotrain.data.loader import EpochSampler
from yolotrain.errors import ConfigError

# 8 images: class 0 in 6 of them (one image holds it twice), class 1 in 2, class 2 in 1 (together with
# class 1), one image empty
IMAGES = [
    np.array([0]),
    np.array([0, 0]),
    np.array([0]),
    np.array([0, 1]),
    np.array([0]),
    np.array([0]),
    np.array([1, 2]),
    np.array([], dtype=np.int64),
]


def test_class_image_counts_count_each_image_once() -> None:
    assert class_image_counts(IMAGES, 4).tolist() == [6, 2, 1, 0]


def test_repeat_factors_follow_the_lvis_rule() -> None:
    # f = [6/8, 2/8, 1/8]; t = 0.5: r_c = max(1, sqrt(0.5 / f)) = [1, sqrt(2), 2]
    r = repeat_factors(IMAGES, 3, 0.5)
    expected = [1, 1, 1, math.sqrt(2), 1, 1, 2, 1]  # image: the max over its classes (not their sum); empty: 1
    assert r.tolist() == pytest.approx(expected)
    assert repeat_factors(IMAGES, 3, 0.01).tolist() == [1.0] * 8  # every class above t: nothing repeats


def test_repeat_counts_round_each_factor_down_or_up_and_keep_the_length() -> None:
    r = repeat_factors(IMAGES, 3, 0.5)
    length = epoch_length(r)
    assert length == math.ceil(6 + math.sqrt(2) + 2) == 10  # 9.414 rounds up to 10
    scaled = r * 10 / (8 + math.sqrt(2))  # [1.062, 1.062, 1.062, 1.502, 1.062, 1.062, 2.124, 1.062]
    seen = np.zeros(8)
    for epoch in range(400):
        c = repeat_counts(r, seed=5, epoch=epoch)
        assert c.sum() == length and c.min() >= 1  # nothing is seen less often than once
        assert np.all((c == np.floor(scaled)) | (c == np.ceil(scaled)))
        seen += c
    # on average each image appears its scaled factor times (systematic sampling is unbiased)
    assert seen / 400 == pytest.approx(scaled, abs=0.05)
    # the extra of the round-up is spread in proportion to the factors: [1, 1, 1, 1, 4.5] sums to 8.5, the
    # epoch holds 9, so the last image's mean is 4.5 * 9 / 8.5 = 4.7647 (not 4.5 plus a share of the extra)
    r = np.array([1, 1, 1, 1, 4.5])
    mean = np.mean([repeat_counts(r, seed=1, epoch=e) for e in range(2000)], axis=0)
    assert mean == pytest.approx([9 / 8.5] * 4 + [4.5 * 9 / 8.5], abs=0.03)


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    r = repeat_factors(IMAGES, 3, 0.5)
    a = repeat_epoch_order(r, seed=1, epoch=3)
    assert len(a) == 10 and np.array_equal(a, repeat_epoch_order(r, seed=1, epoch=3))
    assert np.array_equal(np.bincount(a, minlength=8), repeat_counts(r, 1, 3))
    assert len({repeat_epoch_order(r, seed=1, epoch=e)[0] for e in range(10)}) > 1  # shuffled, not in index order
    others = [repeat_epoch_order(r, seed=1, epoch=e) for e in range(4, 8)] + [repeat_epoch_order(r, 2, 3)]
    assert any(not np.array_equal(a, b) for b in others)


def test_epoch_sampler_serves_the_repeat_order_and_resumes_mid_epoch() -> None:
    r = repeat_factors(IMAGES, 3, 0.5)
    data = list(range(8))
    sampler = EpochSampler(data, shuffle=True, seed=4, repeat_factors=r)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert len(sampler) == 10 and [k.index for k in keys] == repeat_epoch_order(r, 4, 1).tolist()
    sampler.set_epoch(1, skip=5)  # a run resumed after 5 images continues with exactly the same images
    assert len(sampler) == 5 and [k.index for k in sampler] == [k.index for k in keys[5:]]
    # two processes, one image each per step: step k trains whole[2k:2k+2], rank 0 the first, rank 1 the second
    ranks = [EpochSampler(data, True, 4, rank, 2, global_batch=2, repeat_factors=r) for rank in range(2)]
    for s in ranks:
        s.set_epoch(1)
    whole = repeat_epoch_order(r, 4, 1).tolist()
    assert [len(s) for s in ranks] == [5, 5]
    assert [k.index for k in ranks[0]] == whole[0::2] and [k.index for k in ranks[1]] == whole[1::2]


def test_class_weights_auto_is_inverse_frequency_with_mean_one() -> None:
    # boxes 10, 20, 0, 20: inverse 0.1, 0.05, 0.05 (class 2 has no box: weight 1), their mean 0.2 / 3
    w = class_weights("auto", [10, 20, 0, 20])
    assert w.tolist() == pytest.approx([1.5, 0.75, 1.0, 0.75])
    # 21 classes, one with 1 box, 20 with 10,000: unclipped ~21 and ~0.002, clipped to 10 and 0.1
    clipped = class_weights("auto", [1] + [10_000] * 20)
    assert clipped[0] == pytest.approx(CLS_WEIGHT_CLIP) and clipped[1:].tolist() == pytest.approx([0.1] * 20)
    assert class_weights(None, [1, 2]) is None and class_weights("off", [1, 2]) is None
    assert class_weights(False, [1, 2]) is None  # cls_weights=off arrives as false from YAML


def test_class_weights_list_must_name_every_class() -> None:
    assert class_weights([1, 2.5, 4], [5, 5, 5]).tolist() == [1.0, 2.5, 4.0]
    with pytest.raises(ConfigError, match="setting 'cls_weights' has 2 weights; the data has 3 classes"):
        class_weights([1, 2], [5, 5, 5])
