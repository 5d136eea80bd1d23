"""Loading checkpoints safely, through the CLI: torch releases that can bypass ``weights_only`` are refused,
and so is a checkpoint without a well-formed integrity record (engine/checkpoint.py)."""

import json
import re
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet

from yolotrain.checkpoint_file import load_checkpoint, save_checkpoint, torch_release
from yolotrain.cli import main

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
