"""Callbacks run code, so they come only from the command line or Python: never from a ``cfg=`` YAML or a
checkpoint (config.py's ``runs_code`` settings, kept through the distributed launcher)."""

from pathlib import Path

import pytest

from yolotrain.checkpoint_file import load_checkpoint
from yolotrain.cli import main
from yolotrain.config import GIVEN, parse_cli_args, resolve
from yolotrain.engine.launch import worker_args
from yolotrain.utils.logging import setup_logging

# ---- callbacks only from the command line or Python ---------------------------------------------------


@pytest.fixture()
def marker_module(tmp_path) -> Path:
    """A callback file whose on_train_start writes a marker next to it."""
    mod = tmp_path / "marker_cb.py"
    mod.write_text(
        "from pathlib import Path\n\n\ndef on_train_start(trainer):\n"
        "    Path(__file__).with_name('ran').write_text(str(trainer.epoch))\n"
    )
    return mod


def train_args(tiny_data, project, *extra):
    return [
        "train",
        f"data={tiny_data}",
        "epochs=1",
        "imgsz=64",
        "batch=8",
        "workers=0",
        "val=false",
        "plots=false",
        "verbose=false",
        f"project={project}",
        *extra,
    ]


def test_cfg_file_callbacks_are_not_run(tiny_data, tmp_path, marker_module, capsys):
    entry = f"{marker_module}:on_train_start"
    cfg = tmp_path / "downloaded.yaml"
    cfg.write_text(f"epochs: 1\ncallbacks: ['{entry}']\n")
    assert main(train_args(tiny_data, tmp_path / "runs", f"cfg={cfg}")) == 0
    err = capsys.readouterr().err
    assert not (tmp_path / "ran").exists()
    warning = [ln for ln in err.splitlines() if "NOT run" in ln]
    assert len(warning) == 1 and f"cfg file '{cfg}'" in warning[0] and f"callbacks={entry}" in warning[0]
    # the run's record does not claim callbacks that did not run
    assert load_checkpoint(tmp_path / "runs" / "exp" / "weights" / "last.pt")["config"]["callbacks"] == []


@pytest.mark.slow
def test_command_line_callbacks_run_and_resume_does_not_rerun_recorded_ones(tiny_data, tmp_path, marker_module, capsys):
    entry = f"{marker_module}:on_train_start"
    assert main(train_args(tiny_data, tmp_path / "runs", f"callbacks={entry}")) == 0
    assert (tmp_path / "ran").read_text() == "0"
    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    assert load_checkpoint(last)["config"]["callbacks"] == [entry]  # the checkpoint does name it
    (tmp_path / "ran").unlink()
    capsys.readouterr()
    assert main(["train", f"resume={last}", "epochs=2", "verbose=false"]) == 0
    err = capsys.readouterr().err
    assert not (tmp_path / "ran").exists()
    warning = [ln for ln in err.splitlines() if "NOT run" in ln]
    assert len(warning) == 1 and f"checkpoint '{last}'" in warning[0] and f"callbacks={entry}" in warning[0]
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and state["config"]["callbacks"] == []
    # given again on the command line, they run on resume
    assert main(["train", f"resume={last}", "epochs=3", "verbose=false", f"callbacks={entry}"]) == 0
    assert (tmp_path / "ran").is_file()
    assert load_checkpoint(last)["config"]["callbacks"] == [entry]


def test_sources_and_the_distributed_launch_keep_given_callbacks(tmp_path, capsys):
    setup_logging()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\ncallbacks: ['json:dumps']\n")
    c = resolve({"cfg": str(cfg), "callbacks": "json:loads"})
    assert c.callbacks == ["json:loads"] and c.origin("callbacks") == GIVEN
    assert c.origin("epochs") == f"cfg file '{cfg}'" and c.origin("lr0") == "default"
    # no attribute of Config hides a setting (a method named `source` once hid the predict setting)
    plain = resolve({"source": "imgs/"})
    assert all(getattr(plain, k) == v for k, v in plain.to_dict().items()) and plain.source == "imgs/"
    assert "NOT run" in capsys.readouterr().err  # json:dumps was named by the file only
    # the same entry in the file and on the command line: it runs, nothing to warn about
    assert resolve({"cfg": str(cfg), "callbacks": "json:dumps"}).callbacks == ["json:dumps"]
    assert "NOT run" not in capsys.readouterr().err
    # the workers read their settings from a file, so the launcher passes callbacks as an argument
    entries = ["on_train_end=/tmp/a b/x.py:f", "json:dumps"]
    (tmp_path / "w.yaml").write_text("epochs: 2\n")
    cmd = worker_args(tmp_path / "w.yaml", entries)
    worker = resolve(parse_cli_args(cmd[cmd.index("train") + 1 :]))
    assert worker.callbacks == entries and worker.origin("callbacks") == GIVEN
    assert not any(a.startswith("callbacks=") for a in worker_args(tmp_path / "w.yaml"))
