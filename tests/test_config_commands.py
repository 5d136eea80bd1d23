"""Each setting declares its help, the commands that accept it and what resume does with it; help reads them."""

import pytest

from yolotrain.cli import main
from yolotrain.config import COMMANDS, KEPT, MAY_CHANGE, ON_RESUME, REFUSED, SETTINGS, TRAIN, Setting, resolve
from yolotrain.config_help import describe, help_text, reference_markdown
from yolotrain.engine.resume import INCOMPATIBLE, OVERRIDABLE
from yolotrain.errors import ConfigError


def test_every_setting_has_help_commands_and_a_resume_rule():
    for name, s in SETTINGS.items():
        assert s.help.strip(), f"setting '{name}' has no help text"
        assert "\n" not in s.help, f"setting '{name}': help must be one line"
        assert s.commands and set(s.commands) <= set(COMMANDS), f"setting '{name}': commands {s.commands}"
        # tune trains: whatever train accepts, tune accepts, and nothing else
        assert ("train" in s.commands) == ("tune" in s.commands), f"setting '{name}': train and tune differ"
        assert s.on_resume in ON_RESUME, f"setting '{name}': on_resume {s.on_resume!r}"
        # the settings reference shows a check's docstring as what the setting allows
        assert s.check is None or (s.check.__doc__ or "").strip(), f"setting '{name}': its check has no docstring"


def test_a_new_setting_defaults_to_a_training_setting_kept_on_resume():
    s = Setting(1, "int", "how often")
    assert s.commands == TRAIN == ("train", "tune") and s.on_resume == KEPT


def test_resume_rules_are_the_declared_ones():
    # the settings the resume code lets change or refuses, written out by hand from the list
    assert {"epochs", "device", "workers", "verbose", "callbacks", "patience", "save_signal"} <= OVERRIDABLE
    assert set(INCOMPATIBLE) == {"data", "model", "imgsz", "batch"}
    assert {"lr0", "mosaic", "seed", "amp"}.isdisjoint(OVERRIDABLE | set(INCOMPATIBLE))
    assert SETTINGS["lr0"].on_resume == KEPT and SETTINGS["imgsz"].on_resume == REFUSED
    assert SETTINGS["epochs"].on_resume == MAY_CHANGE


def test_a_setting_another_command_reads_is_refused_naming_those_that_accept_it():
    with pytest.raises(ConfigError) as e:
        resolve({"model": "n", "source": "x.jpg", "mosaic": 0.5}, command="predict")
    assert str(e.value) == "setting 'mosaic' is not used by predict; it is accepted by train, tune"
    with pytest.raises(ConfigError, match="setting 'source' is not used by train; it is accepted by predict$"):
        resolve({"source": "x.jpg"}, command="train")
    # what each command reads is accepted; no command given: no check (internal callers, resume)
    assert resolve({"source": "x.jpg", "conf": 0.3, "imgsz": 64}, command="predict").conf == 0.3
    assert resolve({"split": "val", "ap_style": "ultralytics"}, command="val").split == "val"
    assert resolve({"mosaic": 0.5, "source": "x.jpg"}).mosaic == 0.5


def test_cfg_file_keys_for_other_commands_are_left_alone(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("mosaic: 0.25\nconf: 0.4\n")  # one file for train and predict
    assert resolve({"cfg": str(cfg), "source": "x.jpg"}, command="predict").conf == pytest.approx(0.4)


def test_cli_predict_mosaic_is_one_line(capsys):
    assert main(["predict", "model=n", "source=x.jpg", "mosaic=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: setting 'mosaic' is not used by predict; it is accepted by train, tune"


def test_tune_refuses_a_predict_setting():
    from yolotrain.tune.options import split_options

    with pytest.raises(ConfigError, match="setting 'source' is not used by tune"):
        split_options({"trials": 2, "source": "x.jpg"})


def test_help_lists_a_commands_settings_and_one_setting_in_full(capsys):
    assert main(["help", "predict"]) == 0
    out = capsys.readouterr().out
    assert "\n  source " in out and "\n  conf " in out and "\n  mosaic " not in out
    assert main(["help", "mosaic"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "mosaic: mosaic probability"
    assert "  allowed    0 .. 1" in out and "  commands   train, tune" in out and "  on resume  kept" in out
    assert main(["help", "nosuch"]) == 2
    assert "'help nosuch'" in capsys.readouterr().err
    assert "mosaic probability" in help_text() and "mosaic probability" not in help_text("export")


def test_describe_renders_types_defaults_and_choices():
    d = describe("cache")
    assert (d.type, d.default, d.allowed, d.commands, d.on_resume) == (
        "text",
        "off",
        "off, ram, disk",
        "train, tune, val",
        "kept",
    )
    d = describe("compile")
    assert d.allowed == "off, inductor, aot_eager, eager (true = inductor, false = off)"
    d = describe("conf")
    assert (d.default, d.allowed) == ("null", "0 .. 1, null")
    d = describe("epochs")
    assert (d.type, d.default, d.allowed, d.on_resume) == ("int", "100", "1 .. 100000", "may change")
    assert describe("source").on_resume == "-"  # predict only: resume has no say
    assert describe("fraction").allowed == "a share of the train split in (0, 1]"  # the check's docstring
    assert describe("device").allowed.startswith("cpu, mps, cuda, a GPU index")


def test_reference_page_has_one_row_per_setting():
    page = reference_markdown()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(SETTINGS)
    assert "| `mosaic` | float | `1` | 0 .. 1 | train, tune | kept | mosaic probability |" in rows
