"""``callbacks=`` entries, and turning Python callbacks into entries the DDP workers can import."""

import os
import textwrap
from pathlib import Path

import pytest

from yolotrain.engine.callbacks import callback_reference, load_callbacks
from yolotrain.errors import ConfigError


@pytest.fixture()
def user_module(tmp_path):
    path = tmp_path / "my_cbs.py"
    path.write_text(
        textwrap.dedent("""
        CALLS = []

        def on_train_end(trainer):
            CALLS.append("end")

        def record(trainer):
            CALLS.append("record")

        def register():
            return {"on_train_start": record, "on_val_end": record}

        NOT_CALLABLE = 3
    """)
    )
    return path


def test_entries_resolve_to_events(user_module):
    pairs = load_callbacks(
        [f"{user_module}:on_train_end", f"on_fit_epoch_end={user_module}:record", f"{user_module}:register"]
    )
    assert [e for e, _ in pairs] == ["on_train_end", "on_fit_epoch_end", "on_train_start", "on_val_end"]
    pairs[0][1](None)
    assert pairs[0][1].__globals__["CALLS"] == ["end"]


def test_module_entries_import_by_name():
    pairs = load_callbacks(["on_train_end=json:dumps"])
    import json

    assert pairs == [("on_train_end", json.dumps)]


@pytest.mark.parametrize(
    "entry, words",
    [
        ("on_nothing={mod}:record", "unknown event 'on_nothing'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:record", "not named after an event"),
        ("on_train_end={mod}:NOT_CALLABLE", "is not callable"),
        ("/no/such/file.py:f", "does not exist"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ],
)
def test_bad_entries_are_one_line_errors(user_module, entry, words):
    with pytest.raises(ConfigError, match=words) as e:
        load_callbacks([entry.format(mod=user_module)])
    assert "\n" not in str(e.value)


def test_reference_round_trip(user_module):
    fn = load_callbacks([f"{user_module}:on_train_end"])[0][1]
    ref = callback_reference("on_train_end", fn)
    assert ref == f"on_train_end={user_module.resolve()}:on_train_end"
    import json

    assert callback_reference("on_val_end", json.dumps) == "on_val_end=json:dumps"


def test_unsendable_callbacks_are_refused():
    def local(trainer):
        pass

    with pytest.raises(ConfigError, match="module level"):
        callback_reference("on_train_end", local)
    with pytest.raises(ConfigError, match="module level"):
        callback_reference("on_train_end", lambda t: None)


def test_config_callbacks_run_in_the_trainer(tiny_data, tmp_path, user_module):
    from yolotrain.cli import main

    code = main(
        [
            "train",
            f"data={tiny_data}",
            "epochs=1",
            "imgsz=64",
            "batch=8",
            "workers=0",
            "val=false",
            f"project={tmp_path}",
            "verbose=false",
            f"callbacks={user_module}:on_train_end",
            "plots=false",
        ]
    )
    assert code == 0
    import sys

    mod = next(
        m
        for n, m in sys.modules.items()
        if n.startswith("yolotrain_user_callbacks_") and getattr(m, "__file__", "") == str(user_module.resolve())
    )
    assert mod.CALLS == ["end"]


@pytest.mark.slow
def test_api_keeps_callbacks_under_ddp(tiny_data, tmp_path, monkeypatch):
    """Detector(...).train(nproc=2): the Python callback runs inside both torchrun workers, and the caller's
    own stop-signal handlers are in place again afterwards (the elastic agent replaces them while it runs).

    The workers are forks of one fork server that imported the engine first, and each launch has its own server:
    a second launch's workers see the environment of that launch, not the first's."""
    import signal

    import ddp_callbacks  # tests/engine is on sys.path (pytest's rootdir-relative import)

    from yolotrain import Detector

    monkeypatch.setenv("PYTHONWARNINGS", "ignore")

    def callers_handler(signum, frame):
        raise AssertionError("never called")

    def train(out: Path):
        monkeypatch.setenv("YT_TEST_OUT", str(out))
        det = Detector("n")
        det.add_callback("on_train_batch_end", ddp_callbacks.on_train_batch_end)
        det.add_callback("on_train_start", ddp_callbacks.record_process)
        best = det.train(data=str(tiny_data), nproc=2, epochs=1, imgsz=64, batch=8, workers=0, verbose=False,
                         project=str(out / "runs"), plots=False)  # fmt: skip
        return det, best

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    previous = signal.signal(signal.SIGTERM, callers_handler)
    try:
        det, best = train(first)
        assert signal.getsignal(signal.SIGTERM) is callers_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert best is not None and best.images == 8
    assert (first / "batches_rank0.txt").read_text().count("\n") == 3  # 24 images / global batch 8
    assert (first / "batches_rank1.txt").read_text().count("\n") == 3
    assert det.model.endswith(".pt")

    train(second)
    parents = {}
    for out in (first, second):
        records = {tuple((out / f"process_rank{rank}.txt").read_text().split()) for rank in (0, 1)}
        assert len(records) == 1, records  # both ranks: children of the same process, which preloaded the engine
        ((parent, preloaded, hangup_default),) = records
        assert preloaded == "True" and int(parent) != os.getpid()
        assert hangup_default == "True"  # the server ignores the stop signals; its forks answer them
        parents[out] = parent
    assert parents[first] != parents[second]  # the first launch's server ended with it
