"""Refusal of unsafe inputs, through the CLI: old torch, checkpoints without a well-formed integrity record,
and callbacks named by a file (a ``cfg=`` YAML or a checkpoint) rather than by the user."""

import json
import re
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet

from yolotrain.cli import main
from yolotrain.config import GIVEN, parse_cli_args, resolve
from yolotrain.engine.checkpoint import load_checkpoint, save_checkpoint, torch_release
from yolotrain.engine.launch import worker_args
from yolotrain.utils.logging import setup_logging

ROOT = Path(__file__).resolve().parents[2]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- torch floor ---------------------------------------------------------------------------------------


def test_dependency_floor_excludes_torch_with_weights_only_bypasses():
    # the quoted requirement strings of pyproject.toml (no tomllib: Python 3.10 is supported)
    deps = re.findall(r'^\s*"((?:torch|torchvision)[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    spec = {re.match(r"[a-z]+", d)[0]: SpecifierSet(re.sub(r"^[a-z]+", "", d)) for d in deps}
    assert set(spec) == {"torch", "torchvision"}
    # CVE-2025-32434 (fixed 2.6.0) and GHSA-63cw-57p8-fm3p (affected <= 2.9.1, fixed 2.10.0)
    for bad in ("2.1.0", "2.5.1", "2.6.0", "2.9.1"):
        assert bad not in spec["torch"], bad
    assert "2.10.0" in spec["torch"] and "0.24.1" not in spec["torchvision"] and "0.25.0" in spec["torchvision"]
    # the pair the Makefile installs lies inside the declared range
    pin = dict(p.split("==") for p in re.search(r"TORCH_PIN := (.*)", (ROOT / "Makefile").read_text())[1].split())
    assert pin["torch"] in spec["torch"] and pin["torchvision"] in spec["torchvision"]


def test_torch_release_parsing():
    assert torch_release("2.14.1+cu130") == (2, 14)
    assert torch_release("2.10.0a0+git12ab") == (2, 10)
    assert torch_release("2.9.1") < (2, 10) < torch_release("10.0.0")  # compared as numbers, not text


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    path = tmp_path / "c.pt"
    save_checkpoint({"model_cfg": {"scale": "n", "nc": 2}, "w": torch.arange(4.0)}, path)
    return path


@pytest.mark.parametrize("version", ["2.9.1", "2.5.1+cu121", "garbage"])
def test_old_torch_refuses_to_load(ckpt, monkeypatch, capsys, version):
    monkeypatch.setattr(torch, "__version__", version)
    assert main(["ckpt", "info", str(ckpt)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"with torch {version}" in line and "torch>=2.10" in line and str(ckpt) in line


def test_safe_torch_loads(ckpt, monkeypatch, capsys):
    monkeypatch.setattr(torch, "__version__", "2.10.0")
    assert main(["ckpt", "info", str(ckpt), "json=true"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == {"scale": "n", "nc": 2}


# ---- integrity record ----------------------------------------------------------------------------------


def rewrite(path: Path, change) -> Path:
    """Re-save ``path`` with plain torch.save after ``change(state)`` (what an older writer or a forger does)."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda s: s.pop("integrity"), "has no integrity record"),
        (lambda s: s.__setitem__("integrity", "abc"), "integrity record is malformed"),
        (lambda s: s.__setitem__("integrity", None), "integrity record is malformed"),
        (lambda s: s.__setitem__("integrity", {"md5": "x"}), "integrity record is malformed"),
        (lambda s: s.__setitem__("integrity", {"sha256": 12}), "integrity record is malformed"),
        (lambda s: s.__setitem__("integrity", {"sha256": "ab" * 31}), "integrity record is malformed"),
        (lambda s: s["w"].add_(1), "does not match the recorded SHA-256"),
    ],
)
def test_checkpoint_without_good_integrity_is_refused(ckpt, capsys, change, expect):
    rewrite(ckpt, change)
    for cmd in (["ckpt", "info", str(ckpt)], ["val", f"model={ckpt}"]):
        assert main(cmd) == 2
        line = one_error_line(capsys.readouterr().err)
        assert expect in line and str(ckpt) in line


def test_old_checkpoint_is_resaved_only_with_trust(ckpt, tmp_path, capsys):
    rewrite(ckpt, lambda s: s.pop("integrity"))  # as written before the record was mandatory
    main(["ckpt", "info", str(ckpt)])
    hint = one_error_line(capsys.readouterr().err)
    assert f"yolotrain ckpt resave {ckpt} NEW.pt trust=true" in hint
    new = tmp_path / "new.pt"
    assert main(["ckpt", "resave", str(ckpt), str(new)]) == 2  # no trust=true: still refused
    assert "no integrity record" in one_error_line(capsys.readouterr().err) and not new.exists()
    assert main(["ckpt", "resave", str(ckpt), str(new), "trust=true"]) == 0
    state = load_checkpoint(new)  # loads without trust, and its digest now guards it
    assert torch.equal(state["w"], torch.arange(4.0)) and state["model_cfg"] == {"scale": "n", "nc": 2}
    rewrite(new, lambda s: s["w"].add_(1))
    assert main(["ckpt", "info", str(new)]) == 2
    assert "SHA-256" in capsys.readouterr().err


def test_trust_does_not_excuse_a_wrong_digest(ckpt, tmp_path, capsys):
    rewrite(ckpt, lambda s: s["w"].add_(1))
    assert main(["ckpt", "resave", str(ckpt), str(tmp_path / "n.pt"), "trust=true"]) == 2
    assert "SHA-256" in capsys.readouterr().err


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
