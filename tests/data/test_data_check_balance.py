"""`yolotrain data check`: the per-class image/box counts, the imbalance ratio and the long-tail advice."""

from __future__ import annotations

import json
from pathlib import Path

from data_helpers import make_split

from yolotrain.cli import main

BOX = "0.5 0.5 0.2 0.2"


def _dataset(root: Path, train: dict[str, str | None], val: dict[str, str | None]) -> Path:
    make_split(root, "train", train)
    make_split(root, "val", val)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    return root / "data.yaml"


def test_long_tailed_train_split_gets_the_ratio_and_the_settings(tmp_path, capsys):
    # train: cat in 11 images (one of them twice), dog in 1 -> imbalance 11 / 1; val: 2 and 2 -> 1
    train = {f"c{i}": f"0 {BOX}\n" for i in range(10)}
    train["c10"] = f"0 {BOX}\n0 0.2 0.2 0.1 0.1\n"
    train["d0"] = f"1 {BOX}\n"
    val = {"v0": f"0 {BOX}\n", "v1": f"0 {BOX}\n", "v2": f"1 {BOX}\n", "v3": f"1 {BOX}\n"}
    y = _dataset(tmp_path, train, val)
    assert main(["data", "check", f"data={y}", "json=true", "cache=false"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(out[:-1])
    assert any(line.split() == ["0", "cat", "12", "0", "11"] for line in out)  # id name boxes crowd images
    assert any(line.split() == ["1", "dog", "1", "0", "1"] for line in out)
    assert "imbalance ratio 11 (images of cat 11 / of dog 1)" in text
    assert "imbalance ratio 1 (images of cat 2 / of dog 2)" in text
    # suggested t: the median class's image share; shares 11/12 and 1/12 -> median 0.5
    advice = [line for line in out if "long-tailed" in line]
    assert len(advice) == 1 and "sampler=repeat_factor rfs_threshold=0.5" in advice[0]
    assert "cls_weights=auto" in advice[0]
    summary = json.loads(out[-1])
    assert summary["splits"]["train"]["imbalance_ratio"] == 11.0 and summary["splits"]["val"]["imbalance_ratio"] == 1.0


def test_balanced_train_split_gets_no_advice(tmp_path, capsys):
    # ratio 9 / 1: below the long-tail threshold of 10
    train = {f"c{i}": f"0 {BOX}\n" for i in range(9)} | {"d0": f"1 {BOX}\n"}
    y = _dataset(tmp_path, train, {"v0": f"0 {BOX}\n"})
    assert main(["data", "check", f"data={y}", "cache=false"]) == 0
    out = capsys.readouterr().out
    assert "imbalance ratio 9 (images of cat 9 / of dog 1)" in out and "long-tailed" not in out
    assert out.count("imbalance ratio") == 1  # val holds one class only: nothing to compare
