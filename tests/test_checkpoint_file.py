"""checkpoint_file.py: the version-2 layout (run description, parts by name) and one reader for both versions."""

import pytest
import torch

from yolotrain.checkpoint_file import FORMAT, FORMAT_V1, Checkpoint, load_checkpoint, save_checkpoint
from yolotrain.engine.checkpoint import Checkpointer, StatefulModule
from yolotrain.errors import CheckpointError

RUN = {"model_cfg": {"scale": "n", "nc": 1}, "names": ["a"], "base_lr": 0.01}


class Progress:
    KEYS = ("position", "history")

    def __init__(self, epoch=0):
        self.epoch = epoch

    def state_dict(self):
        return {"position": {"epoch": self.epoch}, "history": [{"epoch": e} for e in range(self.epoch + 1)]}

    def load_state_dict(self, state):
        self.epoch = state["position"]["epoch"]


class Holder:
    """A part that keeps whatever its keys hold."""

    def __init__(self, *keys):
        self.KEYS, self.state = keys, {}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


def test_a_part_state_is_filed_under_the_part_name(tmp_path):
    lin = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, {"train": Progress(3), "model": StatefulModule("model", lin)}, RUN).save(["last.pt"])
    raw = torch.load(tmp_path / "last.pt", weights_only=True)  # the file as other tools see it
    assert raw["format"] == "yolotrain-ckpt-2"
    assert sorted(raw) == ["format", "integrity", "parts", "run"]
    assert raw["run"] == {"model_cfg": {"scale": "n", "nc": 1}, "names": ["a"], "base_lr": 0.01}
    assert sorted(raw["parts"]) == ["model", "train"]
    assert raw["parts"]["train"] == {
        "position": {"epoch": 3},
        "history": [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}, {"epoch": 3}],
    }
    assert torch.equal(raw["parts"]["model"]["model"]["weight"], lin.weight)


def test_v2_round_trip_restores_every_part(tmp_path):
    lin = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, {"train": Progress(5), "model": StatefulModule("model", lin)}, RUN).save(["last.pt"])
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt.version == 2 and ckpt.run["names"] == ["a"] and ckpt.part("train")["position"] == {"epoch": 5}
    progress, lin2 = Progress(), torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, {"train": progress, "model": StatefulModule("model", lin2)}, RUN).load_state_dict(ckpt)
    assert progress.epoch == 5 and torch.equal(lin2.weight, lin.weight) and torch.equal(lin2.bias, lin.bias)


def test_both_versions_read_the_same():
    w = torch.arange(3.0)
    v1 = Checkpoint({"format": FORMAT_V1, **RUN, "position": {"epoch": 1}, "history": [], "model": {"w": w}})
    v2 = Checkpoint(
        {
            "format": FORMAT,
            "run": RUN,
            "parts": {"train": {"position": {"epoch": 1}, "history": []}, "model": {"model": {"w": w}}},
        }
    )
    assert (v1.version, v2.version) == (1, 2)
    for ckpt in (v1, v2):
        assert sorted(ckpt) == ["base_lr", "history", "model", "model_cfg", "names", "position"]
        assert ckpt["position"] == {"epoch": 1} and ckpt["model"]["w"] is w and ckpt.get("ema") is None
        assert ckpt.run == RUN
        assert ckpt.part("train", ("position", "history")) == {"position": {"epoch": 1}, "history": []}


def test_a_version_1_file_restores_part_by_part(tmp_path):
    v1 = {
        "format": FORMAT_V1,
        **RUN,
        "position": {"epoch": 4},
        "history": [],
        "model": torch.nn.Linear(2, 2).state_dict(),
    }
    progress, lin = Progress(), torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, {"train": progress, "model": StatefulModule("model", lin)}, RUN).load_state_dict(v1)
    assert progress.epoch == 4 and torch.equal(lin.weight, v1["model"]["weight"])


def test_a_key_held_twice_is_malformed():
    with pytest.raises(CheckpointError, match="key 'position' is held by part 'a' and part 'b'"):
        Checkpoint({"format": FORMAT, "run": {}, "parts": {"a": {"position": 1}, "b": {"position": 2}}}, "x.pt")
    with pytest.raises(CheckpointError, match="'run' and 'parts' must be dicts"):
        Checkpoint({"format": FORMAT, "run": [], "parts": {}}, "x.pt")


def test_a_part_the_trainer_lacks_or_a_key_filed_under_another_part_is_refused(tmp_path):
    state = {"format": FORMAT, "run": RUN, "parts": {"train": {"position": {"epoch": 0}, "history": []}, "extra": {}}}
    with pytest.raises(CheckpointError, match="does not know: extra"):
        Checkpointer(tmp_path, {"train": Progress()}, RUN).load_state_dict(state)
    moved = {"format": FORMAT, "run": RUN, "parts": {"train": {"position": {"epoch": 0}, "history": []}, "log": {}}}
    with pytest.raises(CheckpointError, match="part 'train' holds keys it does not own: history"):
        Checkpointer(tmp_path, {"train": Holder("position"), "log": Holder("history")}, RUN).load_state_dict(moved)


def test_save_keeps_a_given_format_tag(tmp_path):
    save_checkpoint({"format": FORMAT_V1, "position": {"epoch": 2}}, tmp_path / "old.pt")
    assert torch.load(tmp_path / "old.pt", weights_only=True)["format"] == FORMAT_V1
    assert load_checkpoint(tmp_path / "old.pt").version == 1
