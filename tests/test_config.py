"""Settings: merging, type coercion, validation messages."""

import pytest

from yolotrain.config import DEMO_DEFAULTS, SETTINGS, coerce, parse_cli_args, resolve
from yolotrain.errors import ConfigError


def test_defaults_and_overrides():
    cfg = resolve({"data": "d.yaml", "epochs": "5", "lr0": "0.02", "cos_lr": "true", "device": "cpu"})
    assert cfg.epochs == 5 and isinstance(cfg.epochs, int)
    assert cfg.lr0 == pytest.approx(0.02)
    assert cfg.cos_lr is True
    assert cfg.imgsz == SETTINGS["imgsz"].default
    assert cfg.explicit == {"data", "epochs", "lr0", "cos_lr", "device"}


def test_demo_defaults_only_fill_unset_keys():
    cfg = resolve({"epochs": 3})
    assert cfg.data is None
    assert cfg.epochs == 3
    assert cfg.imgsz == DEMO_DEFAULTS["imgsz"]


def test_cli_forms():
    assert parse_cli_args(["epochs=3", "--imgsz", "320", "--cos_lr", "--batch=4"]) == {
        "epochs": "3",
        "imgsz": "320",
        "cos_lr": "true",
        "batch": "4",
    }
    assert parse_cli_args(["--exist-ok"]) == {"exist_ok": "true"}
    with pytest.raises(ConfigError, match="not of the form"):
        parse_cli_args(["epochs"])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        resolve({"epoch": 3})


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("epochs", "ten", "wrong type"),
        ("epochs", "0", "out of range"),
        ("epochs", "2.5", "wrong type"),
        ("lr0", "nan", "out of range"),
        ("fliplr", "1.5", "out of range"),
        ("optimizer", "Adagrad", "not allowed.*SGD"),
        ("cos_lr", "maybe", "true or false"),
        ("device", "gpu", "not valid"),
        ("batch", "null", "must not be empty"),
    ],
)
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match) as e:
        coerce(key, value)
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


def test_case_insensitive_choices():
    assert coerce("optimizer", "adamw") == "AdamW"


def test_cfg_yaml_then_cli(tmp_path):
    y = tmp_path / "my.yaml"
    y.write_text("epochs: 7\nimgsz: 320\n")
    cfg = resolve({"cfg": str(y), "imgsz": "128", "data": "x.yaml"})
    assert cfg.epochs == 7 and cfg.imgsz == 128
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 7\n")
    with pytest.raises(ConfigError, match="epochz.*epochs"):
        resolve({"cfg": str(bad)})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({"cfg": str(tmp_path / "missing.yaml")})
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve({"cfg": str(lst)})


def test_dump_round_trip(tmp_path):
    cfg = resolve({"data": "d.yaml", "epochs": 4})
    cfg.dump(tmp_path / "args.yaml")
    again = resolve({"cfg": str(tmp_path / "args.yaml")})
    assert again.to_dict() == cfg.to_dict()


def test_setattr_validates():
    cfg = resolve({"data": "d.yaml"})
    with pytest.raises(ConfigError):
        cfg.epochs = -1
    with pytest.raises(ConfigError, match="unknown"):
        cfg.nonsense = 1
