"""`yolotrain data check` and `yolotrain data convert` through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from format_helpers import CLASSES, by_stem, write_coco, write_voc, write_yolo

from yolotrain.cli import main
from yolotrain.data import load_data_yaml, scan_split


def _records(yaml_file: Path, split: str = "train") -> dict:
    d = load_data_yaml(yaml_file)
    return by_stem(scan_split(d[split], d["nc"], split, use_cache=False)[0])


# ------------------------------------------------------------------------------ check
def test_check_prints_counts_histogram_sizes_and_problems(tmp_path, capsys):
    y = write_coco(tmp_path)
    f = tmp_path / "annotations" / "instances_train.json"
    j = json.loads(f.read_text())
    j["annotations"].append({"id": 4242, "image_id": 100, "category_id": 3, "bbox": [1, 1, 0, 5]})
    f.write_text(json.dumps(j))
    os.remove(tmp_path / "images" / "val" / "im5.jpg")
    assert main(["data", "check", f"data={y}", "json=true"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(out[:-1])
    assert "(coco, 3 classes)" in text and "result: OK" in text
    assert "train: 4/4 images usable, 6 boxes (1 crowd/difficult" in text
    assert "images 4 (1 background), instances 6 (1 crowd/difficult)" in text
    assert "annotation id 4242 (image 'im0.jpg'): bbox has zero width" in text
    assert "im5.jpg not found" in text
    # class rows: id, name, instances (non-crowd), crowd, images
    assert any(line.split() == ["1", "dog", "1", "1", "2"] for line in out)
    summary = json.loads(out[-1])
    tr = summary["splits"]["train"]
    assert summary["ok"] and summary["names"] == CLASSES
    assert tr["class_instances"] == [2, 1, 2] and tr["class_crowd"] == [0, 1, 0]
    # widths in px of the 6 boxes: 26, 20, 64, 25, 62, 8
    assert tr["box_width_px"]["min"] == 8 and tr["box_width_px"]["max"] == 64
    # areas: 884, 400, 3072, 925, 2852, 80 px² -> 4 below 32², 2 below 96², none above
    assert tr["area"] == {"small": 4, "medium": 2, "large": 0}
    assert summary["splits"]["val"]["report"]["missing_images"] == 1


def test_check_exit_1_when_a_split_is_unusable(tmp_path, capsys):
    y = write_voc(tmp_path)
    for f in (tmp_path / "VOC2007" / "JPEGImages").glob("im[45].jpg"):
        f.unlink()  # every val image gone
    assert main(["data", "check", f"data={y}"]) == 1
    out = capsys.readouterr().out
    assert "val: UNUSABLE: val: no usable images" in out and "result: FAILED (val unusable)" in out
    assert "train: 4/4 images usable" in out


def test_check_exit_1_for_train_without_boxes_and_for_broken_yaml(tmp_path, capsys):
    y = write_yolo(tmp_path)
    for lab in (tmp_path / "labels" / "train").glob("*.txt"):
        lab.write_text("")
    assert main(["data", "check", f"data={y}", "json=true"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["splits"]["train"]["usable"] is False
    assert any("no boxes to learn from" in line for line in out)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: nope/\nval: nope/\nnames: [a]\n")
    assert main(["data", "check", f"data={bad}"]) == 1
    assert "result: FAILED" in capsys.readouterr().out


def test_data_command_usage_errors_exit_2(tmp_path, capsys):
    assert main(["data", "check"]) == 2
    assert main(["data", "check", "data=x.yaml", "bogus=1"]) == 2
    assert main(["data", "frobnicate"]) == 2
    assert main(["data", "convert", "src=x.yaml", "to=voc", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "'data' is required" in err and "unknown setting 'bogus'" in err and "'to'='voc'" in err


# ------------------------------------------------------------------------------ convert
def test_yolo_to_coco_to_yolo_round_trip(tmp_path, capsys):
    src = write_yolo(tmp_path / "yolo")
    assert main(["data", "convert", f"src={src}", "to=coco", f"out={tmp_path / 'coco'}"]) == 0
    assert main(["data", "convert", f"src={tmp_path / 'coco' / 'data.yaml'}", "to=yolo",
                 f"out={tmp_path / 'back'}"]) == 0  # fmt: skip
    assert "converted dataset:" in capsys.readouterr().out
    coco_yaml = load_data_yaml(tmp_path / "coco" / "data.yaml")
    assert coco_yaml["format"] == "coco" and coco_yaml["names"] == CLASSES
    j = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in j["categories"]] == [1, 2, 3] and len(j["images"]) == 4
    assert not (tmp_path / "coco" / "images" / "train" / "im0.jpg").is_symlink()  # copied by default
    for split in ("train", "val"):
        a = _records(src, split)
        for out in ("coco", "back"):
            other = _records(tmp_path / out / "data.yaml", split)
            assert a.keys() == other.keys()
            for stem, r in a.items():
                assert (r.height, r.width) == (other[stem].height, other[stem].width)
                np.testing.assert_array_equal(r.cls, other[stem].cls)
                np.testing.assert_allclose(other[stem].bboxes, r.bboxes, rtol=1e-6, atol=1e-7)


def test_voc_to_yolo_drops_difficult_and_links(tmp_path):
    src = write_voc(tmp_path / "voc", names=False)
    assert main(["data", "convert", f"data={src}", "to=yolo", f"out={tmp_path / 'out'}", "link=true"]) == 0
    img = tmp_path / "out" / "images" / "train" / "im0.jpg"
    assert img.is_symlink()
    assert img.resolve() == (tmp_path / "voc" / "VOC2007" / "JPEGImages" / "im0.jpg").resolve()
    d = load_data_yaml(tmp_path / "out" / "data.yaml")
    assert d["names"] == ["bird", "cat", "dog"]
    voc, yolo = _records(src), _records(tmp_path / "out" / "data.yaml")
    for stem, r in voc.items():
        keep = ~r.crowd
        np.testing.assert_array_equal(yolo[stem].cls, r.cls[keep])
        np.testing.assert_allclose(yolo[stem].bboxes, r.bboxes[keep], atol=1e-7)


def test_coco_to_coco_keeps_crowd(tmp_path):
    src = write_coco(tmp_path / "a")
    assert main(["data", "convert", f"src={src}", "to=coco", f"out={tmp_path / 'b'}"]) == 0
    a, b = _records(src), _records(tmp_path / "b" / "data.yaml")
    for stem, r in a.items():
        np.testing.assert_array_equal(b[stem].crowd, r.crowd)
        np.testing.assert_allclose(b[stem].bboxes, r.bboxes, atol=1e-6)


def test_convert_refuses_non_empty_out(tmp_path, capsys):
    src = write_yolo(tmp_path / "yolo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["data", "convert", f"src={src}", "to=coco", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and str(out) in err and not (out / "data.yaml").exists()


def test_convert_multi_source_split_keeps_subfolders(tmp_path):
    # Two sources whose common folder is the dataset root, one with a nested "images" folder: the
    # relative names keep the sub-folders (no collisions) and labels land where YOLO looks for them.
    src = write_yolo(tmp_path / "yolo")
    from data_helpers import make_split

    make_split(tmp_path / "yolo" / "extra", "more", {"im0": "1 0.5 0.5 0.25 0.25\n"})
    src.write_text(f"train: [images/train, extra/images/more]\nval: images/val\nnames: {CLASSES}\n")
    assert main(["data", "convert", f"src={src}", "to=yolo", f"out={tmp_path / 'out'}"]) == 0
    d = load_data_yaml(tmp_path / "out" / "data.yaml")
    recs = scan_split(d["train"], d["nc"], "train", use_cache=False)[0]
    rels = sorted(Path(r.im_file).relative_to(tmp_path / "out" / "images" / "train").as_posix() for r in recs)
    assert rels == ["extra/images/more/im0.png", "images/train/im0.jpg", "images/train/im1.jpg",
                    "images/train/im2.jpg", "images/train/im3.jpg"]  # fmt: skip
    extra = next(r for r in recs if r.im_file.endswith("im0.png"))
    assert extra.cls.tolist() == [1]
    np.testing.assert_allclose(extra.bboxes, [[0.5, 0.5, 0.25, 0.25]])
