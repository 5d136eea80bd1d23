"""Hostile and broken COCO/VOC inputs: one-line DataErrors naming the file, or skip + count."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from format_helpers import CLASSES, by_stem, voc_xml, write_coco, write_voc

from yolotrain.data import load_data_yaml, scan_split
from yolotrain.data.formats.voc_xml import parse_voc_xml, safe_parse_xml
from yolotrain.errors import DataError


def _scan(yaml_file: Path, split: str = "train"):
    d = load_data_yaml(yaml_file)
    recs, rep = scan_split(d[split], d["nc"], split, use_cache=False)
    return by_stem(recs), rep


def _edit_coco(root: Path, edit, split: str = "train") -> Path:
    f = root / "annotations" / f"instances_{split}.json"
    j = json.loads(f.read_text())
    edit(j)
    f.write_text(json.dumps(j))
    return f


def _one_line_error_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# ------------------------------------------------------------------------------ COCO
def test_coco_bad_annotations_are_dropped_counted_and_named(tmp_path):
    y = write_coco(tmp_path, names=True)

    def edit(j):
        a = j["annotations"]
        a.append({"id": 7001, "image_id": 100, "category_id": 5, "bbox": [1, 1, 5, 5]})  # unknown category
        a.append({"id": 7002, "image_id": 555, "category_id": 3, "bbox": [1, 1, 5, 5]})  # unknown image
        a.append({"id": 7003, "image_id": 100, "category_id": 3, "bbox": [1, 1, 0, 5]})  # zero width
        a.append({"id": 7004, "image_id": 100, "category_id": 3, "bbox": [1, 1, "x", 5]})  # malformed
        a.append({"id": 7005, "image_id": 100, "category_id": 3, "bbox": [200, 1, 5, 5]})  # outside the image
        a.append({"id": 7006, "image_id": 100, "category_id": 3, "bbox": [50, 40, 20, 20]})  # overshoot, clipped
        a.append({"id": 7007, "image_id": 100, "category_id": 3, "bbox": [-0.3, 0, 10, 10]})  # tiny overshoot
        a.append(dict(a[0], id=7008))  # exact duplicate of annotation 1000

    f = _edit_coco(tmp_path, edit)
    recs, rep = _scan(y)
    assert rep.dropped_rows == {
        "unknown_category": 1, "unknown_image": 1, "zero_size": 2, "malformed_annotation": 1
    }  # fmt: skip
    assert rep.duplicate_rows == 1 and rep.out_of_range_rows == 1 and rep.clipped_rows == 1
    for aid in (7001, 7002, 7003, 7004, 7005, 7006, 7008):
        assert any(str(f) in m and f"id {aid}" in m for m in rep.messages), aid
    assert not any("7007" in m for m in rep.messages)  # rounding-size overshoot is not a problem
    im0 = recs["im0"]
    assert im0.num_instances == 3 + 2  # the originals + the two clipped boxes
    x1y1x2y2 = im0.boxes_xyxy()
    assert x1y1x2y2.min() >= 0 and x1y1x2y2[:, 2].max() <= 64 + 1e-4 and x1y1x2y2[:, 3].max() <= 48 + 1e-4


def test_coco_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    y = write_coco(tmp_path)
    os.remove(tmp_path / "images" / "train" / "im1.jpg")
    (tmp_path / "images" / "train" / "im3.jpg").write_bytes(b"not a jpeg")
    recs, rep = _scan(y)
    assert set(recs) == {"im0", "im2"}
    assert rep.missing_images == 1 and rep.corrupt_images == 1 and rep.images_found == 4 and rep.images_ok == 2
    assert any("im1.jpg" in m and "not found" in m for m in rep.messages)
    assert any("im3.jpg" in m and "corrupt" in m for m in rep.messages)
    assert "1 missing images skipped" in rep.summary()


def test_coco_duplicate_file_entries_and_size_mismatch(tmp_path):
    y = write_coco(tmp_path)

    def edit(j):
        j["images"].append({"id": 999, "file_name": "im0.jpg", "width": 64, "height": 48})
        j["images"][1]["width"], j["images"][1]["height"] = 80, 100  # im1 is 40x50 on disk

    _edit_coco(tmp_path, edit)
    recs, rep = _scan(y)
    assert rep.duplicate_images == 1 and rep.size_mismatches == 1 and len(recs) == 4
    # Boxes are normalized by the size the JSON states (the file is a resized copy).
    np.testing.assert_allclose(recs["im1"].bboxes[0], [22.5 / 80, 30.5 / 100, 25 / 80, 37 / 100], atol=1e-6)


def test_images_without_annotations_are_background(tmp_path):
    _, rep = _scan(write_coco(tmp_path))
    assert rep.empty_labels == 1 and "1 background images" in rep.summary()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "malformed COCO JSON"),
        ("[1, 2]", "must be an object"),
        ('{"images": [], "categories": []}', "'annotations' is missing"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' is not a list"),
        ('{"images": [], "annotations": [], "categories": []}', "'categories' is empty"),
        ('{"images": [], "annotations": [], "categories": [{"id": "a", "name": "x"}]}', "integer 'id'"),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}',
            "category id 1 appears twice",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": [], '
            '"categories": [{"id": 1, "name": "x"}]}',
            "image id 1 appears twice",
        ),
    ],
)
def test_coco_structural_errors_are_one_line_data_errors(tmp_path, content, fragment):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    good = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    y = tmp_path / "d.yaml"
    y.write_text("train: bad.json\nval: good.json\nnames: [x]\n")
    d = load_data_yaml(y)
    with pytest.raises(DataError) as e:
        scan_split(d["train"], 1, "train", use_cache=False)
    assert fragment in _one_line_error_naming(e, bad)


def test_coco_names_unreadable_json_is_named(tmp_path):
    (tmp_path / "t.json").write_text("{oops")
    (tmp_path / "v.json").write_text("{oops")
    y = tmp_path / "d.yaml"
    y.write_text("train: t.json\nval: v.json\n")  # no names: they must come from the JSON
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    assert "malformed COCO JSON" in _one_line_error_naming(e, tmp_path / "t.json")


def test_coco_hostile_values_do_not_crash(tmp_path):
    y = write_coco(tmp_path, names=True)

    def edit(j):
        j["annotations"] += [
            {"id": 8001, "image_id": 2**70, "category_id": 3, "bbox": [1, 1, 5, 5]},  # huge id
            {"id": 8002, "image_id": 100, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 7},
            {"id": 8003, "image_id": True, "category_id": 3, "bbox": [1, 1, 5, 5]},  # bool is not an id
            "not an annotation",
            {"id": 8004, "image_id": 100, "category_id": 3, "bbox": [1e308, 1, 1e308, 5]},  # inf width
        ]
        j["images"].append({"id": 5, "file_name": ""})

    _edit_coco(tmp_path, edit)
    recs, rep = _scan(y)
    assert rep.dropped_rows["malformed_annotation"] == 4 and rep.dropped_rows["malformed_image_entry"] == 1
    assert rep.dropped_rows["non_finite"] == 1
    assert len(recs) == 4


# ------------------------------------------------------------------------------ VOC
def test_voc_unknown_class_malformed_object_and_missing_files(tmp_path):
    y = write_voc(tmp_path)
    voc = tmp_path / "VOC2007"
    xml = voc / "Annotations" / "im1.xml"
    xml.write_text(
        voc_xml("im1", 40, 50, [(1, 10, 12, 35, 49, False)]).replace(
            "</annotation>",
            "<object><name>zebra</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
            "</object><object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object>"
            "<object><name>cat</name><bndbox><xmin>9</xmin><ymin>9</ymin><xmax>5</xmax><ymax>20</ymax></bndbox>"
            "</object></annotation>",
        )
    )
    os.remove(voc / "Annotations" / "im2.xml")  # kept as a background image
    os.remove(voc / "JPEGImages" / "im3.jpg")  # skipped
    (voc / "ImageSets" / "Main" / "train.txt").write_text("im0\nim1\nim2\nim3\nim0\n")  # im0 twice
    recs, rep = _scan(y)
    assert set(recs) == {"im0", "im1", "im2"}
    assert rep.dropped_rows == {"unknown_class": 1, "malformed_object": 1, "zero_size": 1}
    assert rep.missing_labels == 1 and rep.missing_images == 1 and rep.duplicate_images == 1
    assert recs["im1"].cls.tolist() == [1] and recs["im2"].num_instances == 0
    assert any(str(xml) in m and "zebra" in m for m in rep.messages)
    assert any(str(xml) in m and "object 3" in m for m in rep.messages)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("<annotation><object>", "malformed XML"),
        ("", "malformed XML"),
        ("<notvoc/>", "instead of <annotation>"),
        (
            '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            "<annotation><object><name>&lol2;</name></object></annotation>",
            "DOCTYPE/ENTITY",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            "<annotation><filename>&xxe;</filename></annotation>",
            "DOCTYPE/ENTITY",
        ),
    ],
)
def test_voc_malformed_or_hostile_xml_skips_the_image(tmp_path, content, fragment):
    y = write_voc(tmp_path)
    xml = tmp_path / "VOC2007" / "Annotations" / "im0.xml"
    xml.write_text(content)
    recs, rep = _scan(y)
    assert "im0" not in recs and len(recs) == 3 and rep.malformed_label_files == 1
    assert any(str(xml) in m and fragment in m and "\n" not in m for m in rep.messages)


def test_voc_utf16_doctype_is_refused_too():
    # Sniffing bytes for "<!DOCTYPE" would miss this; the expat handlers do not.
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><annotation/>'.encode("utf-16")
    with pytest.raises(ValueError, match="DOCTYPE/ENTITY"):
        safe_parse_xml(doc)
    plain = '<?xml version="1.0" encoding="UTF-16"?><annotation/>'.encode("utf-16")
    assert safe_parse_xml(plain).tag == "annotation"


def test_voc_oversized_xml_refused(tmp_path):
    big = tmp_path / "big.xml"
    big.write_bytes(b"<annotation>" + b" " * (5 * 1024 * 1024) + b"</annotation>")
    res = parse_voc_xml(str(big))
    assert isinstance(res, str) and "too large" in res and str(big) in res


def test_voc_parse_cache_sees_edits(tmp_path):
    f = tmp_path / "a.xml"
    f.write_text(voc_xml("a", 10, 10, [(0, 1, 1, 5, 5, False)]))
    assert parse_voc_xml(str(f)).names == ["cat"]
    f.write_text(voc_xml("a", 10, 10, [(1, 1, 1, 5, 5, False), (2, 1, 1, 6, 6, False)]))
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert parse_voc_xml(str(f)).names == ["dog", "bird"]


def test_voc_names_count_must_match(tmp_path):
    y = write_voc(tmp_path, names=False)
    d = load_data_yaml(y)
    with pytest.raises(DataError) as e:
        scan_split([str(d["train"][0])], nc=5, use_cache=False)
    assert "3 VOC class names but 5" in str(e.value)


def test_voc_missing_list_is_named(tmp_path):
    write_voc(tmp_path)
    y = tmp_path / "d.yaml"
    lists = "VOC2007/ImageSets/Main"
    y.write_text(f"train: {lists}/nope.txt\nval: {lists}/val.txt\nnames: {CLASSES}\n")
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    assert "nope.txt" in _one_line_error_naming(e, y)


def test_scan_is_fast_enough_for_thousands_of_annotations(tmp_path):
    # 2000 annotations on one image: validation is vectorized, so this is milliseconds, not seconds.
    y = write_coco(tmp_path, names=True)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (2000, 2))

    def edit(j):
        j["annotations"] += [{"id": 10_000 + i, "image_id": 100, "category_id": 3, "bbox": [x, y, 10.0, 5.0]}
                             for i, (x, y) in enumerate(xy.tolist())]  # fmt: skip

    _edit_coco(tmp_path, edit)
    t0 = time.perf_counter()
    recs, rep = _scan(y)
    assert time.perf_counter() - t0 < 2.0
    assert recs["im0"].num_instances == 3 + 2000 - rep.duplicate_rows
