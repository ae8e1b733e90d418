"""A picture of what the node sends: each image with its mask, boxes and scores.

For an admin or radiologist without a DICOM viewer. Each image is windowed
with its own VOI (window centre/width or VOI LUT), scaled to a common height,
and drawn side by side in the standard mammography hanging: RCC, LCC, RMLO, LMLO
(then any other view, in the order given), each pair back to back with the chest
walls meeting: right breasts with the chest wall on the right edge, left breasts on
the left edge; an image whose PatientOrientation puts its chest wall on the other
side is mirrored, with its mask and boxes. The mass mask is tinted red with a
red outline (the SEG's display colour); each detection box is drawn in yellow
with "p=<p_malignant> s=<score>" above it; the image label (e.g. "RCC") sits in
the top left corner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_voi_lut

from mammo_scp.encode.common import image_label, laterality_of, pair_analyses, view_label_of
from mammo_scp.results import Box, ImageAnalysis

logger = logging.getLogger(__name__)

DEFAULT_HEIGHT = 512
GAP = 8
GAP_GREY = 64
MASK_RGB = (255, 0, 0)
BOX_RGB = (255, 220, 0)
LABEL_RGB = (255, 255, 255)
MASK_ALPHA = 0.35


#: The standard hanging of a screening study, left to right.
HANGING = ("RCC", "LCC", "RMLO", "LMLO")


def hanging_position(source: Dataset) -> int:
    """Where an image hangs: its index in :data:`HANGING`, other views after them."""
    try:
        label = f"{laterality_of(source).value}{view_label_of(source)}"
    except ValueError:
        return len(HANGING)
    return HANGING.index(label) if label in HANGING else len(HANGING)


def _mirrored(source: Dataset) -> bool:
    """True when the image must be mirrored to hang back to back: a right breast whose
    rows run towards anterior (chest wall on the left), or a left breast whose rows run
    towards posterior (PatientOrientation's first value); False when it does not say."""
    orientation = source.get("PatientOrientation")
    if not orientation or len(orientation) < 1:
        return False
    row_direction = str(orientation[0]).upper()
    try:
        laterality = laterality_of(source).value
    except ValueError:
        return False
    chest_wall_away = "P" if laterality == "R" else "A"
    toward_nipple = "A" if laterality == "R" else "P"
    return toward_nipple in row_direction and chest_wall_away not in row_direction


def _mirror(analysis: ImageAnalysis, columns: int) -> ImageAnalysis:
    findings = tuple(
        replace(f, box=Box(x0=columns - f.box.x1, y0=f.box.y0, x1=columns - f.box.x0,
                           y1=f.box.y1))
        for f in analysis.findings)
    return replace(analysis, mask=analysis.mask[:, ::-1], findings=findings)


def _to_uint8(source: Dataset) -> np.ndarray:
    """The image as 8-bit greyscale, windowed as a viewer would, MONOCHROME1 inverted."""
    pixels = source.pixel_array.astype(np.float64)
    if "WindowCenter" in source or "VOILUTSequence" in source:
        pixels = apply_voi_lut(pixels, source).astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    if source.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.round(scaled * 255.0).astype(np.uint8)


def _render_one(source: Dataset, analysis: ImageAnalysis, height: int) -> np.ndarray:
    grey = _to_uint8(source)
    rows, columns = grey.shape
    if _mirrored(source):
        grey = np.ascontiguousarray(grey[:, ::-1])
        analysis = _mirror(analysis, columns)
    scale = height / rows
    width = max(1, round(columns * scale))
    rgb = cv2.cvtColor(cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA),
                       cv2.COLOR_GRAY2RGB)
    mask = cv2.resize(analysis.mask.astype(np.uint8), (width, height),
                      interpolation=cv2.INTER_NEAREST).astype(bool)
    if mask.any():
        tint = np.empty_like(rgb)
        tint[:] = MASK_RGB
        rgb[mask] = np.round((1 - MASK_ALPHA) * rgb[mask] + MASK_ALPHA * tint[mask]).astype(
            np.uint8
        )
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, MASK_RGB, 1)
    thickness = max(1, height // 256)
    font_scale = max(0.4, height / 1024)
    for finding in analysis.findings:
        box = finding.box
        top_left = (round(box.x0 * scale), round(box.y0 * scale))
        bottom_right = (round(box.x1 * scale) - 1, round(box.y1 * scale) - 1)
        cv2.rectangle(rgb, top_left, bottom_right, BOX_RGB, thickness)
        text = f"p={finding.p_malignant:.2f} s={finding.score:.2f}"
        anchor = (top_left[0], max(top_left[1] - 4, 12))
        cv2.putText(rgb, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, font_scale, BOX_RGB,
                    thickness, cv2.LINE_AA)
    cv2.putText(rgb, image_label(source), (6, 6 + round(22 * font_scale)),
                cv2.FONT_HERSHEY_SIMPLEX, 1.5 * font_scale, LABEL_RGB, thickness, cv2.LINE_AA)
    return rgb


def render_preview(datasets: Sequence[Dataset], analyses: Sequence[ImageAnalysis],
                   height: int = DEFAULT_HEIGHT) -> np.ndarray:
    """All images with their results, side by side in the standard hanging (RCC, LCC, RMLO,
    LMLO, then other views in the order given), as an RGB uint8 array (height x width x 3).

    Raises
    ------
    ValueError
        If ``height`` is not positive, or analyses and datasets do not match one to one.
    """
    if height <= 0:
        raise ValueError(f"height must be positive, got {height}")
    pairs = sorted(pair_analyses(datasets, analyses),
                   key=lambda pair: hanging_position(pair[0]))  # stable: others keep order
    tiles = [_render_one(source, analysis, height) for source, analysis in pairs]
    gap = np.full((height, GAP, 3), GAP_GREY, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        if parts:
            parts.append(gap)
        parts.append(tile)
    return np.concatenate(parts, axis=1)


def save_preview(datasets: Sequence[Dataset], analyses: Sequence[ImageAnalysis],
                 path: str | Path, height: int = DEFAULT_HEIGHT) -> Path:
    """Render the preview and write it as an image file (format from the suffix, e.g. .png)."""
    path = Path(path)
    image = render_preview(datasets, analyses, height=height)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"path {path}: OpenCV could not write an image there "
                         "(check the directory exists and the suffix is .png or .jpg)")
    logger.info("wrote preview of %d images to %s", len(datasets), path)
    return path
