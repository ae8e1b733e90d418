"""The node's Analyzer with stand-in networks: real decoding, preprocessing, geometry and
post-processing, in milliseconds and without TensorFlow's weights.

The segmenter marks the brightest part of the breast as a mass; the detector reports one
box on the image and, like a real network on a blank region, boxes in the zero padding
right and below the image (which the analyzer must never report).
"""

from __future__ import annotations

import numpy as np

from mammo_scp.models.analyzer import Analyzer, Detections
from mammo_scp.results import ModelInfo

SEGMENTER = ModelInfo("stub-unet", "0.0.1")
DETECTOR = ModelInfo("stub-frcnn", "0.0.1")


class StubAnalyzer(Analyzer):
    """:class:`Analyzer` with two cheap functions for its networks."""

    def __init__(self, spacing_mm: float = 0.4, padding_boxes: int = 5) -> None:
        # Not Analyzer.__init__: no networks to build.
        self.precision, self.precision_reason = "fp32", "stub"
        self.spacing_mm = self.detector_spacing_mm = spacing_mm
        self.mask_threshold, self.mask_mode, self.mask_min_area_mm2 = 0.5, "all", 0.0
        self.mask_confident = 1.0  # mask mode finding_or_confident: never confident alone
        self.mask_tta = False
        self.shared_backbone = False
        self.score_threshold = 0.5
        self.exclude_pectoral = False
        self.segmenter_info, self.detector_info = SEGMENTER, DETECTOR
        self.padding_boxes = padding_boxes
        self.seen_shapes: list[tuple[int, int]] = []

    def segment(self, image: np.ndarray) -> np.ndarray:
        self.seen_shapes.append(image.shape)
        on = image > 0
        if not on.any():
            return np.zeros(image.shape, np.float32)
        cut = float(np.quantile(image[on], 0.98))
        return np.asarray(image >= max(cut, 1e-6), np.float32)

    def detect(self, image: np.ndarray) -> Detections:
        rows, cols = image.shape
        boxes = [[cols * 0.2, rows * 0.3, cols * 0.45, rows * 0.55]]  # on the image
        for k in range(self.padding_boxes):  # entirely past the bottom-right corner
            boxes.append([cols + 4.0 * k, rows + 4.0 * k, cols + 4.0 * k + 20, rows + 4.0 * k + 20])
        n = len(boxes)
        return Detections(np.asarray(boxes, np.float64), np.full(n, 0.85), np.full(n, 0.3))


class FindsNothing(StubAnalyzer):
    """Stand-in networks that segment and detect nothing: a normal study."""

    def segment(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(image.shape, np.float32)

    def detect(self, image: np.ndarray) -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
