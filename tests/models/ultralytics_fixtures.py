"""Build files shaped like Ultralytics checkpoints, without ultralytics.

A real ``yolov8n.pt``/``yolo11n.pt`` is ``torch.save`` of a dict whose ``model``/``ema`` is a pickled
``ultralytics.nn.tasks.DetectionModel``: a module tree whose own classes live under ``ultralytics.nn.*``
(``Conv``, ``C2f``, ``C3k2``, ``C2PSA``, ``Detect``, ...) and whose leaves are torch's ``Conv2d``,
``BatchNorm2d``, ... Here the tree is made from one of our models: each submodule's class is swapped for
a same-named class registered for the duration of the save under the Ultralytics module path, the layers
are laid out in the yaml's order (``model.0`` ... with ``Upsample``/``Concat`` layers between), and the
head becomes a ``Detect`` with ``cv2`` (box) / ``cv3`` (class) / ``dfl``. Loading it with plain pickle
would need those classes; our importer must not.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolotrain.models.blocks import DFL

_HOMES = {
    "Conv": "ultralytics.nn.modules.conv",
    "Concat": "ultralytics.nn.modules.conv",
    "Detect": "ultralytics.nn.modules.head",
    "DetectionModel": "ultralytics.nn.tasks",
    "SegmentationModel": "ultralytics.nn.tasks",
    "IterableSimpleNamespace": "ultralytics.utils",
}
_BLOCK_HOME = "ultralytics.nn.modules.block"
_OURS = ("Bottleneck", "C2f", "SPPF", "DFL", "C3k", "C3k2", "Attention", "PSABlock", "C2PSA")


class FakeModules:
    """Registers fake ``ultralytics.*`` modules in ``sys.modules`` while in use, removes them after."""

    def __init__(self) -> None:
        self.classes: dict[str, type] = {}
        self.modules: dict[str, types.ModuleType] = {}

    def cls(self, name: str, base: type = nn.Module, attrs: dict | None = None) -> type:
        home = _HOMES.get(name, _BLOCK_HOME)
        if name not in self.classes:
            self.classes[name] = type(name, (base,), {"__module__": home, **(attrs or {})})
        return self.classes[name]

    def add(self, home: str, name: str, obj) -> None:
        """Make ``obj`` (a function) picklable as ``home.name``."""
        obj.__module__, obj.__qualname__, obj.__name__ = home, name, name
        self._module(home).__dict__[name] = obj

    def _module(self, home: str) -> types.ModuleType:
        parts = home.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod not in self.modules:
                self.modules[mod] = types.ModuleType(mod)
        return self.modules[home]

    def __enter__(self) -> FakeModules:
        return self

    def register(self) -> None:
        for name, c in self.classes.items():
            self._module(c.__module__).__dict__.setdefault(name, c)
        self._saved = {k: sys.modules.get(k) for k in self.modules}
        sys.modules.update(self.modules)

    def __exit__(self, *exc) -> None:
        for k, old in getattr(self, "_saved", {}).items():
            if old is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = old


def _swap_classes(module: nn.Module, fakes: FakeModules) -> None:
    for m in module.modules():
        name = type(m).__name__
        if name in _OURS or name == "Conv":
            m.__class__ = fakes.cls(name)


def layers_of(model: nn.Module, fakes: FakeModules) -> list[nn.Module]:
    """Our detector's modules in the Ultralytics yaml order, with Upsample/Concat layers and a Detect head."""
    b, n, h = model.backbone, model.neck, model.head
    concat = fakes.cls("Concat")
    backbone = [b.stem, b.stage2[0], b.stage2[1], b.stage3[0], b.stage3[1], b.stage4[0], b.stage4[1], b.stage5[0]]
    backbone += list(b.stage5[1:])  # C2f/C3k2, SPPF (and C2PSA for YOLO11)
    neck = [nn.Upsample(None, 2, "nearest"), concat(), n.td4, nn.Upsample(None, 2, "nearest"), concat(), n.td3]
    neck += [n.down3, concat(), n.bu4, n.down4, concat(), n.bu5]
    detect = fakes.cls("Detect")()
    detect.cv2, detect.cv3, detect.dfl = h.box, h.cls, DFL(16)
    detect.nc, detect.reg_max, detect.end2end, detect.stride = h.nc, 16, False, torch.tensor([8.0, 16.0, 32.0])
    return [*backbone, *neck, detect]


def ultralytics_tree(model: nn.Module, fakes: FakeModules, yaml: dict | None, names: dict, froms: list) -> nn.Module:
    """A DetectionModel-like module tree holding a copy of ``model``'s weights."""
    ours = copy.deepcopy(model)
    layers = layers_of(ours, fakes)
    for i, (layer, f) in enumerate(zip(layers, froms)):
        layer.i, layer.f, layer.type = i, f, type(layer).__name__
    _swap_classes(nn.ModuleList(layers), fakes)
    dm = fakes.cls("DetectionModel")()
    dm.model = nn.Sequential(*layers)
    dm.yaml, dm.names, dm.nc, dm.inplace, dm.end2end = yaml, names, model.nc, True, False
    dm.stride = torch.tensor([8.0, 16.0, 32.0])
    dm.save = [4, 6, 10]
    ns = fakes.cls("IterableSimpleNamespace", types.SimpleNamespace)
    dm.args = ns(imgsz=64, task="detect")
    return dm


V8_FROM = [-1] * 10 + [-1, [-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 12], -1, -1, [-1, 9], -1, [15, 18, 21]]
Y11_FROM = [-1] * 11 + [-1, [-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 13], -1, -1, [-1, 10], -1, [16, 19, 22]]


def yaml_for(family: str, scale: str) -> dict:
    """The parts of a published yaml dict the importer reads (the real one also lists the layers)."""
    scales = {
        "v8": {"n": [0.33, 0.25, 1024], "s": [0.33, 0.50, 1024]},
        "11": {"n": [0.50, 0.25, 1024], "s": [0.50, 0.50, 1024], "m": [0.50, 1.00, 512]},
    }[family]
    return {
        "nc": 80,
        "scales": scales,
        "scale": scale,
        "yaml_file": f"yolo{'v8' if family == 'v8' else '11'}{scale}.yaml",
    }


def write_ultralytics_checkpoint(
    path: Path,
    model: nn.Module,
    family: str,
    scale: str = "n",
    names: dict | None = None,
    ema: nn.Module | None = None,
    yaml: dict | None | bool = True,
    extra: dict | None = None,
    mutate=None,
    fakes_out: list | None = None,
) -> Path:
    """Save ``model`` as an Ultralytics-style checkpoint: ``{'model': None, 'ema': DetectionModel, ...}``.

    Args:
        path: Where to write.
        model: Our detector whose weights go in.
        family: ``"v8"`` or ``"11"``.
        scale: The yaml's scale letter.
        names: ``{index: name}``; default ``{i: f"class{i}"}``.
        ema: A second detector saved as ``ema`` (then ``model`` holds ``model``); default: ``model`` as
            ``ema`` and ``model`` None, as a stripped ``best.pt``.
        yaml: True for the published yaml dict, None/False to leave the yaml out.
        extra: More top-level keys (hostile payloads).
        mutate: ``f(tree, fakes)`` applied to the DetectionModel tree before saving (``fakes.cls(name)``
            makes a class that is saved under an Ultralytics module path).
        fakes_out: Receives the :class:`FakeModules` used, so a test can register them again and load the
            file with plain pickle (proving what such a load would run).
    """
    names = names if names is not None else {i: f"class{i}" for i in range(model.nc)}
    froms = V8_FROM if family == "v8" else Y11_FROM
    y = yaml_for(family, scale) if yaml is True else None
    with FakeModules() as fakes:
        if fakes_out is not None:
            fakes_out.append(fakes)
        tree = ultralytics_tree(model, fakes, y, names, froms)
        if mutate is not None:
            mutate(tree, fakes)
        ckpt = {
            "epoch": -1,
            "best_fitness": np.float64(0.25),  # Ultralytics stores a numpy scalar here
            "model": None,
            "ema": tree,
            "updates": 10,
            "optimizer": None,
            "train_args": {"imgsz": 64, "model": f"yolo{family}{scale}.yaml"},
            "date": "2026-01-01T00:00:00",
            "version": "8.3.0",
        }
        if ema is not None:
            ckpt["model"], ckpt["ema"] = tree, ultralytics_tree(ema, fakes, y, names, froms)
        ckpt.update(extra or {})
        fakes.register()
        torch.save(ckpt, path)
    return path


def plain_load(path: Path, fakes: FakeModules):
    """``torch.load(weights_only=False)`` with the fake classes importable: what Ultralytics' own load does."""
    with fakes:
        fakes.register()
        return torch.load(path, weights_only=False)
