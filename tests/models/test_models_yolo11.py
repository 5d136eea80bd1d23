"""The YOLO11 family and the model-config validation shared by both families."""

from __future__ import annotations

import pytest
import torch

from yolotrain.errors import ConfigError
from yolotrain.models import build_model, model_info
from yolotrain.models.blocks11 import C2PSA, Attention, C3k, C3k2
from yolotrain.models.registry import validate_model_cfg

# Published parameter counts (the Ultralytics yaml summaries) minus the 16 fixed DFL bin values, which
# our model does not hold (decoding computes them): "gradients" in those summaries.
PUBLISHED_PARAMS = {
    "n": 3_157_184,
    "s": 11_166_544,
    "m": 25_902_624,
    "l": 43_691_504,
    "x": 68_229_632,
    "11n": 2_624_064,
    "11s": 9_458_736,
    "11m": 20_114_672,
    "11l": 25_372_144,
    "11x": 56_966_160,
}


@pytest.mark.parametrize("scale", list(PUBLISHED_PARAMS))
def test_param_counts_match_published(scale: str) -> None:
    with torch.device("meta"):  # counts only: nothing is allocated
        model = build_model(scale, nc=80)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[scale]


@pytest.mark.parametrize(("scale", "gflops"), [("11n", 6.5), ("n", 8.7)])
def test_info_gflops_match_published_at_640(scale: str, gflops: float) -> None:
    # Published: YOLO11n 2.6M / 6.5 GFLOPs, YOLOv8n 3.2M / 8.7 GFLOPs at 640 (fused model, conv FLOPs).
    info = model_info(build_model(scale, nc=80), imgsz=640)
    assert round(info["gflops"], 1) == gflops
    assert round(info["params"] / 1e6, 1) == {"11n": 2.6, "n": 3.2}[scale]


def test_yolo11_structure() -> None:
    m = build_model("11n", nc=80)
    assert m.family == "11"
    assert isinstance(m.backbone.stage5[3], C2PSA)  # attention after SPPF
    # stage2 block: 256 * 0.25 = 64 channels out, halves of e=0.25 -> 16 channels each.
    assert isinstance(m.backbone.stage2[1], C3k2) and m.backbone.stage2[1].c == 16
    # n uses plain bottlenecks in the shallow stages, C3k in the deep ones and in the last neck block.
    assert not isinstance(m.backbone.stage2[1].m[0], C3k)
    assert isinstance(m.backbone.stage4[1].m[0], C3k) and isinstance(m.neck.bu5.m[0], C3k)
    assert not isinstance(m.neck.td4.m[0], C3k)
    # m/l/x use C3k everywhere.
    with torch.device("meta"):
        big = build_model("11m", nc=80)
    assert isinstance(big.backbone.stage2[1].m[0], C3k) and isinstance(big.neck.td4.m[0], C3k)
    # Depthwise class branch: the first conv of each level has one group per channel.
    first = m.head.cls[0][0][0].conv
    assert first.groups == first.in_channels == 64


def test_yolo11_forward_and_backward() -> None:
    m = build_model("11n", nc=3)
    out = m(torch.rand(2, 3, 64, 96))
    assert [tuple(t.shape) for t in out] == [(2, 67, 8, 12), (2, 67, 4, 6), (2, 67, 2, 3)]
    sum(t.mean() for t in out).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_attention_matches_hand_written_softmax_attention() -> None:
    torch.manual_seed(0)
    att = Attention(64, num_heads=2, attn_ratio=0.5).eval()
    x = torch.randn(1, 64, 3, 4)
    # Independent reference: per head, softmax(q^T k / sqrt(dk)) applied to v, written with einsum.
    qkv = att.qkv(x).view(1, 2, 16 + 16 + 32, 12)
    q, k, v = qkv[:, :, :16], qkv[:, :, 16:32], qkv[:, :, 32:]
    w = torch.einsum("bhdn,bhdm->bhnm", q, k) / 4.0  # key_dim 16 -> scale 1/4
    ref = torch.einsum("bhdm,bhnm->bhdn", v, w.softmax(-1)).reshape(1, 64, 3, 4)
    ref = att.proj(ref + att.pe(v.reshape(1, 64, 3, 4)))
    assert torch.allclose(att(x), ref, atol=1e-5)


def test_config_round_trip_custom_architecture() -> None:
    m = build_model("custom", nc=4, family="11", depth=0.5, width=0.125, max_channels=1024)
    cfg = m.config()
    assert cfg == {
        "scale": "custom",
        "family": "11",
        "depth": 0.5,
        "width": 0.125,
        "max_channels": 1024,
        "c3k": False,
        "nc": 4,
    }
    again = build_model(**cfg)
    again.load_state_dict(m.state_dict())
    # An architecture equal to a registered scale resolves to its name.
    assert build_model("custom", nc=4, family="11", depth=0.5, width=0.25, max_channels=1024).scale == "11n"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"scale": "n", "nc": 3, "colour": "red"}, "unknown key.*'colour'"),
        ({"scale": "q", "nc": 3}, "unknown scale 'q'"),
        ({"scale": "n", "nc": 0}, "'nc'=0 is outside"),
        ({"scale": "n", "nc": 10**9}, "'nc'=1000000000 is outside"),
        ({"scale": "n", "nc": "80"}, "'nc' must be an integer"),
        ({"scale": "custom", "family": "v9", "depth": 1, "width": 1, "max_channels": 512}, "'family' must be"),
        ({"scale": "custom", "family": "v8", "depth": 1.0, "width": 100.0, "max_channels": 512}, "'width'=100.0"),
        ({"scale": "custom", "family": "v8", "depth": 4.0, "width": 4.0, "max_channels": 8192}, "G parameters"),
        ({"scale": "n", "nc": 3, "family": "11"}, "scale 'n' is"),
        ({"scale": "custom", "family": "v8", "depth": 1, "width": 1, "max_channels": 512, "c3k": True}, "'c3k'"),
    ],
)
def test_validate_model_cfg_refuses_with_one_line(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        validate_model_cfg(cfg, where="file.pt")
    assert "\n" not in str(e.value) and str(e.value).startswith("file.pt: ")
