"""TrainState and RngStreams on their own: what a resumed run gets back."""

import random

import numpy as np
import pytest
import torch

from yolotrain.engine.state import Position, RngStreams, TrainState
from yolotrain.errors import CheckpointError
from yolotrain.eval import EvalResult


def test_best_is_the_highest_map50_95_and_history_keeps_every_row():
    state = TrainState()
    flags = [state.record_epoch({"epoch": e + 1}, EvalResult(map50_95=v)) for e, v in enumerate([0.3, 0.5, 0.4])]
    assert flags == [True, True, False]
    assert state.best_fitness == 0.5 and state.best_metrics["mAP50-95"] == 0.5
    assert not state.record_epoch({"epoch": 4}, None)  # an epoch without validation never improves
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4]


def test_round_trip_restores_progress_and_counters():
    state = TrainState(patience=3)
    state.position = Position(epoch=2, iteration=5, complete=False, iters_per_epoch=9)
    state.record_epoch({"epoch": 1}, EvalResult(map50_95=0.25))
    state.count_skipped()
    state.micro_batches = 4
    state.phase = {"name": "frozen", "batch": 8}
    state.early_stop.update(0, 0.25)
    saved = state.state_dict()
    assert set(saved) == set(TrainState.KEYS)
    back = TrainState(patience=3)
    back.load_state_dict(saved)
    assert back.position == Position(2, 5, False, 9) and back.position.next_start() == (2, 5)
    assert back.best_fitness == 0.25 and back.best.map50_95 == 0.25 and back.history == [{"epoch": 1}]
    assert back.skipped_steps == 1 and back.micro_batches == 4 and back.phase == {"name": "frozen", "batch": 8}
    assert back.early_stop.state_dict() == state.early_stop.state_dict()


def test_complete_epoch_continues_with_the_next():
    assert Position(epoch=2, iteration=9, complete=True, iters_per_epoch=9).next_start() == (3, 0)


def test_a_file_without_progress_is_refused():
    with pytest.raises(CheckpointError, match="no training state"):
        TrainState().load_state_dict({"best_fitness": None})


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_streams_continue_exactly():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    streams = RngStreams()
    saved = streams.state_dict()
    expected = draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    assert draws() != expected
    RngStreams().load_state_dict(saved)
    assert draws() == expected


def test_each_rank_continues_its_own_stream_unless_the_world_changed():
    torch.manual_seed(10)
    rank0 = RngStreams().state_dict()["rng"]
    torch.manual_seed(11)
    rank1 = RngStreams().state_dict()["rng"]
    saved = {"rng": rank0, "rng_ranks": [rank0, rank1]}
    RngStreams(rank=1, world=2).load_state_dict(saved)
    a = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(a, torch.rand(3))
    RngStreams(rank=1, world=3).load_state_dict(saved)  # another world size: rank 0's stream
    b = torch.rand(3)
    torch.manual_seed(10)
    assert torch.equal(b, torch.rand(3))
