"""Write ``v1_last.pt``: a small checkpoint in the version-1 layout (every key at the top level).

Never run by the test suite. It must run on yolotrain code that still writes version 1 (the ``main``
branch at commit 1d58769, before checkpoint format 2), so the file is what users' old runs hold::

    git worktree add /tmp/yolotrain-v1 1d58769
    PYTHONPATH=/tmp/yolotrain-v1/src python tests/engine/golden_v1/make_v1_checkpoint.py

It trains a tiny custom architecture (depth 0.01, width 0.0625, at most 32 channels; the file holds
model, EMA and an SGD momentum buffer of 150k values each, 2 MB) for 1 epoch on the tests' ``tiny_data``
set (the demo shapes, 24 train / 8 val images of 64 px, made with the same call as ``tests/conftest.py``), and
keeps that run's ``last.pt``: a complete epoch that the tests resume (raising ``epochs``), predict with and
inspect. The data path the file records is this script's temporary folder; the tests point it at their
own copy of the same set.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from yolotrain.cli import main
from yolotrain.data import ensure_demo_dataset
from yolotrain.engine.checkpoint import FORMAT, save_checkpoint
from yolotrain.models import build_model

HERE = Path(__file__).resolve().parent
ARCH = {"family": "v8", "depth": 0.01, "width": 0.0625, "max_channels": 32}


def make() -> Path:
    assert FORMAT == "yolotrain-ckpt-1", f"run this on code that writes version 1, not {FORMAT}"
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_demo_dataset(Path(tmp) / "shapes", n_train=24, n_val=8, size=64)
        seed = Path(tmp) / "tiny.pt"  # the architecture to train, as a weights file model= accepts
        model = build_model("custom", nc=4, **ARCH)
        save_checkpoint({"model_cfg": model.config(), "names": ["0", "1", "2", "3"], "model": model.state_dict()}, seed)
        args = [
            f"data={data}",
            f"model={seed}",
            "epochs=1",
            "imgsz=64",
            "batch=8",
            "workers=0",
            "seed=0",
            "optimizer=SGD",
        ]
        code = main(["train", *args, f"project={tmp}", "name=v1", "verbose=false"])
        assert code == 0, f"training failed with exit code {code}"
        out = HERE / "v1_last.pt"
        shutil.copyfile(Path(tmp) / "v1" / "weights" / "last.pt", out)
    return out


if __name__ == "__main__":
    path = make()
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
