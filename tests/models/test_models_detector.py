"""Detector construction, output shapes, registry and summary."""

from __future__ import annotations

import math

import pytest
import torch

from yolotrain.errors import ConfigError
from yolotrain.models import Detector, available_scales, build_model, model_info
from yolotrain.models.blocks import DFL
from yolotrain.models.info import format_info


@pytest.mark.parametrize("scale", available_scales())
def test_forward_shapes_every_scale(scale: str) -> None:
    nc = 3
    model = build_model(scale, nc=nc).eval()
    assert isinstance(model, Detector)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert len(out) == 3
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    for t, s in zip(out, model.stride.tolist()):
        assert t.shape == (1, 4 * model.reg_max + nc, 64 // int(s), 64 // int(s))
        assert torch.isfinite(t).all()


def test_rectangular_input() -> None:
    model = build_model("n", nc=2).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert [tuple(t.shape[-2:]) for t in out] == [(8, 12), (4, 6), (2, 3)]


def test_registered_scales() -> None:
    assert available_scales() == ["n", "s", "m", "l", "x", "11n", "11s", "11m", "11l", "11x"]


def test_param_count_n80_matches_reference() -> None:
    params = sum(p.numel() for p in build_model("n", nc=80).parameters())
    # Reference YOLOv8n: 3,157,200 (that count includes 16 frozen DFL weights kept outside our model).
    assert abs(params - 3_157_200) / 3_157_200 < 0.05
    assert params == 3_157_184


def test_unknown_scale_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="allowed: n, s, m, l, x, 11n"):
        build_model("q", nc=80)
    with pytest.raises(ConfigError, match="nc"):
        build_model("n", nc=0)


def test_stride_buffer_round_trips_state_dict() -> None:
    model = build_model("n", nc=2)
    sd = model.state_dict()
    assert "stride" in sd
    sd["stride"] = torch.tensor([4.0, 8.0, 16.0])  # a value the constructor would never produce
    other = build_model("n", nc=2)
    other.load_state_dict(sd)
    assert other.stride.tolist() == [4.0, 8.0, 16.0]


def test_config_rebuilds_same_architecture() -> None:
    model = build_model("s", nc=5)
    assert model.config() == {"scale": "s", "nc": 5}
    rebuilt = build_model(**model.config())
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    assert (rebuilt.nc, rebuilt.scale) == (5, "s")


def test_submodule_names_for_freezing() -> None:
    model = build_model("n", nc=2)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"backbone", "neck", "head"}


def test_input_not_multiple_of_32_raises() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model("n", nc=2)(torch.rand(1, 3, 48, 64))


def test_head_bias_prior() -> None:
    nc = 80
    head = build_model("n", nc=nc).head
    for box, cls, s in zip(head.box, head.cls, (8, 16, 32)):
        assert torch.allclose(box[-1].bias, torch.ones_like(box[-1].bias))
        expected = math.log(5 / nc / (640 / s) ** 2)
        assert torch.allclose(cls[-1].bias, torch.full_like(cls[-1].bias, expected))


def test_dfl_is_expectation_over_bins() -> None:
    dfl = DFL(16)
    assert not any(p.requires_grad for p in dfl.parameters())
    logits = torch.full((1, 64, 2), -30.0)
    targets = torch.tensor([[3, 0], [7, 15], [0, 1], [12, 5]])  # (side, anchor) -> bin
    for side in range(4):
        for a in range(2):
            logits[0, side * 16 + targets[side, a], a] = 30.0
    assert torch.allclose(dfl(logits)[0], targets.float(), atol=1e-4)


def test_model_info_n() -> None:
    model = build_model("n", nc=80)
    model.head.requires_grad_(False)
    info = model_info(model, imgsz=320)
    assert info["params"] == 3_157_184
    assert info["gradients"] == info["params"] - sum(p.numel() for p in model.head.parameters())
    assert info["layers"] > 100
    # 8.7 GFLOPs at 640 -> a quarter of that at 320 (FLOPs scale with pixel count).
    assert info["gflops"] == pytest.approx(8.7 / 4, rel=0.05)
    assert model.training  # restored after the FLOP count
    line = format_info(info)
    assert "3,157,184 parameters" in line and "\n" not in line
