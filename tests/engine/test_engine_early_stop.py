"""early_stop.py: patience counted in epochs since the best, kept across a resume."""

from __future__ import annotations

import pytest

from yolotrain.engine.early_stop import EarlyStopping


# ----------------------------------------------------------------------------------------- early stopping
def test_early_stopping_counts_epochs_since_best():
    es = EarlyStopping(patience=3)
    decisions = [es.update(e, f) for e, f in enumerate([0.1, 0.2, 0.2, 0.1, 0.15])]
    assert decisions == [False, False, False, False, True]  # 0.2 again is not an improvement
    assert es.best_epoch == 1 and es.best_fitness == pytest.approx(0.2)
    msg = es.message()
    assert "best epoch 2" in msg and "patience=" in msg and "patience=0" in msg


def test_early_stopping_state_round_trip_resumes_the_count():
    fits = [0.3, 0.5, 0.4, 0.45, 0.2, 0.1]
    whole = EarlyStopping(4)
    expected = [whole.update(e, f) for e, f in enumerate(fits)]
    first = EarlyStopping(4)
    for e, f in enumerate(fits[:3]):
        first.update(e, f)
    state = first.state_dict()
    assert state == {"best_epoch": 1, "best_fitness": 0.5, "last_epoch": 2}
    resumed = EarlyStopping(4)
    resumed.load_state_dict(dict(state))
    assert [resumed.update(e, f) for e, f in enumerate(fits[3:], start=3)] == expected[3:]
    assert expected[-1] is True
    longer = EarlyStopping(10)  # a resumed run may raise patience
    longer.load_state_dict(state)
    assert not any(longer.update(e, f) for e, f in enumerate(fits[3:], start=3))


def test_early_stopping_disabled_and_unvalidated_epochs():
    off = EarlyStopping(0)
    assert not any(off.update(e, 0.0) for e in range(50)) and off.best_epoch == 0
    es = EarlyStopping(2)
    assert not es.update(0, None)  # nothing validated yet: never stop blind
    assert not es.update(1, 0.4)
    assert not es.update(2, float("nan"))
    assert es.update(3, None)  # epochs count even when not validated (val_period > 1)
