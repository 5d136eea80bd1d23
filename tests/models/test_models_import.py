"""Importing Ultralytics-shaped checkpoints (built here, no ultralytics needed) and safetensors files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from ultralytics_fixtures import write_ultralytics_checkpoint

from yolotrain.checkpoint_file import save_checkpoint
from yolotrain.engine.ckpt_tools import run_ckpt_command
from yolotrain.errors import CheckpointError
from yolotrain.models import build_model
from yolotrain.models.safe_pickle import safe_load
from yolotrain.models.weights_io import load_model_spec, model_from_weights, read_weights


def _randomised(scale: str, nc: int, seed: int) -> torch.nn.Module:
    """A model whose every tensor (BatchNorm statistics included) is distinct, so a misplaced tensor shows."""
    torch.manual_seed(seed)
    m = build_model(scale, nc=nc)
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if v.is_floating_point() and k != "stride":
                v.copy_(torch.rand_like(v) * 0.2 + 0.9 if "running_var" in k else torch.randn_like(v) * 0.1)
    return m.eval()


@pytest.mark.parametrize(("scale", "family", "letter"), [("n", "v8", "n"), ("11n", "11", "n")])
def test_import_gives_identical_outputs(tmp_path, scale, family, letter):
    src = _randomised(scale, nc=3, seed=1)
    names = {0: "cat", 1: "dog", 2: "bird"}
    path = write_ultralytics_checkpoint(tmp_path / "u.pt", src, family, letter, names=names)
    lw = read_weights(path)
    assert lw.kind == "ultralytics"
    assert lw.model_cfg == {"scale": scale, "nc": 3}  # the published architecture resolves to our scale name
    assert lw.names == ["cat", "dog", "bird"] and lw.imgsz == 64
    model = model_from_weights(lw)
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(model(x), src(x)):
            assert torch.equal(a, b)
    assert model.names == ["cat", "dog", "bird"]


def test_ema_preferred_over_model(tmp_path):
    raw, ema = _randomised("n", 2, seed=1), _randomised("n", 2, seed=2)
    path = write_ultralytics_checkpoint(tmp_path / "last.pt", raw, "v8", ema=ema)
    got = read_weights(path).weights["backbone.stem.conv.weight"]
    assert torch.equal(got, ema.state_dict()["backbone.stem.conv.weight"])
    assert torch.equal(
        read_weights(path, prefer_ema=False).weights["backbone.stem.conv.weight"], raw.backbone.stem.conv.weight
    )


def test_architecture_from_tensor_shapes_without_yaml(tmp_path):
    src = _randomised("11s", nc=2, seed=3)
    path = write_ultralytics_checkpoint(tmp_path / "noyaml.pt", src, "11", "s", yaml=None)
    lw = read_weights(path)
    assert lw.model_cfg == {"scale": "11s", "nc": 2}
    assert "tensor shapes" in lw.summary


def test_custom_scale_is_spelled_out(tmp_path):
    src = build_model("custom", nc=2, family="v8", depth=0.33, width=0.125, max_channels=1024).eval()
    yaml = {"nc": 2, "scales": {"t": [0.33, 0.125, 1024]}, "scale": "t"}
    path = write_ultralytics_checkpoint(tmp_path / "t.pt", src, "v8", "t", mutate=lambda t, _: setattr(t, "yaml", yaml))
    cfg = read_weights(path).model_cfg
    assert cfg == {"scale": "custom", "family": "v8", "depth": 0.33, "width": 0.125, "max_channels": 1024, "nc": 2}


def test_extra_tensor_and_shape_difference_are_listed(tmp_path):
    src = build_model("n", nc=2).eval()

    def break_it(tree, _):
        tree.model[0].register_buffer("surprise", torch.zeros(3))  # a tensor with no place here
        tree.model[12].cv1.conv.weight = torch.nn.Parameter(torch.zeros(1, 1, 1, 1))  # another shape

    path = write_ultralytics_checkpoint(tmp_path / "bad.pt", src, "v8", mutate=break_it)
    with pytest.raises(CheckpointError) as e:
        read_weights(path)
    msg = str(e.value)
    assert "\n" not in msg and "bad.pt" in msg
    assert "model.0.surprise" in msg and "1 tensor(s) with no place" in msg
    assert "model.12.cv1.conv.weight -> neck.td4.cv1.conv.weight" in msg


def test_missing_tensor_is_listed(tmp_path):
    src = build_model("n", nc=2).eval()

    def drop(tree, _):
        del tree.model[22].cv3[1][2]._parameters["bias"]  # a class-branch bias missing from the file

    path = write_ultralytics_checkpoint(tmp_path / "short.pt", src, "v8", mutate=drop)
    with pytest.raises(CheckpointError, match=r"1 of ours not in the file \(head\.cls\.1\.2\.bias\)"):
        read_weights(path)


def test_other_architecture_refused_naming_the_layer(tmp_path):
    def swap(tree, fakes):
        tree.model[9].__class__ = fakes.cls("SPP")  # YOLOv5's pooling layer where YOLOv8 has SPPF

    path = write_ultralytics_checkpoint(tmp_path / "spp.pt", build_model("n", nc=2).eval(), "v8", mutate=swap)
    with pytest.raises(CheckpointError, match="layer 9 is SPP, YOLOv8 has SPPF"):
        read_weights(path)

    def segment(tree, fakes):
        tree.__class__ = fakes.cls("SegmentationModel")

    path = write_ultralytics_checkpoint(tmp_path / "seg.pt", build_model("n", nc=2).eval(), "v8", mutate=segment)
    with pytest.raises(CheckpointError, match="holds an Ultralytics SegmentationModel; only DetectionModel"):
        read_weights(path)


def test_load_model_spec_gives_inference_state(tmp_path):
    path = write_ultralytics_checkpoint(tmp_path / "u.pt", build_model("11n", nc=2).eval(), "11")
    model, state = load_model_spec(str(path))
    assert state["config"]["imgsz"] == 64 and state["names"] == ["class0", "class1"]
    assert model.config() == {"scale": "11n", "nc": 2} and not model.training


def test_numpy_scalar_and_namespace_read_as_data(tmp_path):
    path = write_ultralytics_checkpoint(tmp_path / "u.pt", build_model("n", nc=2).eval(), "v8")
    obj = safe_load(path)
    assert obj["best_fitness"] == 0.25 and isinstance(obj["best_fitness"], float)
    assert obj["ema"].get("args").get("imgsz") == 64  # SimpleNamespace subclass kept as an inert record


def test_safetensors_round_trip_from_ultralytics_and_ours(tmp_path):
    src = _randomised("11n", nc=3, seed=4)
    upt = write_ultralytics_checkpoint(tmp_path / "u.pt", src, "11", names={0: "a", 1: "b", 2: "c"})
    ours = tmp_path / "ours.pt"
    save_checkpoint({"model_cfg": src.config(), "names": ["a", "b", "c"], "model": src.state_dict()}, ours)
    x = torch.rand(1, 3, 64, 64)
    half = build_model("11n", nc=3).eval()
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in src.state_dict().items()})
    with torch.no_grad():
        want = half(x)
    for i, source in enumerate((upt, ours)):
        out = tmp_path / f"w{i}.safetensors"
        assert run_ckpt_command(["strip", str(source), str(out), "format=safetensors"]) == 0
        with safe_open(str(out), framework="pt") as f:
            meta = f.metadata()
            assert f.get_tensor("backbone.stem.conv.weight").dtype == torch.float16
        assert json.loads(meta["model_cfg"]) == {"scale": "11n", "nc": 3}
        assert json.loads(meta["names"]) == ["a", "b", "c"]
        model, state = load_model_spec(str(out))
        assert model.names == ["a", "b", "c"]
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(model(x), want))


def test_safetensors_without_our_metadata_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no yolotrain model description"):
        read_weights(tmp_path / "other.safetensors")
    save_file(
        {"w": torch.zeros(2)},
        str(tmp_path / "evil.safetensors"),
        metadata={"format": "yolotrain-weights-1", "model_cfg": json.dumps({"scale": "n", "nc": 10**9})},
    )
    with pytest.raises(CheckpointError, match="'nc'=1000000000 is outside"):
        read_weights(tmp_path / "evil.safetensors")
