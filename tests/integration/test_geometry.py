"""A mass drawn at a known place, through the real pipeline (shipped models, encoders),
lands at that place in the SEG frame and in the SR polyline, on MIAS-sized and on
full-field images."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.config import SHIPPED_MODELS
from mammo_scp.encode import build_measurement_report, build_seg
from mammo_scp.models.analyzer import Analyzer
from mammo_scp.preprocess import preprocess_array
from tests.support.mg import make_mg
from tests.support.mias import MIAS_SPACING_MM, mias_laterality, mias_pixels

# A fatty normal breast of mini-MIAS as background.
BACKGROUND = "mdb006"
MASS_RADIUS_MM = 8.0


@cache
def analyzer() -> Analyzer:
    return Analyzer.load(SHIPPED_MODELS)


def _polylines(sr: Dataset) -> Iterator[np.ndarray]:
    """Every SCOORD polyline in the report's content tree, as (x, y) points."""
    def walk(items: list[Dataset]) -> Iterator[np.ndarray]:
        for item in items:
            if item.get("ValueType") == "SCOORD" and item.GraphicType == "POLYLINE":
                yield np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
            yield from walk(item.get("ContentSequence", []))
    yield from walk(sr.ContentSequence)


def _mass_centre_mm() -> tuple[float, float]:
    """(x, y) in mm: in the breast tissue, 40 % of the breast's width from the chest wall
    and 55 % down its height, as found by the node's own breast crop."""
    crop = preprocess_array(mias_pixels(BACKGROUND), MIAS_SPACING_MM,
                            model_spacing_mm=analyzer().spacing_mm).transform
    r0, c0, rows, cols = crop.crop
    col = c0 + cols * (0.6 if crop.flipped else 0.4)
    return col * MIAS_SPACING_MM, (r0 + rows * 0.55) * MIAS_SPACING_MM


def _image(spacing_mm: float, bits: int) -> tuple[Dataset, tuple[float, float], float]:
    """The background at ``spacing_mm`` with a mass; returns it, the centre (x, y) and radius
    in its own pixels."""
    background = mias_pixels(BACKGROUND).astype(np.float64) / 255.0
    scale = MIAS_SPACING_MM / spacing_mm
    size = round(background.shape[0] * scale)
    image = cv2.resize(background, (size, size), interpolation=cv2.INTER_LINEAR)
    x_mm, y_mm = _mass_centre_mm()
    col, row = round(x_mm / spacing_mm), round(y_mm / spacing_mm)
    radius = MASS_RADIUS_MM / spacing_mm
    # The same soft round mass as tests.support.mg.add_mass, drawn before quantisation so
    # that its contrast is the same fraction of the range at every bit depth.
    yy, xx = np.ogrid[:size, :size]
    image += 0.35 * np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * (radius / 1.5) ** 2))
    top = (1 << bits) - 1
    pixels = np.round(np.clip(image, 0, 1) * top).astype(np.uint16 if bits > 8 else np.uint8)
    ds = make_mg(mias_laterality(BACKGROUND), "MLO", study_uid=generate_uid(), pixels=pixels,
                 spacing_mm=spacing_mm, bits_stored=bits)
    return ds, (float(col), float(row)), radius


@pytest.mark.parametrize("spacing_mm,bits", [(MIAS_SPACING_MM, 8), (0.07, 14)],
                         ids=["mias-1024px", "full-field-0.07mm"])
def test_mass_lands_where_it_was_drawn(spacing_mm: float, bits: int) -> None:
    ds, (x, y), radius = _image(spacing_mm, bits)
    analysis = analyzer().analyze(ds)
    # "A few pixels" at the model's own resolution, expressed in source pixels.
    tolerance = 3 * analyzer().spacing_mm / spacing_mm

    seg = build_seg(ds, analysis)
    assert seg is not None, "the U-Net found no mass"
    frame = seg.pixel_array.astype(bool).reshape(int(ds.Rows), int(ds.Columns))
    rows, cols = np.nonzero(frame)
    blob = np.hypot(cols - x, rows - y) < 2 * radius
    assert blob.sum() > 0.3 * np.pi * radius**2, "the SEG does not cover the mass"
    assert abs(cols[blob].mean() - x) < tolerance and abs(rows[blob].mean() - y) < tolerance

    sr = build_measurement_report([ds], [analysis], [seg])
    centres = [points[:-1].mean(axis=0) for points in _polylines(sr)]
    assert centres, "the SR has no finding"
    nearest = min(centres, key=lambda c: float(np.hypot(c[0] - x, c[1] - y)))
    assert np.hypot(nearest[0] - x, nearest[1] - y) < tolerance
