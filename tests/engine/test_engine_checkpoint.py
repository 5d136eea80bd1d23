"""checkpoint.py: the file (atomic writes, safe loading, refusals) and the Checkpointer (union of the parts)."""

import os
from pathlib import Path

import pytest
import torch

from yolotrain.checkpoint_file import load_checkpoint, save_checkpoint, to_plain
from yolotrain.engine.checkpoint import Checkpointer, StatefulModule, epoch_end_files
from yolotrain.engine.trainer import Trainer
from yolotrain.errors import CheckpointError
from yolotrain.models import build_model
from yolotrain.models.transfer import transfer_weights


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_round_trip_and_atomic(tmp_path):
    import numpy as np

    path = tmp_path / "w" / "last.pt"
    state = {
        "model": {"a": torch.ones(2)},
        "epoch": np.int64(3),
        "ver": torch.__version__,
        "p": tmp_path,
        "m": {"x": np.float32(0.5)},
    }
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and type(loaded["epoch"]) is int and loaded["ver"] == str(torch.__version__)
    assert torch.equal(loaded["model"]["a"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind
    with pytest.raises(TypeError):
        to_plain({"bad": object()})


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"format": "yolotrain-ckpt-1", "payload": Evil()}, bad)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(bad)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.randn(100, 100)}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a yolotrain checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def test_transfer_weights_counts_mismatches():
    src = build_model("n", nc=80)
    dst = build_model("n", nc=3)
    counts = transfer_weights(dst, src.state_dict())
    assert counts["mismatched"] > 0 and counts["missing"] == 0 and counts["unexpected"] == 0
    assert counts["matched"] + counts["mismatched"] == len(src.state_dict())
    body = [k for k in src.state_dict() if not k.startswith("head.")]
    assert all(torch.equal(dst.state_dict()[k], src.state_dict()[k]) for k in body)


class Counter:
    KEYS = ("count", "label")

    def __init__(self, count=0, label=""):
        self.count, self.label = count, label

    def state_dict(self):
        return {"count": self.count, "label": self.label}

    def load_state_dict(self, state):
        self.count, self.label = state["count"], state["label"]


RUN = {"model_cfg": {"scale": "n"}, "names": ["a"], "config": {}, "data_yaml": "d",
       "versions": {}, "optimizer_name": "SGD", "base_lr": 0.01}  # fmt: skip


def test_save_writes_the_union_and_load_gives_each_part_its_keys(tmp_path):
    lin = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, {"counter": Counter(7, "x"), "model": StatefulModule("model", lin)}, RUN).save(
        ["a.pt", "b.pt"]
    )
    state = load_checkpoint(tmp_path / "b.pt")
    assert state["count"] == 7 and state["label"] == "x" and set(state["model"]) == {"weight", "bias"}
    assert state["names"] == ["a"] and state["base_lr"] == 0.01
    other, lin2 = Counter(), torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, {"counter": other, "model": StatefulModule("model", lin2)}, RUN).load_state_dict(state)
    assert (other.count, other.label) == (7, "x") and torch.equal(lin2.weight, lin.weight)


def test_a_key_nobody_claims_is_an_error(tmp_path):
    state = {**RUN, "count": 1, "label": "", "surprise": 3}
    with pytest.raises(CheckpointError, match="does not know: surprise"):
        Checkpointer(tmp_path, {"counter": Counter()}, RUN).load_state_dict(state)


def test_a_missing_key_names_the_part(tmp_path):
    with pytest.raises(CheckpointError, match="lacks label .needed by Counter"):
        Checkpointer(tmp_path, {"counter": Counter()}, RUN).load_state_dict({**RUN, "count": 1})


def test_two_parts_cannot_own_one_key(tmp_path):
    with pytest.raises(ValueError, match="'count' is claimed by two parts"):
        Checkpointer(tmp_path, {"a": Counter(), "b": Counter()}, RUN)


def test_a_part_must_return_exactly_its_keys(tmp_path):
    class Sloppy(Counter):
        def state_dict(self):
            return {"count": 1}

    with pytest.raises(ValueError, match="owns"):
        Checkpointer(tmp_path, {"sloppy": Sloppy()}, RUN).state_dict()


@pytest.mark.parametrize(
    "done, epochs, improved, validated, save_epochs, expected",
    [
        (1, 3, False, True, 0, ["last.pt"]),  # validated, not better
        (2, 3, True, True, 0, ["last.pt", "best.pt"]),  # the best so far
        (3, 3, False, True, 0, ["last.pt"]),  # last epoch, an earlier one stays the best
        (2, 3, False, False, 0, ["last.pt"]),  # no validation yet, not the last epoch
        (3, 3, False, False, 0, ["last.pt", "best.pt"]),  # never validated: the final weights are the best
        (4, 10, False, True, 2, ["last.pt", "epoch4.pt"]),
        (5, 10, False, True, 2, ["last.pt"]),
        (10, 10, True, True, 5, ["last.pt", "best.pt", "epoch10.pt"]),
    ],
)
def test_epoch_end_files(done, epochs, improved, validated, save_epochs, expected):
    assert epoch_end_files(done, epochs, improved, validated, save_epochs) == expected


def test_a_run_writes_the_numbered_checkpoints_save_epochs_asks_for(cfg_for):
    cfg = cfg_for(epochs=3, save_epochs=2, val=False)
    Trainer(cfg).fit()
    wdir = Path(cfg.project) / "exp" / "weights"
    assert sorted(p.name for p in wdir.iterdir()) == ["best.pt", "epoch2.pt", "last.pt"]
    assert load_checkpoint(wdir / "epoch2.pt")["epoch"] == 1  # 0-based: the state after the second epoch
