"""Bad data that used to pass silently, tried through the CLI as a new user would: a truncated JPEG, and COCO
annotations naming an image or a category that does not exist. Each is named with its file in the training
log and in ``yolotrain data check``, and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_image
from format_helpers import write_coco
from PIL import Image

from yolotrain.cli import main


def truncate_jpeg(path: Path) -> Path:
    """Rewrite ``path`` as a textured JPEG cut to 2/3 of its bytes (PIL and OpenCV still read its header)."""
    h, w = Image.open(path).size[::-1]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def bad_coco(root: Path) -> tuple[Path, Path, Path]:
    """The format helpers' COCO set, with annotation 9001 on image id 777 (no such image), annotation 9002 on
    category 99 (no such category), and train image im3.jpg truncated. Returns (data yaml, json, truncated)."""
    y = write_coco(root)
    jf = root / "annotations" / "instances_train.json"
    j = json.loads(jf.read_text())
    first = j["annotations"][0]
    j["annotations"] += [dict(first, id=9001, image_id=777), dict(first, id=9002, category_id=99)]
    jf.write_text(json.dumps(j))
    return y, jf, truncate_jpeg(root / "images" / "train" / "im3.jpg")


def test_data_check_names_and_counts_the_silent_cases(tmp_path, capsys):
    y, jf, cut = bad_coco(tmp_path)
    assert main(["data", "check", f"data={y}"]) == 0  # usable, with problems listed
    out = capsys.readouterr()
    text = out.out + out.err
    assert "train: 3/4 images usable" in text
    assert f"{cut}: truncated JPEG" in text
    assert f"{jf}: annotation id 9001: refers to an image id not in 'images', dropped" in text
    assert f"{jf}: annotation id 9002 (image 'im0.jpg'): category id not in 'categories', dropped" in text
    assert main(["data", "check", f"data={y}", "json=true"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["splits"]["train"]["report"]
    assert rep["corrupt_images"] == 1 and rep["images_ok"] == 3
    assert rep["dropped_rows"] == {"unknown_image": 1, "unknown_category": 1}


@pytest.mark.slow
def test_training_log_names_the_silent_cases(tmp_path, capsys):
    y, jf, cut = bad_coco(tmp_path)
    args = ["train", f"data={y}", "epochs=1", "imgsz=64", "batch=2", "workers=0", "val=false", "plots=false"]
    assert main([*args, f"project={tmp_path / 'runs'}"]) == 0
    err = capsys.readouterr().err
    assert f"{cut}: truncated JPEG" in err and "train: 3/4 images usable" in err
    assert "annotation id 9001" in err and "annotation id 9002" in err
    assert "unknown_category=1, unknown_image=1" in err


def test_whole_jpeg_with_trailing_bytes_is_kept(tmp_path):
    """Bytes after a complete JPEG (camera extras) do not make it truncated: only a decoder error does."""
    from yolotrain.data import check_image

    p = write_image(tmp_path / "a.jpg", h=40, w=50)
    p.write_bytes(p.read_bytes() + b"EXTRA-TRAILER" * 10)
    assert check_image(str(p)) == (40, 50)
    assert "truncated JPEG" in check_image(str(truncate_jpeg(write_image(tmp_path / "b.jpg"))))
