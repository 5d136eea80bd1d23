"""Label validation, split scanning, corrupt images and the label cache."""

from __future__ import annotations

import json
import logging
import os
from pathlib import PurePosixPath

import numpy as np
import pytest
from data_helpers import make_split, write_image
from PIL import Image

from yolotrain.data import label_cache
from yolotrain.data.label_parse import parse_label_file, validate_rows
from yolotrain.data.records import ImageRecord
from yolotrain.data.scan import scan_split
from yolotrain.data.yolo_paths import compact_cache_path_for, img_to_label_path
from yolotrain.errors import DataError


# ------------------------------------------------------------------------------ one label file
def test_valid_rows_and_polygon(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4\n")
    res = parse_label_file(str(f), nc=3)
    assert res.status == "ok" and not res.messages
    np.testing.assert_array_equal(res.cls, [0, 2])
    np.testing.assert_allclose(res.bboxes[0], [0.5, 0.5, 0.2, 0.4], atol=1e-6)
    # polygon (0.1,0.2) (0.3,0.2) (0.3,0.4) (0.1,0.4) -> its bounding box
    np.testing.assert_allclose(res.bboxes[1], [0.2, 0.3, 0.2, 0.2], atol=1e-6)
    assert res.bboxes.dtype == np.float32 and res.cls.dtype == np.int64


def test_each_row_problem_is_counted(tmp_path):
    f = tmp_path / "b.txt"
    f.write_text(
        "0 0.5 0.5 0.2 0.2\n"
        "0 0.5 0.5 0.2 0.2\n"  # duplicate
        "5 0.5 0.5 0.2 0.2\n"  # class out of range (nc=3)
        "-1 0.5 0.5 0.2 0.2\n"  # class out of range
        "1.5 0.5 0.5 0.2 0.2\n"  # class not an integer
        "1 nan 0.5 0.2 0.2\n"  # non-finite
        "1 0.5 0.5 0.0 0.2\n"  # zero width
        "1 1.2 0.5 0.1 0.1\n"  # entirely outside -> zero size after clipping
        "2 0.104 0.5 0.2 0.2\n"  # x1 = 0.004 -> fine
        "2 0.095 0.5 0.2 0.2\n"  # x1 = -0.005 -> small overshoot, silently clipped
        "1 0.9 0.5 0.4 0.2\n"  # x2 = 1.1 -> out of range, clipped and reported
    )
    res = parse_label_file(str(f), nc=3)
    assert res.status == "ok"
    assert res.duplicates == 1
    assert res.dropped == {"class_out_of_range": 2, "class_not_integer": 1, "non_finite": 1, "zero_size": 2}
    assert res.clipped == 1 and res.out_of_range == 1
    np.testing.assert_array_equal(res.cls, [0, 2, 2, 1])
    # clipped boxes stay inside [0, 1]
    x1 = res.bboxes[:, 0] - res.bboxes[:, 2] / 2
    x2 = res.bboxes[:, 0] + res.bboxes[:, 2] / 2
    assert x1.min() >= 0 and x2.max() <= 1 + 1e-6
    np.testing.assert_allclose(res.bboxes[3], [0.85, 0.5, 0.3, 0.2], atol=1e-6)
    assert all(str(f) in m for m in res.messages)
    assert any("outside the image" in m for m in res.messages)


@pytest.mark.parametrize("text", ["0 0.5 0.5 0.2 abc\n", "0 0.5 0.5 0.2\n", "0 1 2 3 4 5\n"])
def test_malformed_files(tmp_path, text):
    f = tmp_path / "c.txt"
    f.write_text("1 0.5 0.5 0.1 0.1\n" + text)
    res = parse_label_file(str(f), nc=3)
    assert res.status == "malformed"
    assert len(res.messages) == 1 and str(f) in res.messages[0] and "line 2" in res.messages[0]


def test_missing_and_empty(tmp_path):
    assert parse_label_file(str(tmp_path / "none.txt"), 3).status == "missing"
    (tmp_path / "e.txt").write_text("  \n\n")
    res = parse_label_file(str(tmp_path / "e.txt"), 3)
    assert res.status == "empty" and len(res.cls) == 0 and res.bboxes.shape == (0, 4)


def test_validate_rows_keeps_first_duplicate_order():
    arr = np.array([[1, 0.3, 0.3, 0.1, 0.1], [0, 0.5, 0.5, 0.1, 0.1], [1, 0.3, 0.3, 0.1, 0.1]])
    res = validate_rows(arr, nc=2)
    np.testing.assert_array_equal(res.cls, [1, 0])
    assert res.duplicates == 1


def test_label_path_mapping():
    assert img_to_label_path("/d/images/train/a.jpg") == "/d/labels/train/a.txt"
    # only the last "images" folder is swapped
    assert img_to_label_path("/images/x/images/train/a.b.PNG") == "/images/x/labels/train/a.b.txt"
    assert img_to_label_path("/d/pics/a.jpg") == "/d/pics/a.txt"
    assert img_to_label_path("/d/images.jpg") == "/d/images.txt"


# ------------------------------------------------------------------------------ a whole split
def test_scan_counts_every_problem(tmp_path, caplog):
    img_dir = make_split(
        tmp_path,
        "train",
        {
            "a_ok": "0 0.5 0.5 0.5 0.5\n1 0.2 0.2 0.1 0.1\n",
            "b_missing": None,
            "c_empty": "",
            "d_malformed": "0 0.5 x 0.1 0.1\n",
            "e_badrows": "0 0.5 0.5 0 0.1\n0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n",
        },
    )
    (img_dir / "f_corrupt.jpg").write_bytes(b"this is not a jpeg")
    (img_dir / "notes.md").write_text("ignored: not an image")
    sub = img_dir / "nested"
    write_image(sub / "g_nested.PNG")  # recursive + case-insensitive extension
    (tmp_path / "labels/train/nested").mkdir(parents=True)
    (tmp_path / "labels/train/nested/g_nested.txt").write_text("2 0.5 0.5 0.3 0.3\n")

    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        records, rep = scan_split([str(img_dir)], nc=3, split="train", use_cache=False)
    assert rep.images_found == 7
    assert rep.corrupt_images == 1
    assert rep.malformed_label_files == 1
    assert rep.images_ok == 5  # a, b, c, e, g
    assert rep.missing_labels == 1 and rep.empty_labels == 1
    assert rep.dropped_rows == {"zero_size": 1}
    assert rep.duplicate_rows == 1
    assert rep.instances == 2 + 1 + 1
    assert [os.path.basename(r.im_file) for r in records] == [
        "a_ok.png", "b_missing.png", "c_empty.png", "e_badrows.png", "g_nested.PNG",
    ]  # fmt: skip
    assert records[0].height == 48 and records[0].width == 64
    text = caplog.text
    for name in ("f_corrupt.jpg", "d_malformed.txt", "b_missing.txt", "e_badrows.txt"):
        assert name in text
    summary = rep.summary()
    assert "5/7 images usable" in summary and "1 corrupt" in summary and "\n" not in summary


def test_warnings_are_capped_but_counts_exact(tmp_path, caplog):
    img_dir = make_split(tmp_path, "train", {f"m{i:02d}": None for i in range(25)})
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        _, rep = scan_split([str(img_dir)], nc=1, use_cache=False)
    assert rep.missing_labels == 25 and len(rep.messages) == 25
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 21
    assert "and 5 more" in warnings[-1].getMessage()


def test_split_without_usable_image_raises(tmp_path):
    img_dir = tmp_path / "images" / "val"
    img_dir.mkdir(parents=True)
    (img_dir / "x.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError) as e:
        scan_split([str(img_dir)], nc=1, split="val", use_cache=False)
    assert "val" in str(e.value) and str(img_dir) in str(e.value) and "\n" not in str(e.value)
    empty = tmp_path / "images" / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        scan_split([str(empty)], nc=1, split="val")


def test_missing_source_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_split([str(tmp_path / "nope")], nc=1)


def test_exif_rotation_swaps_recorded_size(tmp_path):
    img_dir = tmp_path / "images" / "train"
    img_dir.mkdir(parents=True)
    im = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(img_dir / "r.jpg", exif=exif)
    Image.new("RGB", (60, 20)).save(img_dir / "plain.jpg")
    records, _ = scan_split([str(img_dir)], nc=1, use_cache=False)
    sizes = {os.path.basename(r.im_file): (r.height, r.width) for r in records}
    assert sizes == {"r.jpg": (60, 20), "plain.jpg": (20, 60)}


def test_txt_list_source(tmp_path):
    make_split(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    lists = tmp_path / "lists"
    lists.mkdir()
    # "./" prefix relative to the txt folder, and a line only valid against the dataset root.
    write_image(lists / "images" / "c.png")
    (lists / "labels").mkdir()
    (lists / "labels" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    txt = lists / "train.txt"
    txt.write_text(f"./images/c.png\nimages/train/a.png\n{tmp_path}/images/train/b.png\nmissing.png\n")
    records, rep = scan_split([str(txt)], nc=1, root=str(tmp_path))
    assert sorted(os.path.basename(r.im_file) for r in records) == ["a.png", "b.png", "c.png"]
    assert rep.corrupt_images == 1  # the listed file that does not exist is counted, not ignored
    assert (lists / "train.cache.npz").is_file()


# ------------------------------------------------------------------------------ cache
def _npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickle
        return {k: z[k] for k in z.files}


def _touch_folder(folder) -> None:
    st = os.stat(folder)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_cache_created_reused_and_invalidated(tmp_path, monkeypatch):
    img_dir = make_split(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.3 0.3 0.2 0.2\n"})
    cache = compact_cache_path_for(img_dir)
    assert cache == tmp_path / "labels" / "train.cache.npz"

    rec1, rep1 = scan_split([str(img_dir)], nc=2)
    assert not rep1.from_cache and cache.is_file()
    assert int(_npz(cache)["version"]) == label_cache.CACHE_VERSION

    # Second scan must not look at any image: make image checks explode to prove it.
    import yolotrain.data.labels as labels_mod

    def boom(*a, **k):
        raise AssertionError("image re-checked despite a valid cache")

    monkeypatch.setattr(labels_mod, "check_image", boom)
    rec2, rep2 = scan_split([str(img_dir)], nc=2)
    assert rep2.from_cache and rep2.instances == rep1.instances == 2
    assert [r.im_file for r in rec2] == [r.im_file for r in rec1]
    for a, b in zip(rec1, rec2):
        np.testing.assert_array_equal(a.bboxes, b.bboxes)
        np.testing.assert_array_equal(a.cls, b.cls)
        assert (a.height, a.width) == (b.height, b.width)
    monkeypatch.undo()

    # The key looks at folders, not files (README "Label scanning"): a label file rewritten in place,
    # its folder untouched, is NOT seen (the documented blind spot) ...
    lab = tmp_path / "labels" / "train" / "b.txt"
    lab.write_text("1 0.3 0.3 0.2 0.2\n0 0.7 0.7 0.1 0.1\n")
    st = os.stat(lab)
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, rep3 = scan_split([str(img_dir)], nc=2)
    assert rep3.from_cache and rep3.instances == 2
    # ... until the labels folder changes (a file added, removed or renamed, an editor's save by rename, a touch)
    _touch_folder(tmp_path / "labels" / "train")
    _, rep3 = scan_split([str(img_dir)], nc=2)
    assert not rep3.from_cache and rep3.instances == 3
    # A label file replaced through a rename (what most editors and tools do) is seen without help.
    tmp = tmp_path / "labels" / "train" / "b.txt.new"
    tmp.write_text("1 0.3 0.3 0.2 0.2\n")
    os.replace(tmp, lab)
    _, rep4 = scan_split([str(img_dir)], nc=2)
    assert not rep4.from_cache and rep4.instances == 2
    # So is a new image.
    make_split(tmp_path, "train", {"c": "0 0.5 0.5 0.2 0.2\n"})
    recs5, rep5 = scan_split([str(img_dir)], nc=2)
    assert not rep5.from_cache and len(recs5) == 3
    # So does a different class count; b.txt's class 1 is then out of range: an error naming the row.
    with pytest.raises(DataError, match=r"b\.txt: row 1: class id 1 is outside \[0, 1\)"):
        scan_split([str(img_dir)], nc=1)


def test_out_of_range_class_is_an_error_naming_file_and_row(tmp_path):
    img_dir = make_split(
        tmp_path,
        "train",
        {
            "a": "0 0.5 0.5 0.2 0.2\n",
            "b": "1 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n-1 0.2 0.2 0.1 0.1\n",
            "c": "5 0.5 0.5 0.1 0.1\n",
        },
    )
    with pytest.raises(DataError) as e:
        scan_split([str(img_dir)], nc=2, use_cache=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(tmp_path / "labels" / "train" / "b.txt") + ": row 2: class id 2 is outside [0, 2)")
    assert "(1 more rows like it)" in msg and "(and 1 more label files)" in msg


def test_cache_rows_revalidated_against_classes(tmp_path, caplog):
    img_dir = make_split(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.3 0.3 0.2 0.2\n0 0.6 0.6 0.1 0.1\n"})
    cache = compact_cache_path_for(img_dir)
    scan_split([str(img_dir)], nc=2)
    good = _npz(cache)
    key = good["key"].tobytes().decode()
    # An edited cache: the right key, a class id the model does not have (row 2 of b's rows).
    np.savez(cache, **dict(good, cls=np.array([0, 1, 7])))
    assert label_cache.load_cache(cache, key, nc=2) is None  # the cache layer refuses it
    assert label_cache.load_cache(cache, key) is not None  # (only boxes are checked without nc)
    with caplog.at_level(logging.WARNING, logger="yolotrain"):
        recs, rep = scan_split([str(img_dir)], nc=2)
    assert not rep.from_cache  # not trusted: rebuilt from the label files
    assert sorted(int(c) for r in recs for c in r.cls) == [0, 0, 1]
    assert "b.png: label row 2: class id 7 is outside [0, 2)" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(_npz(cache)["cls"], good["cls"])  # and rewritten
    # A damaged box is caught the same way.
    boxes = np.float32([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, -0.2, 0.2], [0.6, 0.6, 0.1, 0.1]])
    np.savez(cache, **dict(good, bboxes=boxes))
    recs, rep = scan_split([str(img_dir)], nc=2)
    assert not rep.from_cache and recs[1].bboxes[0, 2] == pytest.approx(0.2)


def test_first_invalid_row_hand_checked():
    recs = [
        ImageRecord("a.jpg", 10, 10, [0, 1], [[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]]),
        ImageRecord("b.jpg", 10, 10, [], np.zeros((0, 4))),
        ImageRecord("c.jpg", 10, 10, [2, 3, 1], [[0.5, 0.5, 0.2, 0.2]] * 3),
    ]
    assert label_cache.first_invalid_row(recs, 4) is None
    assert label_cache.first_invalid_row(recs, 3) == "c.jpg: label row 2: class id 3 is outside [0, 3)"
    assert (
        label_cache.first_invalid_row(recs, 2)
        == "c.jpg: label row 1: class id 2 is outside [0, 2) (1 more invalid rows)"
    )
    recs[0].bboxes[1] = [0.9, 0.5, 0.4, 0.2]  # reaches x = 1.1
    assert label_cache.first_invalid_row(recs, None).startswith("a.jpg: label row 2: box [0.9, 0.5, 0.4, 0.2]")


def test_corrupt_cache_is_rebuilt(tmp_path):
    img_dir = make_split(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2\n"})
    cache = compact_cache_path_for(img_dir)
    scan_split([str(img_dir)], nc=1)
    good = _npz(cache)
    for garbage in ('{"version": 1, "key"', json.dumps({"version": 1, "key": "x"}), "[1, 2]"):
        cache.write_text(garbage)
        recs, rep = scan_split([str(img_dir)], nc=1)
        assert not rep.from_cache and len(recs) == 1
    np.savez(cache, **{k: v for k, v in good.items() if k != "shapes"})  # an array missing
    recs, rep = scan_split([str(img_dir)], nc=1)
    assert not rep.from_cache and len(recs) == 1
    np.savez(cache, **dict(good, names=np.array(["x"], dtype=object)))  # an object array (pickle): refused
    recs, rep = scan_split([str(img_dir)], nc=1)
    assert not rep.from_cache and len(recs) == 1
    # Right key but damaged body -> rebuilt, not trusted.
    np.savez(cache, **dict(good, counts=np.array([5])))
    recs, rep = scan_split([str(img_dir)], nc=1)
    assert not rep.from_cache and rep.instances == 1


def test_unwritable_cache_folder_is_skipped(tmp_path, monkeypatch, caplog):
    img_dir = make_split(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2\n"})

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(label_cache.tempfile, "mkstemp", deny)
    with caplog.at_level(logging.DEBUG, logger="yolotrain"):
        recs, _ = scan_split([str(img_dir)], nc=1)
    assert len(recs) == 1
    assert not compact_cache_path_for(img_dir).exists()
    assert "label cache not written" in caplog.text
    assert not list((tmp_path / "labels").glob("*.tmp"))


def _label_path_reference(im_file: str) -> str:
    """img_to_label_path written with pathlib alone (the rule: swap the last 'images' folder, .txt)."""
    p = PurePosixPath(im_file)
    parts = list(p.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return str(PurePosixPath(*parts).with_suffix(".txt"))


@pytest.mark.parametrize(
    "path",
    ["/d/images/train/a.jpg", "/images/x/images/train/a.b.PNG", "/d/pics/a.jpg", "/d/images.jpg", "/images/a.jpg",
     "/d/images/x/noext", "/d/images/train/images.jpg", "/a/imagesX/images2/b.png", "/d/images/x/.hidden.jpg"],
)  # fmt: skip
def test_img_to_label_path_fast_route_matches_pathlib(path):
    assert img_to_label_path(path) == _label_path_reference(path)


@pytest.mark.slow
def test_process_scan_equals_thread_scan(tmp_path, monkeypatch):
    import yolotrain.data.labels as labels_mod

    items = {f"i{k:02d}": f"{k % 3} 0.5 0.5 0.{k % 8 + 1} 0.2\n" for k in range(24)}
    items["m"] = None
    img_dir = make_split(tmp_path, "train", items)
    (img_dir / "bad.jpg").write_bytes(b"not a jpeg")
    ref, ref_rep = scan_split([str(img_dir)], nc=3, use_cache=False, log_problems=False)
    monkeypatch.setattr(labels_mod, "PROCESS_SCAN_MIN", 1)  # force the process pool
    monkeypatch.setattr(labels_mod, "SCAN_CHUNK", 4)  # and several chunks
    calls = []
    real = labels_mod.ProcessPoolExecutor
    monkeypatch.setattr(labels_mod, "ProcessPoolExecutor", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, rep = scan_split([str(img_dir)], nc=3, use_cache=False, log_problems=False)
    assert calls  # the process route ran
    assert [r.im_file for r in got] == [r.im_file for r in ref] and len(got) == 25
    for a, b in zip(got, ref):
        assert (a.height, a.width) == (b.height, b.width)
        np.testing.assert_array_equal(a.cls, b.cls)
        np.testing.assert_array_equal(a.bboxes, b.bboxes)
    assert rep.to_json() == ref_rep.to_json() and rep.corrupt_images == 1 and rep.missing_labels == 1
