"""Data YAML resolution: relative paths, names formats, txt lists, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolotrain.data.data_yaml import load_data_yaml
from yolotrain.errors import DataError


def _layout(root: Path) -> None:
    for sub in ("images/train", "images/val", "images/test"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def test_relative_path_resolves_against_yaml_folder(tmp_path, monkeypatch):
    ds = tmp_path / "datasets" / "toy"
    _layout(ds)
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    y = cfg_dir / "toy.yaml"
    y.write_text("path: ../datasets/toy\ntrain: images/train\nval: [images/val]\nnames: [a, b]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    cfg = load_data_yaml(y)
    assert cfg["yaml_file"] == str(y.resolve())
    assert cfg["path"] == str(ds.resolve())
    assert cfg["train"] == [str(ds / "images/train")]
    assert cfg["val"] == [str(ds / "images/val")]
    assert cfg["test"] == []
    assert cfg["names"] == ["a", "b"] and cfg["nc"] == 2


def test_missing_path_means_yaml_folder_and_dict_names(tmp_path):
    _layout(tmp_path)
    y = tmp_path / "data.yaml"
    y.write_text("train: images/train\nval: images/val\ntest: images/test\nnames:\n  1: dog\n  0: cat\n")
    cfg = load_data_yaml(y)
    assert cfg["path"] == str(tmp_path.resolve())
    assert cfg["test"] == [str(tmp_path / "images/test")]
    assert cfg["names"] == ["cat", "dog"]  # ordered by id, not by YAML order


def test_string_keys_and_absolute_entries(tmp_path):
    _layout(tmp_path)
    y = tmp_path / "d.yaml"
    y.write_text(
        f"path: /nonexistent-root\ntrain: {tmp_path}/images/train\nval: {tmp_path}/images/val\n"
        "names: {'0': x, '1': y, '2': z}\n"
    )
    cfg = load_data_yaml(y)
    assert cfg["train"] == [str(tmp_path / "images/train")]
    assert cfg["names"] == ["x", "y", "z"] and cfg["nc"] == 3


def test_txt_list_entry_and_list_of_sources(tmp_path):
    _layout(tmp_path)
    (tmp_path / "train.txt").write_text("./images/train/a.jpg\n")
    y = tmp_path / "d.yaml"
    y.write_text("train: [train.txt, images/train]\nval: images/val\nnames: [a]\n")
    cfg = load_data_yaml(y)
    assert cfg["train"] == [str(tmp_path / "train.txt"), str(tmp_path / "images/train")]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("val: images/val\nnames: [a]\n", "'train'"),
        ("train: images/train\nnames: [a]\n", "'val'"),
        ("train: images/train\nval: images/val\n", "'names'"),
        ("train: images/train\nval: images/nope\nnames: [a]\n", "'val' entry 'images/nope' not found"),
        ("train: 3\nval: images/val\nnames: [a]\n", "'train'"),
        ("train: []\nval: images/val\nnames: [a]\n", "'train'"),
        ("train: images/train\nval: images/val\nnames: abc\n", "'names'"),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n", "class ids must be exactly 0..1"),
        ("train: images/train\nval: images/val\nnames: {a: x}\n", "non-integer class id"),
        ("train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", "'nc' is 3"),
        ("train: images/train\nval: images/val\nnames: []\n", "'names' is empty"),
        ("- just\n- a list\n", "mapping"),
        ("train: [unclosed\n", "cannot parse"),
        ("path: 5\ntrain: images/train\nval: images/val\nnames: [a]\n", "'path'"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, fragment):
    _layout(tmp_path)
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(y) in msg
    assert fragment in msg


def test_missing_yaml_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data_yaml(tmp_path / "nope.yaml")


def test_check_exists_false_allows_absent_folders(tmp_path):
    y = tmp_path / "d.yaml"
    y.write_text("train: images/train\nval: images/val\nnames: [a]\n")
    cfg = load_data_yaml(y, check_exists=False)
    assert cfg["val"] == [str(tmp_path / "images/val")]
