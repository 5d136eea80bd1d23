"""Shared fixtures: a tiny generated dataset, made once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny demo-style dataset (shapes, 4 classes): 24 train / 8 val images of 64 px."""
    from yolotrain.data import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("tiny") / "shapes", n_train=24, n_val=8, size=64)


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """A 2-epoch run on :func:`tiny_data`, shared by the tests that only read its outputs."""
    from yolotrain.cli import main

    project = tmp_path_factory.mktemp("runs")
    code = main(
        [
            "train",
            f"data={tiny_data}",
            "model=n",
            "epochs=2",
            "imgsz=64",
            "batch=8",
            "workers=0",
            f"project={project}",
            "name=exp",
            "verbose=false",
        ]
    )
    assert code == 0
    return project / "exp"
