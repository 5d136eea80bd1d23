"""Training through the CLI on a dataset with broken files: skipped, counted, and training still runs."""

import cv2
import numpy as np
import pytest

from yolotrain.cli import main


def write_set(root, n=10):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 50, (64, 64, 3), dtype=np.uint8)
            x0, y0 = rng.integers(4, 30, 2)
            img[y0 : y0 + 24, x0 : x0 + 20] = 255
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            xc, yc = (x0 + 10) / 64, (y0 + 12) / 64
            (root / "labels" / split / f"{i}.txt").write_text(f"0 {xc} {yc} {20 / 64} {24 / 64}\n")
    t = root / "images" / "train"
    (t / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cv2.imwrite(str(t / "badlabel.png"), np.zeros((64, 64, 3), np.uint8))
    (root / "labels" / "train" / "badlabel.txt").write_text("0 0.5 0.5 abc 0.1\n")
    cv2.imwrite(str(t / "empty.png"), np.zeros((64, 64, 3), np.uint8))
    (root / "labels" / "train" / "empty.txt").write_text("")
    cv2.imwrite(str(t / "nolabel.png"), np.zeros((64, 64, 3), np.uint8))
    # a duplicate row (dropped, counted); an out-of-range class id is an error (test_data_class_ids_cli.py)
    (root / "labels" / "train" / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    y = root / "data.yaml"
    y.write_text("path: .\ntrain: images/train\nval: images/val\nnames: [box]\n")
    return y


@pytest.mark.slow
def test_broken_files_are_skipped_and_counted(tmp_path, capsys):
    data = write_set(tmp_path / "ds")
    code = main(
        ["train", f"data={data}", "epochs=1", "imgsz=64", "batch=4", "workers=0", f"project={tmp_path / 'runs'}"]
    )
    assert code == 0
    log = capsys.readouterr().err
    assert "corrupt.jpg" in log and "badlabel.txt" in log
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()
    summary = [ln for ln in log.splitlines() if ln.startswith("train:") and "usable" in ln]
    assert summary and "12/14" in summary[0], summary  # corrupt image and malformed label file skipped


def test_split_without_usable_images_stops(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "x.jpg").write_bytes(b"junk")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [a]\n")
    code = main(["train", f"data={root / 'data.yaml'}", "epochs=1", "workers=0", f"project={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error:") and "train" in err[-1]
