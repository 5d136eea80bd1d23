"""Property tests (Hypothesis) of the label and annotation parsers: any text a YOLO label file, a COCO JSON or
a VOC XML may hold either parses into valid boxes or fails with one line naming the file; never another
exception, a crash or a traceback. Example counts are small so the suite stays fast."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yolotrain.data.formats.coco_index import load_coco_index
from yolotrain.data.formats.voc_xml import VocAnnotation, parse_voc_xml
from yolotrain.data.label_parse import STATUS_EMPTY, STATUS_MALFORMED, STATUS_OK, parse_label_file
from yolotrain.errors import DataError

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
FOLDER = Path(tempfile.mkdtemp(prefix="parsers-"))
_COUNT = itertools.count()


def _file(suffix: str, data: bytes) -> Path:
    path = FOLDER / f"f{next(_COUNT)}{suffix}"  # a new name each time: the parsers memoize by file
    path.write_bytes(data)
    return path


numbers = st.one_of(
    st.integers(-3, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0.5", "1e400", "-0", "nan", "inf", "0x10", "1_0", "", "five", "٣"]),
)
label_rows = st.lists(st.lists(numbers, min_size=0, max_size=7).map(" ".join), max_size=12).map("\n".join)


@pytest.mark.slow
@SETTINGS
@given(text=st.one_of(label_rows, st.text(max_size=200)), raw=st.binary(max_size=40))
def test_label_file_parses_or_is_malformed_in_one_line(text, raw):
    for data in (text.encode("utf-8", "surrogatepass"), raw):
        path = _file(".txt", data)
        r = parse_label_file(str(path), nc=3)
        assert r.status in (STATUS_OK, STATUS_EMPTY, STATUS_MALFORMED)
        assert all("\n" not in m and str(path) in m for m in r.messages)
        if r.status == STATUS_MALFORMED:
            assert r.messages
        assert r.bboxes.shape == (len(r.cls), 4) and np.isfinite(r.bboxes).all()
        assert ((r.bboxes >= 0) & (r.bboxes <= 1)).all() and ((r.cls >= 0) & (r.cls < 3)).all()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
coco_keys = st.sampled_from(["id", "image_id", "category_id", "bbox", "iscrowd", "file_name", "width", "height",
                             "name", "area"])  # fmt: skip
coco_like = st.fixed_dictionaries(
    {},
    optional={
        k: st.lists(st.dictionaries(coco_keys, json_values, max_size=6), max_size=4)
        for k in ("images", "annotations", "categories")
    },
)


@SETTINGS
@given(doc=st.one_of(coco_like, json_values), raw=st.binary(max_size=30))
def test_coco_json_loads_or_fails_in_one_line(doc, raw):
    for data in (json.dumps(doc).encode(), raw):
        path = _file(".json", data)
        try:
            index = load_coco_index(path)
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)
            continue
        boxes = np.asarray(index.ann_bboxes, dtype=np.float64)
        assert len(index.ann_ids) == len(boxes) and all(math.isfinite(v) for v in boxes.ravel())


xml_text = st.builds(
    lambda w, h, objs: (
        f"<annotation><size><width>{w}</width><height>{h}</height></size>"
        + "".join(
            f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
            "</bndbox></object>"
            for n, a, b, c, d in objs
        )
        + "</annotation>"
    ),
    numbers,
    numbers,
    st.lists(st.tuples(st.text(max_size=5), numbers, numbers, numbers, numbers), max_size=3),
)


@SETTINGS
@given(text=st.one_of(xml_text, st.text(max_size=120)), raw=st.binary(max_size=40))
def test_voc_xml_parses_or_fails_in_one_line(text, raw):
    for data in (text.encode("utf-8", "surrogatepass"), raw):
        path = _file(".xml", data)
        got = parse_voc_xml(str(path))
        if isinstance(got, str):
            assert "\n" not in got and str(path) in got, got
        else:
            assert isinstance(got, VocAnnotation)
