"""Checkpointer on its own: a checkpoint is the union of the parts' states, and nothing goes unclaimed."""

import pytest
import torch

from yolotrain.engine.checkpoint import Checkpointer, StatefulModule, load_checkpoint
from yolotrain.errors import CheckpointError


class Counter:
    KEYS = ("count", "label")

    def __init__(self, count=0, label=""):
        self.count, self.label = count, label

    def state_dict(self):
        return {"count": self.count, "label": self.label}

    def load_state_dict(self, state):
        self.count, self.label = state["count"], state["label"]


RUN = {"format": "yolotrain-ckpt-1", "model_cfg": {"scale": "n"}, "names": ["a"], "config": {}, "data_yaml": "d",
       "versions": {}, "optimizer_name": "SGD", "base_lr": 0.01}  # fmt: skip


def test_save_writes_the_union_and_load_gives_each_part_its_keys(tmp_path):
    lin = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, [Counter(7, "x"), StatefulModule("model", lin)], RUN).save(["a.pt", "b.pt"])
    state = load_checkpoint(tmp_path / "b.pt")
    assert state["count"] == 7 and state["label"] == "x" and set(state["model"]) == {"weight", "bias"}
    assert state["names"] == ["a"] and state["base_lr"] == 0.01
    other, lin2 = Counter(), torch.nn.Linear(2, 2)
    Checkpointer(tmp_path, [other, StatefulModule("model", lin2)], RUN).load_state_dict(state)
    assert (other.count, other.label) == (7, "x") and torch.equal(lin2.weight, lin.weight)


def test_a_key_nobody_claims_is_an_error(tmp_path):
    state = {**RUN, "count": 1, "label": "", "surprise": 3}
    with pytest.raises(CheckpointError, match="does not know: surprise"):
        Checkpointer(tmp_path, [Counter()], RUN).load_state_dict(state)


def test_a_missing_key_names_the_part(tmp_path):
    with pytest.raises(CheckpointError, match="lacks label .needed by Counter"):
        Checkpointer(tmp_path, [Counter()], RUN).load_state_dict({**RUN, "count": 1})


def test_two_parts_cannot_own_one_key(tmp_path):
    with pytest.raises(ValueError, match="'count' is claimed by two parts"):
        Checkpointer(tmp_path, [Counter(), Counter()], RUN)


def test_a_part_must_return_exactly_its_keys(tmp_path):
    class Sloppy(Counter):
        def state_dict(self):
            return {"count": 1}

    with pytest.raises(ValueError, match="owns"):
        Checkpointer(tmp_path, [Sloppy()], RUN).state_dict()
