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

    def after_resume(rank, world, seed=0, position=Position(1, 4)):
        random.seed(99), np.random.seed(99), torch.manual_seed(99)  # whatever the process drew before
        RngStreams(rank, world, seed, lambda: position).load_state_dict(saved)
        return draws()

    # another number of processes: every rank's streams re-seeded from (seed, epoch, iteration, rank) ...
    new = [after_resume(r, 3) for r in range(3)]
    assert len(set(new)) == 3  # ... distinct per rank (rank 0's saved state for all would make them alike)
    assert after_resume(2, 3) == new[2]  # ... reproducible
    assert after_resume(2, 3, seed=1) != new[2] and after_resume(2, 3, position=Position(1, 5)) != new[2]
    torch.manual_seed(10)
    assert float(torch.rand(())) not in [d[2] for d in new]  # not the saved streams


def test_reseeding_is_logged_with_the_streams_named(caplog):
    saved = {"rng": RngStreams().state_dict()["rng"], "rng_ranks": [RngStreams().state_dict()["rng"]] * 2}
    streams = RngStreams(0, 1, seed=0, position=lambda: Position(0, 3))
    with caplog.at_level("WARNING", logger="yolotrain"):
        streams.load_state_dict(saved)
    assert streams.reseeded[:3] == ("python", "numpy", "torch")
    assert "1 processes instead of 2: re-seeded the python, numpy, torch" in caplog.text
    assert "iteration 3" in caplog.text
    caplog.clear()
    RngStreams(0, 2).load_state_dict(saved)
    assert "re-seeded" not in caplog.text  # same number of processes: restored, nothing to say


@pytest.mark.parametrize(
    "micro, saved, now, expected",
    [
        (2, 2, 1, 4),  # 4 images a process split in 2 (2 each) -> 8 images a process: 4 parts of 2
        (4, 1, 2, 2),  # 8 images in 4 parts -> 4 images a process: 2 parts of 2
        (3, 1, 2, 2),  # 6 images in parts of <= 2 -> 3 images a process: 2 parts (of <= 2)
        (1, 2, 1, 1),  # no out-of-memory error seen: nothing known, no split
        (2, 2, 2, 2),  # same number of processes: kept
    ],
)
def test_micro_batches_keep_their_size_on_another_number_of_processes(micro, saved, now, expected, caplog):
    before = TrainState(processes=saved)
    before.micro_batches = micro
    after = TrainState(processes=now)
    with caplog.at_level("WARNING", logger="yolotrain"):
        after.load_state_dict(before.state_dict())
    assert after.micro_batches == expected
    assert ("micro-batches per step" in caplog.text) == (expected != micro)
