"""The built-in demo dataset: deterministic, >= 4 classes, tight boxes, atomic and reusable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from yolotrain.data.data_yaml import load_data_yaml
from yolotrain.data.demo import CLASS_NAMES, ensure_demo_dataset, make_demo_image
from yolotrain.data.scan import scan_split
from yolotrain.errors import DataError


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_scannable(tmp_path):
    y1 = ensure_demo_dataset(tmp_path / "a", n_train=10, n_val=3, size=96)
    y2 = ensure_demo_dataset(tmp_path / "b", n_train=10, n_val=3, size=96)
    f1, f2 = _files(y1.parent), _files(y2.parent)
    assert len([k for k in f1 if k.suffix == ".jpg"]) == 13
    assert f1 == f2
    cfg = load_data_yaml(y1)
    assert cfg["nc"] == len(CLASS_NAMES) >= 4
    recs, rep = scan_split(cfg["train"], cfg["nc"], "train")
    assert rep.images_ok == 10 and rep.corrupt_images == 0 and not rep.dropped_rows
    assert rep.out_of_range_rows == 0 and rep.clipped_rows == 0
    assert all(1 <= len(r.cls) <= 6 for r in recs)
    assert len({c for r in recs for c in r.cls.tolist()}) >= 4  # every class shows up


def test_reused_when_complete_and_rebuilt_when_params_change(tmp_path):
    root = tmp_path / "demo"
    y = ensure_demo_dataset(root, n_train=3, n_val=1, size=64)
    first = root / "images" / "train" / "000000.jpg"
    stamp = first.stat().st_mtime_ns
    assert ensure_demo_dataset(root, n_train=3, n_val=1, size=64) == y
    assert first.stat().st_mtime_ns == stamp  # not regenerated
    ensure_demo_dataset(root, n_train=4, n_val=1, size=64)
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 4
    assert json.loads((root / ".yolotrain-demo.json").read_text())["n_train"] == 4
    # no temporary or old folders are left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_refuses_foreign_folder_and_uses_env_cache(tmp_path, monkeypatch):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a yolotrain demo dataset"):
        ensure_demo_dataset(foreign, n_train=2, n_val=1, size=64)
    assert (foreign / "precious.txt").read_text() == "keep me"
    monkeypatch.setenv("YOLOTRAIN_CACHE", str(tmp_path / "cache"))
    y = ensure_demo_dataset(n_train=2, n_val=1, size=64)
    assert y == tmp_path / "cache" / "demo-v1" / "data.yaml" and y.is_file()


def test_interrupted_generation_leaves_nothing_half_built(tmp_path, monkeypatch):
    import yolotrain.data.demo as demo

    calls = {"n": 0}
    real = demo.make_demo_image

    def flaky(rng, size):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(rng, size)

    monkeypatch.setattr(demo, "make_demo_image", flaky)
    with pytest.raises(DataError, match="cannot create"):
        ensure_demo_dataset(tmp_path / "d", n_train=4, n_val=1, size=64)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp folder exists
    monkeypatch.undo()
    assert ensure_demo_dataset(tmp_path / "d", n_train=4, n_val=1, size=64).is_file()


def test_boxes_are_tight_and_sizes_varied():
    sides = []
    for i in range(30):
        img, cls, boxes = make_demo_image(np.random.default_rng(i), 128)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert len(cls) == len(boxes) >= 1 and set(cls.tolist()) <= set(range(len(CLASS_NAMES)))
        assert (boxes >= 0).all() and (boxes <= 128).all()
        sides.extend(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist())
    sides = np.array(sides) / 128
    assert sides.min() < 0.15 and sides.max() > 0.4
    assert ((sides > 0.06) & (sides < 0.52)).all()


def test_boxes_hug_the_drawn_shapes():
    # On a black background every drawn pixel must lie in some box, and every box edge must touch
    # drawn pixels (a later shape may cover part of an earlier one, but it is drawn too).
    for seed in range(20):
        img, _, boxes = make_demo_image(np.random.default_rng(seed), 128, clean=True)
        fg = img.max(2) > 0
        covered = np.zeros_like(fg)
        for x1, y1, x2, y2 in boxes.astype(int):
            covered[y1:y2, x1:x2] = True
            region = fg[y1:y2, x1:x2]
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
        assert not (fg & ~covered).any()
