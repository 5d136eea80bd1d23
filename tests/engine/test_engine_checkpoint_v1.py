"""Version-1 checkpoints (every key at the top level, written before format 2) still resume, predict and
go through ``yolotrain ckpt``; what they write next is version 2.

``golden_v1/v1_last.pt`` was written by the code of that time (``golden_v1/make_v1_checkpoint.py`` says how):
one complete epoch of a tiny custom architecture on the same demo set as ``tiny_data``.
"""

import json
from pathlib import Path

import pytest
import torch

from yolotrain.checkpoint_file import load_checkpoint, save_checkpoint
from yolotrain.cli import main

V1 = Path(__file__).with_name("golden_v1") / "v1_last.pt"
TINY = {"scale": "custom", "family": "v8", "depth": 0.01, "width": 0.0625, "max_channels": 32, "nc": 4}


@pytest.fixture
def v1_run(tiny_data, tmp_path) -> Path:
    """The fixture as a run's ``last.pt`` whose recorded data is this session's copy of the same demo set."""
    raw = torch.load(V1, weights_only=True)
    raw.pop("integrity")
    raw["config"]["data"] = raw["data_yaml"] = str(tiny_data)
    last = tmp_path / "v1" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    save_checkpoint(raw, last)  # keeps the version-1 tag and layout
    return last


def test_the_fixture_is_a_version_1_file():
    raw = torch.load(V1, weights_only=True)
    assert raw["format"] == "yolotrain-ckpt-1" and "parts" not in raw and "run" not in raw
    assert raw["position"] == {"epoch": 0, "iteration": 3, "complete": True, "iters_per_epoch": 3}


def test_v1_info(capsys):
    assert main(["ckpt", "info", str(V1), "json=true"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["format"] == 1 and d["parts"] == [] and d["resumable"]
    assert d["position"] == {"epoch": 0, "iteration": 3, "complete": True, "iters_per_epoch": 3}
    assert d["model"] == TINY and d["names"] == ["circle", "rectangle", "triangle", "cross"]
    assert d["tensors"]["ema"]["elements"] == 150956 and d["config"]["optimizer"] == "SGD"
    assert main(["ckpt", "info", str(V1)]) == 0
    out = capsys.readouterr().out
    assert "format: version 1" in out and "position: epoch 1, iteration 3/3 (epoch complete)" in out


def test_v1_resave_stays_version_1(tmp_path):
    out = tmp_path / "again.pt"
    assert main(["ckpt", "resave", str(V1), str(out)]) == 0
    assert torch.load(out, weights_only=True)["format"] == "yolotrain-ckpt-1"
    assert main(["ckpt", "diff", str(V1), str(out)]) == 0


def test_v1_strips_to_version_2_and_both_predict(tiny_data, tmp_path, capsys):
    slim = tmp_path / "slim.pt"
    assert main(["ckpt", "strip", str(V1), str(slim)]) == 0
    raw = torch.load(slim, weights_only=True)
    assert raw["format"] == "yolotrain-ckpt-2" and sorted(raw["parts"]) == ["model", "train"]
    assert raw["run"]["model_cfg"] == TINY and "position" not in raw["parts"]["train"]
    ema = torch.load(V1, weights_only=True)["ema"]
    assert all(
        torch.equal(v.half() if v.is_floating_point() else v, raw["parts"]["model"]["model"][k]) for k, v in ema.items()
    )
    images = tiny_data.parent / "images" / "val"
    for name, model in (("from_v1", V1), ("from_slim", slim)):
        args = [f"model={model}", f"source={images}", "conf=0.0", "max_det=3", f"project={tmp_path}", f"name={name}"]
        assert main(["predict", *args]) == 0
        found = json.loads((tmp_path / name / "predictions.json").read_text())
        assert {d["file_name"] for d in found} == {p.name for p in images.iterdir()}
    capsys.readouterr()
    assert main(["train", f"resume={slim}"]) == 2
    assert "holds no training state to resume" in capsys.readouterr().err


def test_v1_resumes_and_writes_version_2(v1_run, capsys):
    before = load_checkpoint(v1_run)
    assert before.version == 1
    assert main(["train", f"resume={v1_run}", "imgsz=128"]) == 2  # refused as before
    assert "cannot resume" in capsys.readouterr().err
    assert main(["train", f"resume={v1_run}"]) == 0  # a finished run, as before
    assert "already finished" in capsys.readouterr().err
    assert main(["train", f"resume={v1_run}", "epochs=2"]) == 0
    after = load_checkpoint(v1_run)
    assert after.version == 2
    assert sorted(after.parts) == ["ema", "model", "optimizer", "precision", "rng", "train"]
    assert after["position"] == {"epoch": 1, "iteration": 3, "complete": True, "iters_per_epoch": 3}
    assert after["history"][0] == before["history"][0] and len(after["history"]) == 2
    # batch 8 of a nominal 64 over 3 iterations: one optimizer step (and EMA update) per epoch
    assert (before["ema_updates"], after["ema_updates"]) == (1, 2) and after.run["model_cfg"] == TINY
