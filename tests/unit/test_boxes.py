"""Detections become findings only on the breast region the preprocessing found (issue 25:
boxes in the model's zero padding failed the encode stage)."""

from __future__ import annotations

import numpy as np

from mammo_scp.models.analyzer import breast_box
from mammo_scp.preprocess import Transform

# a 425 x 266 source, cropped to rows 10-410 and columns 0-200, resized by 1/2 and padded
TRANSFORM = Transform(source_shape=(425, 266), crop=(10, 0, 400, 200), resized_shape=(200, 100),
                      model_shape=(224, 128), flipped=False)


def test_a_box_in_the_padding_is_no_finding() -> None:
    assert breast_box(np.array([100.0, 200.0, 128.0, 224.0]), TRANSFORM) is None
    assert breast_box(np.array([90.0, 10.0, 126.0, 30.0]), TRANSFORM) is None  # mostly padding


def test_a_box_reaching_past_the_breast_is_cut_at_its_edge() -> None:
    box = breast_box(np.array([80.0, 150.0, 105.0, 205.0]), TRANSFORM)
    assert box == (160.0, 310.0, 200.0, 410.0)


def test_a_box_on_the_image_maps_to_source_pixels() -> None:
    assert breast_box(np.array([10.0, 20.0, 30.0, 40.0]), TRANSFORM) == (20.0, 50.0, 60.0, 90.0)


def test_a_flipped_box_stays_inside_the_crop() -> None:
    flipped = Transform(source_shape=(425, 266), crop=(10, 66, 400, 200),
                        resized_shape=(200, 100), model_shape=(224, 128), flipped=True)
    x0, y0, x1, y1 = breast_box(np.array([0.0, 0.0, 10.0, 10.0]), flipped) or (0, 0, 0, 0)
    assert 66 <= x0 < x1 <= 266 and 10 <= y0 < y1 <= 410
