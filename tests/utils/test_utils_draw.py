"""Box drawing: new image returned, boxes and labels visible, input untouched."""

from __future__ import annotations

import numpy as np
import torch

from yolotrain.utils.draw import colors, draw_detections


def test_colors_fixed_and_cycling() -> None:
    assert colors(0) == colors(20) and colors(0) != colors(1)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in colors(7)) and len(colors(7)) == 3


def test_draw_detections_draws_on_copy() -> None:
    img = np.full((120, 160, 3), 128, dtype=np.uint8)
    before = img.copy()
    boxes = np.array([[20, 40, 80, 100], [100, 10, 150, 60]], dtype=float)
    out = draw_detections(img, boxes, np.array([0, 1]), np.array([0.87, 0.5]), ["cat", "dog"])

    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)  # input not modified
    # Box edges take the class colour; the box interior away from label and edges is untouched.
    assert tuple(out[70, 20]) == colors(0) and tuple(out[100, 50]) == colors(0)
    assert tuple(out[35, 150]) == colors(1)
    np.testing.assert_array_equal(out[75, 50], before[75, 50])
    # The label of the first box sits above its top edge.
    assert (out[28:39, 22:60] != 128).any()


def test_label_stays_inside_image_and_torch_inputs() -> None:
    img = np.zeros((50, 50, 3), dtype=np.uint8)
    # Box touching the top-right corner: the label must be moved inside instead of cut off.
    out = draw_detections(img, torch.tensor([[30.0, 0.0, 49.0, 20.0]]), torch.tensor([3]), None, ["person"] * 4)
    changed = (out != 0).any(axis=2)
    assert changed[0:10, :30].any()  # label shifted left of the box so it fits
    assert changed.any(axis=0)[30:].any()


def test_no_boxes_returns_equal_copy() -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    out = draw_detections(img, np.zeros((0, 4)), np.zeros(0), None, None)
    assert out is not img
    np.testing.assert_array_equal(out, img)
