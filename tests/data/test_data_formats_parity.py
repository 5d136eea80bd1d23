"""YOLO, COCO and VOC versions of one dataset give the same records; crowd/difficult handling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_helpers import augment_settings
from format_helpers import (
    CLASSES,
    SPLITS,
    by_stem,
    coco_json,
    expected,
    write_coco,
    write_split_images,
    write_voc,
    write_yolo,
)

from yolotrain.data import DetectionDataset, load_data_yaml, scan_split
from yolotrain.data.formats import SplitSource, detect_format
from yolotrain.data.formats.coco import image_dir_candidates
from yolotrain.errors import DataError


def _records(yaml_file: Path, split: str = "train", use_cache: bool = False):
    d = load_data_yaml(yaml_file)
    recs, rep = scan_split(d[split], d["nc"], split, root=d["path"], use_cache=use_cache)
    return d, by_stem(recs), rep


def _assert_matches_expected(recs: dict, split: str, with_crowd: bool) -> None:
    exp = expected(split)
    assert recs.keys() == exp.keys()
    for stem, (h, w, rows) in exp.items():
        r = recs[stem]
        assert (r.height, r.width) == (h, w)
        rows = [row for row in rows if with_crowd or not row[5]]
        np.testing.assert_array_equal(r.cls, [row[0] for row in rows])
        np.testing.assert_allclose(r.bboxes, np.asarray([row[1:5] for row in rows]).reshape(-1, 4), atol=1e-6)
        if with_crowd:
            np.testing.assert_array_equal(r.crowd, [row[5] for row in rows])
        else:
            assert r.crowd is None


@pytest.mark.parametrize("split", ["train", "val"])
def test_three_formats_give_identical_records(tmp_path, split):
    dy, yolo, _ = _records(write_yolo(tmp_path / "yolo"), split)
    dc, coco, _ = _records(write_coco(tmp_path / "coco"), split)
    dv, voc, _ = _records(write_voc(tmp_path / "voc"), split)
    assert (dy["format"], dc["format"], dv["format"]) == ("yolo", "coco", "voc")
    assert dy["names"] == dc["names"] == dv["names"] == CLASSES
    _assert_matches_expected(yolo, split, with_crowd=False)
    _assert_matches_expected(coco, split, with_crowd=True)
    _assert_matches_expected(voc, split, with_crowd=True)
    # Non-crowd boxes agree across all three formats, and COCO and VOC agree on crowd.
    for stem in yolo:
        for other in (coco[stem], voc[stem]):
            keep = ~other.crowd
            np.testing.assert_array_equal(other.cls[keep], yolo[stem].cls)
            np.testing.assert_allclose(other.bboxes[keep], yolo[stem].bboxes, atol=1e-6)
        np.testing.assert_array_equal(coco[stem].crowd, voc[stem].crowd)
        np.testing.assert_allclose(coco[stem].bboxes, voc[stem].bboxes, atol=1e-6)


def test_coco_names_from_categories_in_id_order(tmp_path):
    # Categories are listed as (11 bird, 7 dog, 3 cat): ids in increasing order give cat, dog, bird.
    d, recs, _ = _records(write_coco(tmp_path))
    assert d["names"] == CLASSES and d["nc"] == 3
    assert recs["im0"].cls.tolist() == [0, 2, 1]


def test_coco_yaml_names_must_agree_in_count(tmp_path):
    y = write_coco(tmp_path)
    y.write_text(y.read_text() + "names: [a, b]\n")
    d = load_data_yaml(y)  # the count is checked when the JSON is read, at scan time
    with pytest.raises(DataError) as e:
        scan_split(d["train"], d["nc"], "train", use_cache=False)
    msg = str(e.value)
    assert "instances_train.json" in msg and "3 COCO categories" in msg and "2 classes" in msg and "\n" not in msg


def test_coco_yaml_names_override_category_names(tmp_path):
    y = write_coco(tmp_path)
    y.write_text(y.read_text() + "names: [kitty, doggo, birdie]\n")
    d, recs, _ = _records(y)
    assert d["names"] == ["kitty", "doggo", "birdie"]
    assert recs["im0"].cls.tolist() == [0, 2, 1]


def test_coco_files_disagreeing_on_categories(tmp_path):
    y = write_coco(tmp_path)
    val = tmp_path / "annotations" / "instances_val.json"
    j = json.loads(val.read_text())
    j["categories"].append({"id": 99, "name": "fish"})
    val.write_text(json.dumps(j))
    with pytest.raises(DataError, match="disagree on categories"):
        load_data_yaml(y)


@pytest.mark.parametrize("layout", ["beside_json", "split_folder_beside_annotations", "images_key", "images_map"])
def test_coco_image_folder_search(tmp_path, layout):
    root = tmp_path / "ds"
    (root / "annotations").mkdir(parents=True)
    for split in SPLITS:
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco_json(split)))
    extra = ""
    for split in SPLITS:
        if layout == "beside_json":
            folder = root / "annotations"
        elif layout == "split_folder_beside_annotations":
            folder = root / f"{split}2017"  # annotations/instances_val2017.json -> val2017/
        elif layout == "images_key":
            folder = root / "pics" / f"{split}2017"
            extra = "images: pics\n"  # one folder for every split; <tag> sub-folders are tried
        else:
            folder = root / "elsewhere" / split
            extra = "images: {train: elsewhere/train, val: elsewhere/val}\n"
        write_split_images(folder, split)
    y = root / "d.yaml"
    y.write_text("train: annotations/instances_train2017.json\nval: annotations/instances_val2017.json\n" + extra)
    for split in SPLITS:
        d, recs, rep = _records(y, split)
        assert recs.keys() == SPLITS[split].keys() and rep.missing_images == 0


def test_coco_image_folder_candidates_order(tmp_path):
    j = tmp_path / "annotations" / "instances_val2017.json"
    cands = [p.relative_to(tmp_path).as_posix() for p in image_dir_candidates(j, "val")]
    assert cands[:2] == ["annotations", "annotations/val2017"]
    assert cands.index("images/val2017") < cands.index("images") < cands.index("val2017")


def test_coco_no_image_folder_found_is_one_line_error(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(coco_json("train")))
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(coco_json("val")))
    y = tmp_path / "d.yaml"
    y.write_text("train: annotations/instances_train.json\nval: annotations/instances_val.json\n")
    d = load_data_yaml(y)
    with pytest.raises(DataError) as e:
        scan_split(d["train"], d["nc"], "train", use_cache=False)
    assert "instances_train.json" in str(e.value) and "images:" in str(e.value) and "\n" not in str(e.value)


def test_voc_names_from_all_splits_sorted(tmp_path):
    # Rename every 'bird' in train, so 'bird' only occurs in val: val's XML must be read too.
    y = write_voc(tmp_path, names=False)
    ann = tmp_path / "VOC2007" / "Annotations"
    for stem in SPLITS["train"]:
        text = (ann / f"{stem}.xml").read_text()
        (ann / f"{stem}.xml").write_text(text.replace("<name>bird</name>", "<name>cat</name>"))
    d = load_data_yaml(y)
    assert d["names"] == ["bird", "cat", "dog"]  # 'bird' only occurs in val
    recs = by_stem(scan_split(d["train"], d["nc"], "train", use_cache=False)[0])
    assert recs["im1"].cls.tolist() == [2]  # dog
    assert recs["im0"].cls.tolist() == [1, 1, 2]  # cat, cat (was bird), dog (crowd)


def test_voc_one_based_coordinates(tmp_path):
    # A box covering pixel columns 1..10 (1-based, inclusive) is [0, 10) in 0-based continuous terms.
    write_voc(tmp_path)
    (tmp_path / "VOC2007" / "Annotations" / "im2.xml").write_text(
        "<annotation><size><width>64</width><height>48</height></size><object><name>cat</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>48</ymax></bndbox></object></annotation>"
    )
    _, recs, rep = _records(tmp_path / "data.yaml")
    np.testing.assert_allclose(recs["im2"].boxes_xyxy(), [[0, 0, 10, 48]], atol=1e-4)
    assert rep.clipped_rows == 0 and rep.out_of_range_rows == 0


def test_crowd_kept_in_records_but_not_in_training_targets(tmp_path):
    d, recs, rep = _records(write_coco(tmp_path))
    assert rep.crowd_instances == 1 and rep.instances == 6
    rec = recs["im0"]
    assert rec.crowd.tolist() == [False, False, True]
    records = list(recs.values())
    i = records.index(rec)
    for augment in (False, True):
        augmentation = augment_settings(mosaic=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, fliplr=0.0,
                                        hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)  # fmt: skip
        ds = DetectionDataset(records, imgsz=64, augment=augment, augmentation=augmentation)
        item = ds[i]
        assert item["cls"].flatten().tolist() == [0.0, 2.0]  # the crowd 'dog' is not a target
    boxes, cls = ds.labels_for_eval(i)  # evaluation still sees all three
    assert cls.tolist() == [0, 2, 1] and boxes.shape == (3, 4)


def test_voc_difficult_is_crowd_and_scoring_ignores_it(tmp_path):
    from yolotrain.eval import DetectionEvaluator

    d, recs, _ = _records(write_voc(tmp_path), "val")
    rec = recs["im4"]
    assert rec.crowd.tolist() == [False, True]
    ev = DetectionEvaluator(d["names"])
    xyxy = rec.boxes_xyxy()
    # Perfect detection of the normal object plus one detection on the difficult object.
    pred = np.array([[*xyxy[0], 0.9, 0], [*xyxy[1], 0.8, 2]], dtype=np.float64)
    ev.add(0, rec.width, rec.height, xyxy, rec.cls, pred, gt_crowd=rec.crowd)
    res = ev.compute()
    assert res.map50 == pytest.approx(1.0)  # neither a miss nor a false positive


def test_mixed_formats_refused(tmp_path):
    write_yolo(tmp_path)
    write_coco(tmp_path / "c")
    y = tmp_path / "mixed.yaml"
    y.write_text(f"train: images/train\nval: c/annotations/instances_val.json\nnames: {CLASSES}\n")
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    assert "mix dataset formats" in str(e.value) and str(y) in str(e.value)


def test_split_source_is_a_path_and_pickles(tmp_path):
    d = load_data_yaml(write_voc(tmp_path))
    src = d["train"][0]
    assert isinstance(src, SplitSource) and src == str(tmp_path / "VOC2007/ImageSets/Main/train.txt")
    assert detect_format(str(src)) == "voc" and src.names == tuple(CLASSES)
    back = pickle.loads(pickle.dumps(src))
    assert back == src and back.format == "voc" and back.names == src.names
    assert detect_format("a/b.json") == "coco" and detect_format("lists/train.txt") == "yolo"


def test_bare_paths_work_without_load_data_yaml(tmp_path):
    write_voc(tmp_path)
    write_coco(tmp_path / "c")
    voc_list = str(tmp_path / "VOC2007/ImageSets/Main/train.txt")
    recs, _ = scan_split([voc_list], nc=3, use_cache=False)  # names: the sorted ones in its XML
    assert len(recs) == 4
    recs, _ = scan_split([str(tmp_path / "c/annotations/instances_train.json")], nc=3, use_cache=False)
    assert len(recs) == 4


@pytest.mark.parametrize("writer", [write_coco, write_voc])
def test_label_cache_keeps_crowd_flags(tmp_path, writer, monkeypatch):
    y = writer(tmp_path)
    _, first, rep1 = _records(y, use_cache=True)
    assert not rep1.from_cache
    import yolotrain.data.formats.coco as coco_mod
    import yolotrain.data.formats.voc as voc_mod

    def boom(*a, **k):
        raise AssertionError("re-scanned despite a valid cache")

    monkeypatch.setattr(coco_mod, "check_images", boom)
    monkeypatch.setattr(voc_mod, "check_images", boom)
    _, second, rep2 = _records(y, use_cache=True)
    assert rep2.from_cache and rep2.crowd_instances == rep1.crowd_instances == 1
    for stem, r in first.items():
        np.testing.assert_array_equal(second[stem].crowd, r.crowd)
        np.testing.assert_array_equal(second[stem].bboxes, r.bboxes)
