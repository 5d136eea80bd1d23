"""Settings declared once: typed defaults, YAML and ``key=value`` merging, validation, dump.

Every setting is one :class:`Setting` in :data:`SETTINGS`. The CLI, the Python API and ``cfg=file.yaml``
all go through :func:`resolve`, so an unknown key, a wrong type or an out-of-range value is refused in
one place, before any work starts, with a one-line message naming the key.

Settings that name code to import and run (``callbacks``) are taken only from the command line or the
Python API. A file someone else may have written (a ``cfg=`` YAML, a run's ``args.yaml``, a checkpoint's
recorded settings) never makes yolotrain run code: such entries are dropped with a one-line warning that
says how to run them deliberately. Each key's origin is kept in :attr:`Config.sources`.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolotrain.errors import ConfigError

LOGGER = logging.getLogger("yolotrain")
# where a key's value came from (Config.sources); a file origin is "cfg file '<path>'" or "checkpoint '<path>'"
GIVEN = "command line or Python"
DEFAULT = "default"


# The commands a setting can be given to. ``tune`` trains, so it takes exactly what ``train`` takes.
TRAIN = ("train", "tune")
COMMANDS = ("train", "tune", "val", "predict", "info", "export")
# What a resumed run does with a setting given again (``yolotrain train resume=... key=value``).
KEPT = "kept"  # the checkpoint's value is kept; a different one is ignored with a warning
MAY_CHANGE = "may change"  # the new value is used: it does not change what is computed (epochs: extends the run)
REFUSED = "refused"  # a different value stops the resume: the checkpoint would not fit the run
ON_RESUME = (KEPT, MAY_CHANGE, REFUSED)


@dataclass(frozen=True)
class Setting:
    """One configuration key.

    A new training setting needs only ``default``, ``kind`` and ``help`` (plus bounds or choices); it is then
    accepted by ``train`` and ``tune`` and kept from the checkpoint on resume. Declare ``commands`` when val,
    predict, info or export read it too, and ``on_resume=MAY_CHANGE`` when a resumed run may take a new value
    without changing what is computed (output, logging, launch settings).

    Attributes:
        default: Value when nothing sets the key.
        kind: One of ``bool``, ``int``, ``float``, ``str``, ``list``, ``batch`` (an int, or a float
            fraction), ``any`` (validated by ``check``).
        help: One line for ``yolotrain help`` and the settings reference of the documentation.
        lo: Inclusive lower bound for numbers.
        hi: Inclusive upper bound for numbers.
        choices: Allowed values for strings.
        nullable: Whether ``None`` (``null``/``none`` on the command line) is allowed.
        check: Extra validation returning an error text or ``None``; its docstring says what is allowed (the
            settings reference shows it).
        aliases: (alias, value) pairs accepted for a choice, e.g. ``true`` -> ``auto``.
        runs_code: The value names code that is imported and run; it is taken only from the command
            line or the Python API, never from a file (see :func:`resolve`).
        commands: The commands that accept the key (a subset of :data:`COMMANDS`); given to any other,
            it is refused with one line naming these.
        on_resume: What ``resume=`` does with a new value: :data:`KEPT`, :data:`MAY_CHANGE` or
            :data:`REFUSED`.
    """

    default: Any
    kind: str
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None
    aliases: tuple[tuple[str, str], ...] = ()
    runs_code: bool = False
    commands: tuple[str, ...] = TRAIN
    on_resume: str = KEPT


def _device_check(v: Any) -> str | None:
    """cpu, mps, cuda, a GPU index like 0 or a list like 0,1; empty: the first GPU, else cpu"""
    s = str(v).strip().lower()
    if s in ("", "cpu", "mps", "cuda") or all(p.strip().isdigit() for p in s.split(",")):
        return None
    return "expected cpu, mps, cuda, a GPU index like 0 or a list like 0,1"


def _batch_check(v: Any) -> str | None:
    """an image count >= 1, -1 (AutoBatch) or a memory fraction in (0, 1)"""
    if v == -1 or (isinstance(v, int) and 1 <= v <= 65536) or (isinstance(v, float) and 0 < v < 1):
        return None
    return "expected an image count >= 1, -1 (AutoBatch) or a memory fraction in (0, 1)"


def _callbacks_check(v: Any) -> str | None:
    """a list of [event=]module:function or [event=]file.py:function entries"""
    for entry in v:
        ref = entry.split("=", 1)[-1]
        if ":" not in ref or not ref.split(":", 1)[1]:
            return f"'{entry}' is not of the form [event=]module:function or [event=]file.py:function"
    return None


def _freeze_check(v: Any) -> str | None:
    """backbone, a number of layers >= 0, or a list of module names"""
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or isinstance(v, (str, list)):
        return None
    return "expected backbone, a number of layers, or a list of module names"


def _sizes_check(v: Any) -> str | None:
    """a list of integer sizes >= 32, e.g. [480,512,544]"""
    if all(isinstance(x, int) and not isinstance(x, bool) and x >= 32 for x in v):
        return None
    return "expected a list of integer sizes >= 32, e.g. [480,512,544]"


def _classes_check(v: Any) -> str | None:
    """a list of class ids >= 0, e.g. [0,2]"""
    if v is None or all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        return None
    return "expected a list of class ids >= 0, e.g. [0,2]"


def _fraction_check(v: Any) -> str | None:
    """a share of the train split in (0, 1]"""
    return None if v > 0 else "expected a share of the train split in (0, 1]"


def _model_check(v: Any) -> str | None:
    """a scale name (n/s/m/l/x, 11n..11x) or a weights file"""
    return None if str(v).strip() else "expected a scale name (n/s/m/l/x, 11n..11x) or a weights file"


def _cls_weights_check(v: Any) -> str | None:
    """auto, off, or a list of one positive weight per class"""
    if v is None or v is False or v in ("auto", "off"):  # YAML reads a bare off as false
        return None
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v):
        return None
    return "expected auto, off, or a list of one positive weight per class, e.g. [1,1,4]"


def _mlflow_check(v: Any) -> str | None:
    """true, false, or an MLflow tracking URI"""
    if isinstance(v, bool) or (isinstance(v, str) and v.strip()):
        return None
    return "expected true, false, or a tracking URI such as http://127.0.0.1:5000"


S = Setting
VAL_TOO = (*TRAIN, "val")  # training settings validation reads as well
SETTINGS: dict[str, Setting] = {
    # what to run on
    "data": S(
        None,
        "str",
        "data YAML; empty trains on the built-in demo set",
        nullable=True,
        commands=VAL_TOO,
        on_resume=REFUSED,
    ),
    # data selection; see README "Data selection and extra augmentations"
    "single_cls": S(
        False,
        "bool",
        "train and validate every class as one (named 'object'; the model gets 1 class)",
        commands=VAL_TOO,
    ),
    "classes": S(
        [],
        "list",
        "train and validate on these class ids only, e.g. [0,2]; labels of other classes are dropped, ids and the "
        "model's class count stay those of the data YAML (empty: all classes)",
        nullable=True,
        check=_classes_check,
        commands=VAL_TOO,
    ),
    "fraction": S(
        1.0,
        "float",
        "train on a random subset of this share of the train split's images, the same for the same seed "
        "(validation untouched)",
        lo=0.0,
        hi=1.0,
        check=_fraction_check,
    ),
    # long-tailed data; see docs/tracking.md "Long-tailed data"
    "sampler": S(
        "shuffle",
        "str",
        "training order: shuffle (each image once per epoch) or repeat_factor (LVIS repeat-factor sampling: "
        "images with classes rarer than rfs_threshold repeat, epoch length ceil(sum of repeats))",
        choices=("shuffle", "repeat_factor"),
    ),
    "rfs_threshold": S(
        0.1,
        "float",
        "sampler=repeat_factor: an image repeats max(1, sqrt(t / f)) times per epoch, f the share of images "
        "holding its rarest class",
        lo=1e-6,
        hi=1.0,
    ),
    "cls_weights": S(
        None,
        "any",
        "classification loss weight per class: auto (inverse box frequency, mean 1, clipped to [0.1, 10]), "
        "a list of one weight per class, or off/null",
        nullable=True,
        check=_cls_weights_check,
    ),
    "model": S(
        "n",
        "str",
        "scale (YOLOv8 n..x, YOLO11 11n..11x) or weights (yolotrain/Ultralytics .pt, .safetensors)",
        check=_model_check,
        commands=COMMANDS,
        on_resume=REFUSED,
    ),
    "epochs": S(100, "int", "number of training epochs", lo=1, hi=100000, on_resume=MAY_CHANGE),
    "batch": S(
        16,
        "batch",
        "global batch size over all processes; -1: AutoBatch to 60% of device memory; "
        "0<batch<1: AutoBatch to that fraction",
        check=_batch_check,
        commands=("train", "tune", "val", "predict"),
        on_resume=REFUSED,
    ),
    "imgsz": S(
        640,
        "int",
        "training/validation image size (pixels, square)",
        lo=32,
        hi=8192,
        commands=COMMANDS,
        on_resume=REFUSED,
    ),
    "device": S(
        "",
        "str",
        "cpu, mps, 0, 0,1 ... (empty: the first GPU if there is one, else cpu)",
        check=_device_check,
        commands=COMMANDS,
        on_resume=MAY_CHANGE,
    ),
    "workers": S(
        2,
        "int",
        "dataloader worker processes (0 loads in the main process)",
        lo=0,
        hi=64,
        commands=VAL_TOO,
        on_resume=MAY_CHANGE,
    ),
    "seed": S(0, "int", "random seed for reproducible runs", lo=0, hi=2**32 - 1, commands=VAL_TOO),
    "deterministic": S(True, "bool", "prefer deterministic algorithms"),
    "cache": S(
        "off",
        "str",
        "keep decoded, resized images in memory (ram) or as .npy files reused across runs (disk)",
        choices=("off", "ram", "disk"),
        commands=VAL_TOO,
    ),
    "profile": S(
        False, "bool", "after the first epoch, log the data path's per-stage times, its data-wait share and advice"
    ),
    "rect": S(
        True,
        "bool",
        "validate in rectangular batches (aspect-sorted, each padded to its smallest stride multiple)",
        commands=VAL_TOO,
    ),
    # several processes (torchrun); see README "Distributed training"
    "nproc": S(
        0,
        "int",
        "start this many processes with torch.distributed.run (0: one per device listed in device=, else 1)",
        lo=0,
        hi=1024,
        on_resume=MAY_CHANGE,
    ),
    "sync_bn": S(False, "bool", "BatchNorm statistics over the global batch under DDP (SyncBatchNorm)"),
    "dist_timeout": S(
        30.0,
        "float",
        "minutes a collective may wait for the other ranks before failing",
        lo=0.1,
        hi=1440.0,
        on_resume=MAY_CHANGE,
    ),
    "max_restarts": S(
        0,
        "int",
        "with nproc/device lists: worker restarts torchrun may do (each resumes from last.pt)",
        lo=0,
        hi=100,
        on_resume=MAY_CHANGE,
    ),
    "callbacks": S(
        [],
        "list",
        "user callbacks: [event=]module:function or [event=]file.py:function entries; "
        "without event=, the function's name is the event, or it returns {event: function}; "
        "only from the command line or Python (never from a cfg= file or a checkpoint)",
        check=_callbacks_check,
        runs_code=True,
        on_resume=MAY_CHANGE,
    ),
    # outputs
    "project": S("runs/train", "str", "parent folder of run folders", commands=("train", "tune", "predict")),
    "name": S(
        "exp", "str", "run folder name (auto-incremented unless exist_ok)", commands=("train", "tune", "predict")
    ),
    "exist_ok": S(
        False,
        "bool",
        "reuse an existing run folder instead of incrementing",
        commands=("train", "tune", "predict"),
        on_resume=MAY_CHANGE,
    ),
    "save_period": S(
        0, "int", "also write last.pt every N iterations within an epoch (0: off)", lo=0, on_resume=MAY_CHANGE
    ),
    "save_minutes": S(
        0.0, "float", "also write last.pt every M minutes within an epoch (0: off)", lo=0.0, on_resume=MAY_CHANGE
    ),
    "save_epochs": S(-1, "int", "also keep weights/epochN.pt every N epochs (-1: off)", lo=-1, on_resume=MAY_CHANGE),
    # preemption on clusters; see README "Preemption on clusters"
    "save_signal": S(
        "",
        "str",
        "a warning signal that saves last.pt at the next optimizer step and keeps training (e.g. USR1; empty: off)",
        choices=("", "USR1", "USR2", "HUP", "ALRM"),
        on_resume=MAY_CHANGE,
    ),
    "requeue": S(
        False,
        "bool",
        "after a save_signal save under SLURM, requeue the job (scontrol requeue $SLURM_JOB_ID)",
        on_resume=MAY_CHANGE,
    ),
    "pretrained": S(
        None, "str", "initialise from this checkpoint's weights (names and shapes that match)", nullable=True
    ),
    "load": S("all", "str", "with pretrained= or model=*.pt: which weights to load", choices=("all", "backbone")),
    "resume": S(
        "", "str", "continue a run: true (the latest run under project) or a path to last.pt", on_resume=MAY_CHANGE
    ),
    "plots": S(True, "bool", "write plots into the run folder", on_resume=MAY_CHANGE),
    "mlflow": S(
        False,
        "any",
        "log the run to MLflow (pip install 'yolotrain[mlflow]'): true (MLFLOW_TRACKING_URI or MLflow's "
        "default) or a tracking URI; a server that is down costs one warning, never the run",
        check=_mlflow_check,
    ),
    "verbose": S(True, "bool", "show progress bars and per-class tables", commands=COMMANDS, on_resume=MAY_CHANGE),
    # optimisation
    "optimizer": S("auto", "str", "optimizer", choices=("auto", "SGD", "Adam", "AdamW")),
    "lr0": S(0.01, "float", "initial learning rate", lo=0.0, hi=10.0),
    "lrf": S(0.01, "float", "final learning rate as a fraction of lr0", lo=0.0, hi=1.0),
    "momentum": S(0.937, "float", "SGD momentum / Adam beta1", lo=0.0, hi=1.0),
    "weight_decay": S(5e-4, "float", "weight decay at the nominal batch size", lo=0.0, hi=1.0),
    "warmup_epochs": S(3.0, "float", "warmup length in epochs (at least warmup_min_iters iterations)", lo=0.0),
    "warmup_min_iters": S(100, "int", "minimum warmup iterations", lo=0),
    "warmup_momentum": S(0.8, "float", "momentum at the start of warmup", lo=0.0, hi=1.0),
    "warmup_bias_lr": S(0.1, "float", "bias learning rate at the start of warmup", lo=0.0, hi=10.0),
    "cos_lr": S(False, "bool", "cosine instead of linear learning-rate decay"),
    "nbs": S(64, "int", "nominal batch size: gradients are accumulated up to it", lo=1),
    "clip_grad": S(10.0, "float", "max gradient norm (0 disables clipping)", lo=0.0),
    "ema": S(True, "bool", "keep an exponential moving average of the weights"),
    "ema_decay": S(0.9999, "float", "EMA decay once ramped up", lo=0.0, hi=1.0),
    "ema_tau": S(2000.0, "float", "EMA ramp length in updates", lo=1.0),
    "max_nonfinite": S(10, "int", "consecutive non-finite losses before training stops", lo=1),
    "log_every": S(
        10,
        "int",
        "read losses and skip counters back from the device every N optimizer steps (and at each epoch's end): "
        "the progress bar, the log and the non-finite stop are updated there; between them a step reads nothing",
        lo=1,
        on_resume=MAY_CHANGE,
    ),
    # budget and compile; see README "Training for a time budget"
    "time": S(
        0.0,
        "float",
        "train for this many hours (all launches of the run): after each epoch the epoch count, lr decay, warmup "
        "and close_mosaic are fitted so the run ends within it on a fully decayed schedule (0: off; epochs= is "
        "then the recipe length warmup and close_mosaic are scaled from)",
        lo=0.0,
        hi=10000.0,
    ),
    "compile": S(
        "off",
        "str",
        "torch.compile the training model: true (inductor), or the aot_eager/eager backends for debugging; "
        "falls back to eager with a warning when compiling fails",
        choices=("off", "inductor", "aot_eager", "eager"),
        aliases=(("true", "inductor"), ("false", "off")),
    ),
    "cuda_graphs": S(
        False,
        "bool",
        "replay the forward, target assignment, loss and backward as CUDA graphs, one per input size and label "
        "bucket (CUDA, one process, no compile); ignored with a warning elsewhere; where the whole step cannot be "
        "captured the model alone is, and where that fails too the size trains eagerly (one log line each)",
        on_resume=MAY_CHANGE,
    ),
    "amp": S(
        "auto",
        "str",
        "mixed precision: auto (fp16 on CUDA, bf16 on CPUs with native bf16), bf16, fp16, "
        "off; true/false mean auto/off",
        choices=("auto", "off", "bf16", "fp16"),
        aliases=(("true", "auto"), ("false", "off")),
        commands=("train", "tune", "val", "predict", "info"),
    ),
    "amp_check": S(
        True,
        "bool",
        "check the chosen precision on the model before training, falling back if it fails",
        on_resume=MAY_CHANGE,
    ),
    "half": S(
        False,
        "bool",
        "val/predict: run the model in fp16 (CUDA/MPS) or bf16 (CPU with native bf16)",
        commands=("val", "predict", "export"),
    ),
    "channels_last": S(True, "bool", "NHWC memory layout (faster convolutions on CPU and tensor cores)"),
    # loss
    "box": S(7.5, "float", "box (CIoU) loss gain", lo=0.0),
    "cls": S(0.5, "float", "classification loss gain", lo=0.0),
    "dfl": S(1.5, "float", "distribution focal loss gain", lo=0.0),
    "max_boxes": S(
        512,
        "int",
        "labels per image the loss pads to (a power-of-two bucket up to this cap); boxes past it are left out "
        "and counted in the log",
        lo=1,
        hi=65536,
    ),
    # augmentation
    "hsv_h": S(0.015, "float", "hue jitter (fraction)", lo=0.0, hi=1.0),
    "hsv_s": S(0.7, "float", "saturation jitter (fraction)", lo=0.0, hi=1.0),
    "hsv_v": S(0.4, "float", "value jitter (fraction)", lo=0.0, hi=1.0),
    "degrees": S(0.0, "float", "rotation (+/- degrees)", lo=0.0, hi=180.0),
    "translate": S(0.1, "float", "translation (+/- fraction)", lo=0.0, hi=0.9),
    "scale": S(0.5, "float", "scale gain (+/- fraction)", lo=0.0, hi=0.95),
    "shear": S(0.0, "float", "shear (+/- degrees)", lo=0.0, hi=45.0),
    "fliplr": S(0.5, "float", "horizontal flip probability", lo=0.0, hi=1.0),
    "flipud": S(0.0, "float", "vertical flip probability", lo=0.0, hi=1.0),
    "perspective": S(
        0.0,
        "float",
        "perspective (+/- projective term added to the affine warp; the peers' range 0-0.001)",
        lo=0.0,
        hi=0.001,
    ),
    "mosaic": S(1.0, "float", "mosaic probability", lo=0.0, hi=1.0),
    "mixup": S(
        0.0,
        "float",
        "mixup probability: blend with a second augmented sample (ratio ~ Beta(32,32)), boxes of both",
        lo=0.0,
        hi=1.0,
    ),
    "cutmix": S(
        0.0,
        "float",
        "cutmix probability: paste a random rectangle of a second augmented sample, boxes cropped to it",
        lo=0.0,
        hi=1.0,
    ),
    "close_mosaic": S(10, "int", "turn mosaic off for the last N epochs", lo=0),
    "multi_scale": S(
        0.0, "float", "each batch a random square size in imgsz*(1 +/- this), stride-rounded", lo=0.0, hi=0.99
    ),
    "min_size": S(
        [], "list", "each batch a short side drawn from this list (long side capped at max_size)", check=_sizes_check
    ),
    "max_size": S(0, "int", "with min_size: cap on the long side (0: imgsz*1.667)", lo=0, hi=16384),
    # phases and stopping
    "freeze": S(
        None,
        "any",
        "freeze backbone, the first N layers, or a list of module names",
        nullable=True,
        check=_freeze_check,
    ),
    "freeze_epochs": S(0, "int", "epochs the freeze= part stays frozen (0 with freeze=: the whole run)", lo=0),
    "freeze_batch": S(0, "int", "global batch while frozen (0: same as batch)", lo=0, hi=65536),
    "scale_lr": S(False, "bool", "fit lr to the batch: clamp(batch / nbs * lr0) with per-optimizer limits"),
    "patience": S(0, "int", "stop after N validated epochs without improvement (0: off)", lo=0, on_resume=MAY_CHANGE),
    # validation / prediction
    "val": S(True, "bool", "validate during training"),
    "val_period": S(1, "int", "validate every N epochs (and always after the last)", lo=1),
    "split": S("val", "str", "split for yolotrain val", choices=("train", "val", "test"), commands=("val",)),
    "conf": S(
        None,
        "float",
        "confidence threshold (default 0.001 for val, 0.25 for predict)",
        lo=0.0,
        hi=1.0,
        nullable=True,
        commands=("train", "tune", "val", "predict"),
    ),
    "iou": S(0.7, "float", "NMS IoU threshold", lo=0.0, hi=1.0, commands=("train", "tune", "val", "predict")),
    "max_det": S(300, "int", "maximum detections per image", lo=1, commands=("train", "tune", "val", "predict")),
    "agnostic_nms": S(False, "bool", "class-agnostic NMS", commands=("val", "predict")),
    "multi_label": S(
        False,
        "bool",
        "validation NMS keeps every class above conf per box, as Ultralytics' val does (off: the best class only, "
        "the detections predict shows)",
        commands=VAL_TOO,
    ),
    "ap_style": S(
        "coco",
        "str",
        "how mAP is computed: coco (COCO-exact, as pycocotools) or ultralytics (as Ultralytics' / YOLOv5's val: "
        "IoU-greedy matching, every kept detection, trapezoids under the 101-point envelope)",
        choices=("coco", "ultralytics"),
        commands=VAL_TOO,
    ),
    "val_resize": S(
        "area",
        "str",
        "how validation shrinks images to imgsz: area (reduced-scale JPEG decode, then INTER_AREA; sharper and "
        "faster) or bilinear (full decode, bilinear, size rounded up, as Ultralytics' val does)",
        choices=("area", "bilinear"),
        commands=VAL_TOO,
    ),
    "json": S(False, "bool", "print one JSON object as the last stdout line", commands=("val", "info")),
    "source": S(None, "str", "image, folder or glob for predict", nullable=True, commands=("predict",)),
    "save_txt": S(True, "bool", "predict: write YOLO-format prediction files", commands=("predict",)),
    # export (yolotrain export; half=true exports fp16 weights)
    "format": S("onnx", "str", "export: file format", choices=("onnx",), commands=("export",)),
    "opset": S(
        17,
        "int",
        "export: ONNX opset (21-23 need onnxscript; older opsets cannot express the model)",
        lo=11,
        hi=23,
        commands=("export",),
    ),
    "dynamic": S(
        True, "bool", "export: dynamic height/width too (the batch axis is always dynamic)", commands=("export",)
    ),
    "out": S(
        None,
        "str",
        "export: output file (default: the checkpoint's path with the format's suffix)",
        nullable=True,
        commands=("export",),
    ),
}

BOOL_TRUE = {"true", "yes", "on", "1"}
BOOL_FALSE = {"false", "no", "off", "0"}

# Defaults for the built-in demo set, used only for keys the user did not set. Small images of simple
# shapes, an optimizer step every batch (nbs=batch) and bf16 (amp=auto) where the CPU has it reach mAP50 > 0.8
# in about 3 CPU minutes (measured: README, "Measured figures").
DEMO_DEFAULTS: dict[str, Any] = {
    "epochs": 12,
    "imgsz": 160,
    "batch": 16,
    "nbs": 16,
    "close_mosaic": 4,
    "name": "demo",
}


class Config:
    """A resolved configuration: attribute access, ``explicit`` keys, and dumping.

    Attributes:
        explicit: Keys given by the user (YAML or command line) rather than defaults.
        sources: Where each non-default key came from: :data:`GIVEN` (command line or Python), or a file
            such as ``cfg file 'a.yaml'`` or ``checkpoint 'last.pt'``.
    """

    def __init__(
        self, values: Mapping[str, Any], explicit: Iterable[str] = (), sources: Mapping[str, str] | None = None
    ):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "explicit", set(explicit))
        object.__setattr__(self, "sources", dict(sources or {}))

    def origin(self, key: str) -> str:
        """Where ``key``'s value came from (:data:`DEFAULT` when nothing set it)."""
        return self.sources.get(key, DEFAULT)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in SETTINGS:
            raise ConfigError(unknown_key_message(key))
        self._values[key] = coerce(key, value)

    def to_dict(self) -> dict[str, Any]:
        """All settings as plain values, ordered as declared."""
        return {k: self._values[k] for k in SETTINGS}

    def replace(self, **updates: Any) -> Config:
        """A copy with ``updates`` validated and applied."""
        new = Config(self._values, self.explicit | set(updates), {**self.sources, **dict.fromkeys(updates, GIVEN)})
        for k, v in updates.items():
            setattr(new, k, v)
        return new

    def dump(self, path: str | Path) -> None:
        """Write the resolved settings as YAML (the run's ``args.yaml``)."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def __repr__(self) -> str:
        return f"Config({self.to_dict()})"


def unknown_key_message(key: str, extra: Iterable[str] = ()) -> str:
    """``unknown setting 'X'; did you mean 'Y'?`` with the closest of the settings and ``extra`` names."""
    close = difflib.get_close_matches(key, [*extra, *SETTINGS], n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; run 'yolotrain help' for the list"
    return f"unknown setting '{key}'{hint}"


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value the way YAML would, keeping odd strings as strings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(key: str, value: Any) -> Any:
    """Validate ``value`` for ``key`` and convert it to the setting's type.

    Raises:
        ConfigError: With a one-line message naming the key and what is allowed.
    """
    if key not in SETTINGS:
        raise ConfigError(unknown_key_message(key))
    s = SETTINGS[key]
    if isinstance(value, str) and s.kind != "str":
        value = _parse_scalar(value.strip())
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if s.nullable:
            return None
        raise ConfigError(f"setting '{key}' must not be empty ({allowed_values(s)})")
    try:
        out = _convert(s, value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting '{key}'={value!r} has the wrong type ({allowed_values(s)})") from None
    if s.kind in ("int", "float"):
        if not math.isfinite(out) or (s.lo is not None and out < s.lo) or (s.hi is not None and out > s.hi):
            raise ConfigError(f"setting '{key}'={value!r} is out of range ({allowed_values(s)})")
    if s.choices is not None:
        match = {**{c.lower(): c for c in s.choices}, **dict(s.aliases)}.get(str(out).lower())
        if match is None:
            raise ConfigError(f"setting '{key}'={value!r} is not allowed ({allowed_values(s)})")
        out = match
    if s.check is not None and (err := s.check(out)):
        raise ConfigError(f"setting '{key}'={value!r} is not valid: {err}")
    return out


def _convert(s: Setting, value: Any) -> Any:
    if s.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in BOOL_TRUE:
            return True
        if text in BOOL_FALSE:
            return False
        raise ValueError(value)
    if s.kind == "int":
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if s.kind == "float":
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    if s.kind == "batch":  # an integer count, or a float fraction for AutoBatch
        if isinstance(value, bool):
            raise TypeError(value)
        value = float(value)
        return int(value) if value.is_integer() else value
    if s.kind == "list":
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):  # "a,b" on the command line
            return [_parse_scalar(v.strip()) for v in value.split(",") if v.strip()]
        return [value]
    if s.kind == "str":
        if isinstance(value, (dict, list)):
            raise TypeError(value)
        return str(value)
    return value


def allowed_values(s: Setting) -> str:
    """What ``s`` accepts, in words: ``one of off, ram, disk``, ``a number in [0, 1]``, ``true or false``..."""
    if s.choices:
        return "one of " + ", ".join(s.choices)
    if s.kind in ("int", "float"):
        lo = "-inf" if s.lo is None else f"{s.lo:g}"
        hi = "inf" if s.hi is None else f"{s.hi:g}"
        return f"{'an integer' if s.kind == 'int' else 'a number'} in [{lo}, {hi}]"
    if s.kind == "bool":
        return "true or false"
    return f"a {s.kind}" + (" or null" if s.nullable else "")


def load_yaml_settings(path: str | Path) -> dict[str, Any]:
    """Read a ``cfg=`` YAML file of settings.

    Raises:
        ConfigError: When the file is missing, not YAML, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cfg file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"cfg file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"cfg file '{p}' must hold a mapping of settings, not {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def parse_cli_args(args: list[str]) -> dict[str, Any]:
    """Turn ``key=value`` and ``--key value`` / ``--key=value`` / ``--flag`` tokens into a dict.

    Values stay strings; :func:`coerce` converts them per setting.

    Raises:
        ConfigError: For a token that is neither form.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("--"):
            body = tok[2:]
            if "=" in body:
                k, v = body.split("=", 1)
            elif i + 1 < len(args) and "=" not in args[i + 1] and not args[i + 1].startswith("--"):
                k, v = body, args[i + 1]
                i += 1
            else:
                k, v = body, "true"
        elif "=" in tok:
            k, v = tok.split("=", 1)
        else:
            raise ConfigError(f"argument '{tok}' is not of the form key=value or --key value")
        k = k.strip().replace("-", "_")
        if not k:
            raise ConfigError(f"argument '{tok}' has an empty key")
        out[k] = v
        i += 1
    return out


def resolve(
    overrides: Mapping[str, Any] | None = None,
    cfg: str | Path | None = None,
    recorded: Mapping[str, Any] | None = None,
    recorded_from: str = "recorded settings",
    command: str | None = None,
) -> Config:
    """Merge defaults <- ``recorded`` <- ``cfg`` YAML <- ``overrides`` and validate everything.

    When no ``data`` is given, :data:`DEMO_DEFAULTS` fill the keys the user did not set. Settings that run
    code (``callbacks``) are taken from ``overrides`` only; a file's are dropped with a warning. With a
    ``command``, a key in ``overrides`` that this command does not read is refused (a ``cfg=`` file may
    serve several commands, so its other keys are left as they are).

    Args:
        overrides: Settings from the command line or the Python API (``cfg`` may be one of them).
        cfg: A YAML file of settings.
        recorded: Settings a file recorded (a checkpoint's ``config`` on resume).
        recorded_from: What ``recorded`` came from, for messages, e.g. ``checkpoint 'last.pt'``.
        command: The command the settings are for (one of :data:`COMMANDS`), or None for no check.

    Raises:
        ConfigError: For the first invalid key or value, or a key ``command`` does not accept.
    """
    overrides = dict(overrides or {})
    cfg = overrides.pop("cfg", cfg)
    if command is not None:
        check_command(command, overrides)
    layers: list[tuple[str, dict[str, Any]]] = []
    if recorded:
        layers.append((recorded_from, dict(recorded)))
    if cfg:
        layers.append((f"cfg file '{cfg}'", load_yaml_settings(cfg)))
    layers.append((GIVEN, overrides))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for k, v in layer.items():
            if origin != GIVEN and k in SETTINGS and SETTINGS[k].runs_code:
                _warn_not_run(k, v, origin, overrides)
                continue
            merged[k] = v
            sources[k] = origin
    values = {k: s.default for k, s in SETTINGS.items()}
    for k, v in merged.items():
        values[k] = coerce(k, v)
    if not values["data"]:
        for k, v in DEMO_DEFAULTS.items():
            if k not in merged:
                values[k] = v
    return Config(values, explicit=merged.keys(), sources=sources)


def check_command(command: str, keys: Iterable[str]) -> None:
    """Refuse the first of ``keys`` that ``command`` does not accept, naming the commands that do.

    Raises:
        ConfigError: ``setting 'mosaic' is not used by predict; it is accepted by train, tune``.
    """
    for key in keys:
        if key not in SETTINGS:
            raise ConfigError(unknown_key_message(key))
        accepted = SETTINGS[key].commands
        if command not in accepted:
            raise ConfigError(f"setting '{key}' is not used by {command}; it is accepted by {', '.join(accepted)}")


def _warn_not_run(key: str, value: Any, origin: str, overrides: Mapping[str, Any]) -> None:
    """Say, in one line, that a file named code for ``key`` and it is not run (unless given again)."""
    try:
        entries = coerce(key, value)
    except ConfigError:  # invalid as well as untrusted: it is dropped either way, so show it as written
        entries = value if isinstance(value, list) else [value]
    if not entries:
        return
    given = overrides.get(key)
    if given is not None:
        try:
            given = coerce(key, given)
        except ConfigError:
            given = None  # the override's own error is raised when it is merged
        if given is not None and all(e in given for e in entries):
            return  # the same entries are given on the command line or from Python: they run
    shown = ",".join(map(str, entries))
    LOGGER.warning(
        f"{origin} names {key} {shown}: they were NOT run (code named in a file is never imported); "
        f"to run them, give {key}={shown} on the command line or from Python"
    )
