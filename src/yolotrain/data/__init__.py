"""Data: YAML config, formats (YOLO/COCO/VOC), label scanning and caching, augmentation, dataset,
loader, demo set, and the ``data check`` / ``data convert`` tools."""

from yolotrain.data.augment import letterbox, random_affine, random_flip_lr, random_hsv
from yolotrain.data.check import check_dataset
from yolotrain.data.convert import convert_dataset
from yolotrain.data.data_yaml import load_data_yaml
from yolotrain.data.dataset import DetectionDataset, SampleKey
from yolotrain.data.demo import ensure_demo_dataset
from yolotrain.data.formats import SplitSource, detect_format
from yolotrain.data.image_io import read_image
from yolotrain.data.labels import ScanReport, check_image
from yolotrain.data.loader import (
    DetectionLoader,
    EpochSampler,
    build_dataloader,
    collate,
    set_loader_epoch,
)
from yolotrain.data.mosaic import mosaic4
from yolotrain.data.records import ImageRecord, xywhn_to_xyxy, xyxy_to_xywhn
from yolotrain.data.scan import scan_split
from yolotrain.data.yolo_paths import IMG_EXTS, img_to_label_path

__all__ = [
    "IMG_EXTS",
    "DetectionDataset",
    "DetectionLoader",
    "EpochSampler",
    "ImageRecord",
    "SampleKey",
    "ScanReport",
    "SplitSource",
    "build_dataloader",
    "check_dataset",
    "check_image",
    "collate",
    "convert_dataset",
    "detect_format",
    "ensure_demo_dataset",
    "img_to_label_path",
    "letterbox",
    "load_data_yaml",
    "mosaic4",
    "random_affine",
    "random_flip_lr",
    "random_hsv",
    "read_image",
    "scan_split",
    "set_loader_epoch",
    "xywhn_to_xyxy",
    "xyxy_to_xywhn",
]
