"""Data selection on records: fraction (seeded subset of train), classes (labels of other classes dropped and
counted, ids kept), single_cls (every class 0, one name)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from yolotrain.config import resolve
from yolotrain.data.records import ImageRecord
from yolotrain.data.select import keep_classes, select_records, single_class_names, take_fraction, to_single_class
from yolotrain.errors import ConfigError


def _rec(name: str, cls: list[int], crowd: list[bool] | None = None) -> ImageRecord:
    n = len(cls)
    boxes = np.array([[0.1 * (k + 1), 0.5, 0.1, 0.2] for k in range(n)], np.float32).reshape(-1, 4)
    return ImageRecord(f"/d/{name}.jpg", 100, 200, np.array(cls, np.int64), boxes, None if crowd is None else crowd)


def test_fraction_is_a_seeded_subset_in_order(caplog):
    recs = [_rec(f"{k:02d}", [k % 3]) for k in range(20)]
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        a = take_fraction(recs, 0.25, seed=7)
    assert "fraction=0.25: training on 5 of 20 images (a subset drawn with seed 7)" in caplog.text
    assert len(a) == 5  # round(0.25 * 20)
    names = [r.im_file for r in a]
    assert names == sorted(names)  # the split's own order
    assert names == [r.im_file for r in take_fraction(recs, 0.25, seed=7)]  # same seed, same subset
    others = {tuple(r.im_file for r in take_fraction(recs, 0.25, seed=s)) for s in range(8)}
    assert len(others) >= 6  # other seeds, other subsets (not the first 5 images every time)
    assert take_fraction(recs, 1.0, seed=7) == recs
    assert len(take_fraction(recs, 0.01, seed=0)) == 1  # never empty


def test_fraction_leaves_val_untouched():
    recs = [_rec(f"{k:02d}", [0]) for k in range(20)]
    assert select_records(recs, 3, "val", fraction=0.25) == recs
    assert len(select_records(recs, 3, "train", fraction=0.25)) == 5


def test_classes_drop_other_labels_and_count_them(caplog):
    a = _rec("a", [0, 1, 2, 1], crowd=[False, True, True, False])
    b, c, d = _rec("b", [1]), _rec("c", [0]), _rec("d", [])
    with caplog.at_level(logging.INFO, logger="yolotrain"):
        out = keep_classes([a, b, c, d], [2, 0], nc=3, split="train")
    # 3 labels of class 1 dropped, in images a and b; every image stays (b as a background image)
    assert "train: classes=[0, 2]: dropped 3 labels of other classes in 2 images" in caplog.text
    assert [r.im_file for r in out] == ["/d/a.jpg", "/d/b.jpg", "/d/c.jpg", "/d/d.jpg"]
    assert out[0].cls.tolist() == [0, 2]  # ids as they were: no remapping
    np.testing.assert_array_equal(out[0].bboxes, a.bboxes[[0, 2]])  # the boxes of the kept labels
    assert out[0].crowd.tolist() == [False, True]
    assert out[1].cls.tolist() == [] and out[1].bboxes.shape == (0, 4)
    assert out[2] is c and out[3] is d
    assert a.cls.tolist() == [0, 1, 2, 1]  # the scanned records are not modified


def test_classes_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"setting 'classes'=\[0, 3\]: class 3 is not one of the data's 3 classes"):
        keep_classes([_rec("a", [0])], [0, 3], nc=3)


def test_single_cls_sets_every_class_to_zero():
    a, b = _rec("a", [2, 1]), _rec("b", [])
    out = to_single_class([a, b])
    assert out[0].cls.tolist() == [0, 0] and out[1].cls.tolist() == []
    np.testing.assert_array_equal(out[0].bboxes, a.bboxes)
    assert a.cls.tolist() == [2, 1]
    assert single_class_names(["cat", "dog"]) == ["object"]
    assert single_class_names(["cat"]) == ["cat"]
    # classes first, then one class: [0, 2] of a's [0, 1, 2, 1] become [0, 0]
    assert select_records([_rec("a", [0, 1, 2, 1])], 3, "val", single_cls=True, classes=[0, 2])[0].cls.tolist() == [
        0,
        0,
    ]


@pytest.mark.parametrize(
    "key,value",
    [
        ("mixup", "1.5"), ("cutmix", "-0.1"), ("perspective", "0.01"), ("flipud", "2"), ("fraction", "0"),
        ("fraction", "1.5"), ("classes", "[-1]"), ("classes", "a"), ("single_cls", "maybe"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^setting '{key}'=") as err:
        resolve({key: value})
    assert "\n" not in str(err.value)
