"""Film rendered as a full-field digital mammogram (FFDM) would present it, for evaluation.

The models learn from scanned film (mini-MIAS) and meet For Presentation digital images in
use. Those differ in look, not anatomy: the vendor's processing equalises the breast's
thickness fall-off (the skin line shows, the periphery is as bright as the centre), a sigmoid
or steep VOI LUT sets the contrast, the detector adds quantum noise, and the pixels are 12-bit
with a black background. :func:`digital_look` applies those steps to a film image, so that
``models evaluate --look digital`` measures what the look alone costs a model: the same
women, the same truth, another look.
"""

from __future__ import annotations

import cv2
import numpy as np

#: the ranges :func:`digital_look` draws its settings from
EQUALISE_GAIN = (0.15, 0.35)  # added brightness at the skin line, fading inwards
EQUALISE_MM = (8.0, 20.0)  # how far inwards (mm) the equalisation reaches
SIGMOID_CENTRE = (0.45, 0.6)
SIGMOID_WIDTH = (0.5, 0.9)
NOISE = (0.004, 0.015)  # standard deviation of the added noise, in units of the full range
BITS = 12


def breast_mask(image01: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The breast: the largest bright region after a blur and Otsu's threshold (uint8 0/1)."""
    sigma = max(1.0, 1.0 / spacing_mm)
    blurred = cv2.GaussianBlur((image01 * 255).astype(np.uint8), (0, 0), sigma)
    _, binary = cv2.threshold(blurred, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.asarray(binary, dtype=np.uint8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.asarray(labels == largest, dtype=np.uint8)


def digital_look(image: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A film image (any dtype, bright = dense) as a 12-bit For Presentation FFDM: the
    breast's range spread over the output, thickness equalised, through a sigmoid LUT, with
    noise, background 0. Settings drawn from ``rng``.
    """
    img = np.asarray(image, np.float32)
    lo, hi = float(img.min()), float(img.max())
    x = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    breast = breast_mask(x, spacing_mm)
    inside = x[breast > 0]
    if inside.size:  # the breast's own range, as the vendor's processing spans it
        p1, p99 = (float(v) for v in np.percentile(inside, [1, 99]))
        x = np.clip((x - p1) / max(p99 - p1, 1e-6), 0.0, 1.0)
    depth_mm = cv2.distanceTransform(breast, cv2.DIST_L2, 5) * spacing_mm
    gain = float(rng.uniform(*EQUALISE_GAIN))
    reach = float(rng.uniform(*EQUALISE_MM))
    x = x + gain * np.exp(-depth_mm / reach) * breast
    centre = float(rng.uniform(*SIGMOID_CENTRE))
    width = float(rng.uniform(*SIGMOID_WIDTH))
    x = 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    x = x + rng.normal(0.0, float(rng.uniform(*NOISE)), x.shape).astype(np.float32)
    top = 2 ** BITS - 1
    out = np.round(np.clip(x, 0.0, 1.0) * top).astype(np.uint16)
    out[breast == 0] = 0
    return np.asarray(out)


__all__ = ["BITS", "breast_mask", "digital_look"]
