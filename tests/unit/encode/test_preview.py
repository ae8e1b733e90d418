"""The preview picture: images side by side with the mask tint, boxes and scores."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.uid import generate_uid

from mammo_scp.preview import BOX_RGB, GAP, render_preview, save_preview
from mammo_scp.results import Box, Finding
from tests.unit.encode.factories import analysis_for, blank_mg, box_mask, four_view

MASS = Finding(Box(x0=100, y0=120, x1=160, y1=180), score=0.9, p_malignant=0.7)


def test_tiles_are_side_by_side_at_the_requested_height() -> None:
    sources = four_view(rows=256, cols=208)
    image = render_preview(sources, [analysis_for(s) for s in sources], height=128)
    assert image.dtype == np.uint8
    assert image.shape == (128, 4 * 104 + 3 * GAP, 3)


def test_mask_is_tinted_and_box_drawn_where_they_are() -> None:
    source = blank_mg("R", "CC", generate_uid(), 256, 208)
    source.PixelData = np.full((256, 208), 2048, dtype=np.uint16).tobytes()
    analysis = analysis_for(source, (MASS,), mask=box_mask((256, 208), MASS.box))
    image = render_preview([source], [analysis], height=256).astype(int)

    inside = image[150, 130]  # inside the mask, away from the box outline
    outside = image[60, 40]
    assert inside[0] > inside[1] + 40 and inside[0] > inside[2] + 40, "mask not tinted red"
    assert outside[0] == outside[1] == outside[2], "tint outside the mask"
    assert tuple(image[150, 100]) == BOX_RGB, "box edge not drawn at x0"
    assert tuple(image[120, 130]) == BOX_RGB, "box edge not drawn at y0"
    assert tuple(image[179, 130]) == BOX_RGB, "box edge not drawn at y1 - 1"


def test_scaling_keeps_overlay_aligned() -> None:
    source = blank_mg("L", "MLO", generate_uid(), 1024, 832)
    big = Finding(Box(x0=400, y0=480, x1=640, y1=720), 0.8, 0.5)
    analysis = analysis_for(source, (big,))
    image = render_preview([source], [analysis], height=256).astype(int)  # scale 1/4
    assert image.shape[:2] == (256, 208)
    centre = image[150, 130]
    assert centre[0] > centre[1] + 40, "scaled mask not where the source mask is"
    assert tuple(image[150, 100]) == BOX_RGB


def test_save_preview_writes_a_png(tmp_path: Path) -> None:
    sources = four_view()
    analyses = [analysis_for(s, (MASS,) if i == 0 else ()) for i, s in enumerate(sources)]
    path = save_preview(sources, analyses, tmp_path / "preview.png", height=200)
    written = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert written is not None
    assert np.array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB),
                          render_preview(sources, analyses, height=200))


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    sources = four_view()
    analyses = [analysis_for(s) for s in sources]
    with pytest.raises(ValueError, match="height"):
        render_preview(sources, analyses, height=0)
    with pytest.raises(ValueError, match="no analysis for"):
        render_preview(sources, analyses[:2])
    with pytest.raises(ValueError, match="path"):
        save_preview(sources, analyses, tmp_path / "missing-dir" / "p.png")


def _marked(source, row: int, col: int):
    """``source`` black but for a bright 16 x 16 block at (row, col)."""
    pixels = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.uint16)
    pixels[row:row + 16, col:col + 16] = 4000
    source.PixelData = pixels.tobytes()
    return source


def test_views_hang_rcc_lcc_rmlo_lmlo_whatever_the_order_received() -> None:
    by_label = {f"{s.ImageLaterality}{s.ViewPosition}": s for s in four_view(256, 208)}
    for n, label in enumerate(("RCC", "LCC", "RMLO", "LMLO")):  # each marked at its own row
        _marked(by_label[label], 32 + 48 * n, 96)
    received = [by_label[label] for label in ("RCC", "LMLO", "LCC", "RMLO")]
    image = render_preview(received, [analysis_for(s) for s in received], height=256)
    tile = 208 + GAP
    marks = [int(np.argmax(image[:, k * tile + 96 + 8, 0])) for k in range(4)]
    assert marks == [32, 80, 128, 176]  # RCC, LCC, RMLO, LMLO


def test_chest_walls_meet_an_image_facing_the_other_way_is_mirrored() -> None:
    rcc, lcc = four_view(256, 208)[:2]
    rcc.PatientOrientation = ["A", "L"]  # rows run towards the nipple: chest wall on the left
    _marked(rcc, 100, 0)  # at the chest wall
    _marked(lcc, 100, 0)  # LCC as modalities send it: chest wall on the left already
    image = render_preview([rcc, lcc], [analysis_for(s) for s in (rcc, lcc)], height=256)
    row = image[108, :, 0]
    assert row[208 - 8] > 200 and row[8] < 50  # RCC: the block now at its right edge
    assert row[208 + GAP + 8] > 200  # LCC unchanged, chest walls back to back
