"""The tune command's inputs, without training: search spaces, tune keys, the settings check, the study guard."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from yolotrain.config import SETTINGS, resolve
from yolotrain.errors import ConfigError
from yolotrain.tune.options import split_options
from yolotrain.tune.runner import lr0_effective
from yolotrain.tune.space import DEFAULT_SPACE, SettingsNotApplied, check_applied, load_space, parse_space
from yolotrain.tune.study import make_pruner, open_study


def _space_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, words",
    [
        ("lr00: [0.001, 0.1]\n", ["space.yaml", "unknown setting 'lr00'", "did you mean 'lr0'"]),
        ("epochs: [1, 5]\n", ["space.yaml", "'epochs'", "cannot be tuned"]),
        ("lr0: [0.1, 0.001]\n", ["'lr0'", "low 0.1 must be less than high 0.001"]),
        ("fliplr: [0.0, 1.5]\n", ["'fliplr'", "out of range", "[0, 1]"]),
        ("lr0: {low: 0, high: 0.1, log: true}\n", ["'lr0'", "log range needs low > 0"]),
        ("lr0: {low: 0.001, hi: 0.1}\n", ["'lr0'", "needs low and high"]),
        ("lr0: [0.001, 0.01, 0.1]\n", ["'lr0'", "[low, high]"]),
        ("lr0: 0.01\n", ["'lr0'", "expected [low, high]"]),
        ("optimizer: [SGD, Adam]\n", ["'optimizer'", "not a number", "choices"]),
        ("optimizer: {choices: [SGD, Lion]}\n", ["'optimizer'", "'Lion'", "not allowed"]),
        ("close_mosaic: {low: 0, high: 10, step: 0.5}\n", ["'close_mosaic'", "whole number"]),
        ("- lr0\n", ["must hold a non-empty mapping"]),
        ("lr0: [0.001, 0.1\n", ["not valid YAML"]),
    ],
)
def test_bad_space_file_is_one_line_naming_file_and_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_space(_space_file(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="space file .*nope.yaml' does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_space_file_forms_and_sampling(tmp_path):
    space = load_space(
        _space_file(
            tmp_path,
            "lr0: {low: 1.0e-4, high: 0.1, log: true}\n"
            "momentum: [0.8, 0.98]\n"
            "close_mosaic: {low: 0, high: 10, step: 2}\n"
            "optimizer: {choices: [SGD, AdamW]}\n",
        )
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(30):
        t = study.ask()
        seen.append({k: d.suggest(t) for k, d in space.items()})
        study.tell(t, 0.0)
    assert all(1e-4 <= s["lr0"] <= 0.1 for s in seen)
    assert all(0.8 <= s["momentum"] <= 0.98 for s in seen)
    assert {s["close_mosaic"] for s in seen} <= {0, 2, 4, 6, 8, 10}
    assert space["close_mosaic"].contains(4) and not space["close_mosaic"].contains(3)  # on the grid only
    assert all(isinstance(s["close_mosaic"], int) for s in seen)
    assert {s["optimizer"] for s in seen} == {"SGD", "AdamW"}
    # log-uniform: about half the draws of 30 below sqrt(1e-4 * 0.1) = 0.00316; uniform would give ~3%
    assert sum(s["lr0"] < 0.00316 for s in seen) >= 8
    dist = study.trials[0].distributions["lr0"]
    assert dist.log and dist.low == 1e-4 and dist.high == 0.1


def test_default_space_holds_every_default_and_augmentation():
    space = parse_space(DEFAULT_SPACE)
    augmentation = {"hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "fliplr", "mosaic"}
    wanted = {"lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "box", "cls", "dfl"} | augmentation
    assert wanted <= set(space)
    for key, dim in space.items():  # trial 0 can be the defaults: each default lies inside its range
        assert dim.contains(SETTINGS[key].default), key
    assert not space["lr0"].contains(0.5) and not space["fliplr"].contains(-0.1)


def test_tune_keys_split_from_settings_and_checked():
    opts, rest = split_options({"trials": "7", "pruner": "halving", "budget": "0.5", "epochs": "3", "lr0": "0.02"})
    assert (opts.trials, opts.pruner, opts.budget, opts.baseline) == (7, "halving", 0.5, True)
    assert rest == {"epochs": "3", "lr0": "0.02"}
    with pytest.raises(ConfigError, match="unknown setting 'trails'; did you mean 'trials'"):
        split_options({"trails": "3"})
    with pytest.raises(ConfigError, match="unknown setting 'ephocs'; did you mean 'epochs'"):
        split_options({"ephocs": "3"})
    with pytest.raises(ConfigError, match="'pruner'='hyper' is not allowed"):
        split_options({"pruner": "hyper"})
    with pytest.raises(ConfigError, match="'trials'='0' is out of range"):
        split_options({"trials": "0"})
    with pytest.raises(ConfigError, match="'budget'='soon' has the wrong type"):
        split_options({"budget": "soon"})


def test_settings_check_reads_args_yaml(tmp_path):
    args = tmp_path / "args.yaml"
    args.write_text(yaml.safe_dump({"lr0": 0.0123, "degrees": 0, "optimizer": "SGD", "close_mosaic": 4}))
    check_applied({"lr0": 0.0123, "degrees": 0.0, "optimizer": "SGD", "close_mosaic": 4}, args)  # equal
    with pytest.raises(SettingsNotApplied, match="'lr0': tune asked for 0.0124 but the run trained with 0.0123"):
        check_applied({"lr0": 0.0124}, args)
    with pytest.raises(SettingsNotApplied, match="'optimizer'"):
        check_applied({"optimizer": "AdamW"}, args)
    with pytest.raises(SettingsNotApplied, match="'mosaic'.*<missing>"):
        check_applied({"mosaic": 0.5}, args)
    with pytest.raises(SettingsNotApplied, match="no .*nothere"):
        check_applied({"lr0": 0.0123}, tmp_path / "nothere" / "args.yaml")


def test_continuing_a_study_with_other_settings_is_refused(tmp_path):
    about = {"settings": {"epochs": 30, "data": "a.yaml"}, "space": {"lr0": {"low": 0.001, "high": 0.1}}}
    pruner = make_pruner("median", 1)
    open_study(tmp_path, None, "s", pruner, 5, about)
    open_study(tmp_path, None, "s", pruner, 5, about)  # the same: continues
    other = {**about, "settings": {"epochs": 20, "data": "a.yaml"}}
    with pytest.raises(ConfigError, match="study 's'.*was started with epochs=30, not epochs=20.*name="):
        open_study(tmp_path, None, "s", pruner, 5, other)
    with pytest.raises(ConfigError, match="another search space"):
        open_study(tmp_path, None, "s", pruner, 5, {**about, "space": {"lr0": {"low": 0.001, "high": 0.2}}})


@pytest.mark.parametrize("name", ["median", "halving"])
def test_pruner_waits_prune_warmup_epochs_then_stops_a_bad_trial(name):
    study = optuna.create_study(direction="maximize", pruner=make_pruner(name, warmup=1))
    for _ in range(3):  # good trials, mAP 0.5 at every epoch, asking the pruner as the tuner does
        t = study.ask()
        for epoch in (1, 2, 3):
            t.report(0.5, epoch)
            assert not t.should_prune()
        study.tell(t, 0.5)
    bad = study.ask()
    bad.report(0.01, 1)
    assert not bad.should_prune()  # epoch 1 <= prune_warmup: never pruned
    bad.report(0.01, 2)
    assert bad.should_prune()
    good = study.ask()
    good.report(0.9, 1)
    good.report(0.9, 2)
    assert not good.should_prune()
    assert not make_pruner("none", 0).prune(study, study.trials[-2])


def test_rdb_url_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    about = {"settings": {"epochs": 3}, "space": {}}
    open_study(tmp_path, url, "rdb", make_pruner("median", 1), 5, about)
    assert (tmp_path / "tune.db").is_file() and not (tmp_path / "study.journal").exists()
    assert optuna.load_study(study_name="rdb", storage=url).user_attrs["about"] == about


def test_tuning_lr0_never_runs_under_optimizer_auto():
    # optimizer=auto picks its own lr for short runs: lr0 would be sampled and silently ignored
    space = parse_space({"lr0": [1e-4, 0.1], "mosaic": [0.0, 1.0]})
    assert lr0_effective({"epochs": 3}, space, resolve({"epochs": 3})) == {"epochs": 3, "optimizer": "SGD"}
    given = {"epochs": 3, "optimizer": "AdamW"}
    assert lr0_effective(given, space, resolve(given)) == given
    no_lr = parse_space({"mosaic": [0.0, 1.0]})
    assert lr0_effective({"epochs": 3}, no_lr, resolve({"epochs": 3})) == {"epochs": 3}
