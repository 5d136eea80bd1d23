"""compile_model with dynamic shapes (multi-scale training) traces the model once: no restart on module floats."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import compilation_time_metrics

from yolotrain.engine.compile import compile_model
from yolotrain.models.blocks import Conv


@pytest.mark.slow  # a compile: 9 s here
def test_dynamic_compile_does_not_restart_on_module_floats() -> None:
    # BatchNorm's eps and momentum and Upsample's factor are float attributes: unspecialised, each became a
    # symbolic input that AOT autograd specialised by restarting dynamo's analysis ("compile_attempt_1")
    torch._dynamo.reset()
    compilation_time_metrics.clear()
    torch.manual_seed(0)
    block = nn.Sequential(Conv(3, 4, 3), nn.Upsample(scale_factor=2.0, mode="nearest")).train()
    compiled = compile_model(block, "aot_eager", dynamic=True)
    for size in (8, 12):
        out = compiled(torch.randn(2, 3, size, size))
        out.sum().backward()
    assert out.shape == (2, 4, 24, 24)
    attempts = sorted(k for k in compilation_time_metrics if k.startswith("compile_attempt"))
    assert attempts == ["compile_attempt_0"], attempts
