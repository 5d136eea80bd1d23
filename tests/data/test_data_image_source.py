"""ImageSource on its own: the decoded images of a list of records, without a dataset around it."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_shapes_split

from yolotrain.data.image_source import ImageSource
from yolotrain.data.scan import scan_split


@pytest.fixture
def records(tmp_path):
    img_dir = make_shapes_split(tmp_path, n=6, size=64)
    recs, _ = scan_split([str(img_dir)], nc=3, use_cache=False)
    return recs


def test_images_are_resized_read_only_and_the_buffer_keeps_the_most_recent(records):
    source = ImageSource(records, 32, "area", cache=False, buffer=2)
    loaded = []
    real = source.load
    source.load = lambda i: loaded.append(i) or real(i)
    for i in (0, 1, 0, 2, 1):  # 0 is still buffered the second time; 1 was dropped for 2 by then
        img, (h0, w0) = source.image(i)
        assert max(img.shape[:2]) == 32 and (h0, w0) == (records[i].height, records[i].width)
        assert not img.flags.writeable
    assert loaded == [0, 1, 2, 1]
    copy, _ = source.load_image(2)
    assert copy.flags.writeable and np.array_equal(copy, source.image(2)[0])


def test_a_batch_memo_is_filled_and_read_first(records):
    source = ImageSource(records, 32, "train", cache=False, buffer=0)
    memo = {}
    first = source.image(3, memo)
    source.load = lambda i: pytest.fail("decoded again inside one batch")
    assert source.image(3, memo) is first and list(memo) == [3]
