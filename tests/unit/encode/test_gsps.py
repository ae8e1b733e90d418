"""The per-image GSPS, proven by dcmtk's presentation-state renderer (dcmp2pgm) and dciodvfy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.encode.gsps import FINDINGS_LAYER, OUTLINE_LAYER, build_gsps
from mammo_scp.encode.uids import SeriesNumber
from mammo_scp.results import Box, Finding, ImageAnalysis
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.unit.encode.factories import (
    DETECTOR,
    MIAS_SIZE,
    analysis_for,
    blank_mg,
    box_mask,
    round_trip,
)

SPACING_MM = 0.2  # tests.support.mg's pixel spacing
TOLERANCE_MM = 2.0
FINDINGS = (Finding(Box(300, 100, 360, 140), 0.9, 0.19),
            Finding(Box(600, 700, 700, 760), 0.5, 0.05))


def _case() -> tuple[Dataset, ImageAnalysis, Dataset]:
    source = blank_mg("L", "CC", generate_uid(), *MIAS_SIZE)
    mask = box_mask(MIAS_SIZE, FINDINGS[0].box)
    mask[140:180, 300:310] = True  # an L shape: the outline is not the box
    analysis = analysis_for(source, FINDINGS, mask=mask)
    gsps = build_gsps(source, analysis)
    assert gsps is not None
    return source, analysis, gsps


def _render(source: Dataset, gsps: Dataset, directory: Path) -> tuple[str, list[np.ndarray]]:
    """dcmp2pgm's verbose dump of the presentation state, and the bitmaps it rendered: the
    image with the presentation state applied, then each activated overlay."""
    if shutil.which("dcmp2pgm") is None:
        pytest.skip("dcmp2pgm (Debian package dcmtk) is not installed")
    source.save_as(directory / "image.dcm", enforce_file_format=True)
    gsps.save_as(directory / "gsps.dcm", enforce_file_format=True)
    done = subprocess.run(["dcmp2pgm", "-v", "-p", "gsps.dcm", "image.dcm", "image.pgm"],
                          cwd=directory, capture_output=True, text=True, timeout=60, check=True)
    bitmaps = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
               for path in [directory / "image.pgm", *sorted(directory.glob("ovl_*.pgm"))]]
    return done.stdout + done.stderr, bitmaps


def _layer_polylines(dump: str, layer: str) -> list[np.ndarray]:
    """The polylines dcmp2pgm read on one graphic layer, as (N, 2) arrays of (x, y)."""
    section = dump.split(f"[{layer}]", 1)[1].split("Graphic Layer #", 1)[0]
    return [np.array([[float(v) for v in point.split("\\")]
                      for point in line.strip().rstrip(",").split(", ")])
            for line in re.findall(r"coordinates: (.*)", section)]


def test_renderer_draws_each_box_on_its_finding(tmp_path: Path) -> None:
    source, _, gsps = _case()
    dump, (image, *overlays) = _render(source, gsps, tmp_path)
    assert image.shape == MIAS_SIZE
    assert len(overlays) == 1, "the boxes are one activated overlay"
    drawn = (overlays[0] > 0).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(drawn)
    shapes = [(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:count]]
    assert len(shapes) == len(FINDINGS), f"one drawn box per finding, got {shapes}"
    tolerance = TOLERANCE_MM / SPACING_MM
    for finding in FINDINGS:
        box = (finding.box.x0, finding.box.y0, finding.box.x1, finding.box.y1)
        assert any(all(abs(d - b) <= tolerance for d, b in zip(shape, box, strict=True))
                   for shape in shapes), f"no drawn box within 2 mm of {box}: {shapes}"
        # ...and a box, not a filled blob: its centre is not drawn
        x, y = (int(v) for v in finding.box.centre)
        assert not drawn[y, x]

    polylines = _layer_polylines(dump, FINDINGS_LAYER)
    assert len(polylines) == len(FINDINGS)
    for polyline, finding in zip(polylines, FINDINGS, strict=True):
        corners = [(finding.box.x0, finding.box.y0), (finding.box.x1, finding.box.y0),
                   (finding.box.x1, finding.box.y1), (finding.box.x0, finding.box.y1)]
        assert np.array_equal(polyline[0], polyline[-1]), "a closed polyline"
        assert np.abs(polyline[:4] - np.array(corners)).max() <= tolerance
    labels = re.findall(r'text \d+: "(.*)"', dump)
    assert labels == ["Mass 1 LCC: probability of cancer 19%, certainty 90%",
                      "Mass 2 LCC: probability of cancer 5%, certainty 50%"]


def test_mask_outline_is_on_a_layer_of_its_own(tmp_path: Path) -> None:
    source, analysis, gsps = _case()
    dump, _ = _render(source, gsps, tmp_path)
    (outline,) = _layer_polylines(dump, OUTLINE_LAYER)  # one connected region
    assert np.array_equal(outline[0], outline[-1])
    rows, columns = np.nonzero(analysis.mask)
    # through the centres of the edge pixels: the mask's extent, to the pixel
    assert outline[:, 0].min() == columns.min() + 0.5
    assert outline[:, 0].max() == columns.max() + 0.5
    assert outline[:, 1].min() == rows.min() + 0.5
    assert outline[:, 1].max() == rows.max() + 0.5
    # the L shape's inner corner is on it: an outline, not the bounding box
    assert any(np.array_equal(point, [309.5, 140.5]) for point in outline)


def test_gsps_passes_dciodvfy(tmp_path: Path) -> None:
    _, _, gsps = _case()
    verdict = assert_dciodvfy_clean(gsps, tmp_path, "gsps.dcm")
    assert verdict.iod == "GrayscaleSoftcopyPresentationState"


def test_references_its_source_and_is_in_the_study() -> None:
    source, _, gsps = _case()
    (series,) = gsps.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert gsps.StudyInstanceUID == source.StudyInstanceUID
    assert gsps.PatientID == source.PatientID
    assert gsps.Modality == "PR"
    assert gsps.SeriesNumber == SeriesNumber.GSPS
    assert gsps.Laterality == "L"


def _without_times(gsps: Dataset) -> bytes:
    """The object's bytes without its creation dates and times (the only values a re-run
    changes, as for the SEG)."""
    items = [gsps]
    while items:
        item = items.pop()
        for element in list(item):
            if element.VR in ("DA", "TM", "DT"):
                del item[element.tag]
            elif element.VR == "SQ":
                items.extend(element.value)
    return round_trip(gsps)


def test_rerun_gives_identical_objects_and_a_new_model_new_uids() -> None:
    source, analysis, gsps = _case()
    again = build_gsps(source, analysis)
    assert again is not None
    assert _without_times(again) == _without_times(gsps)
    newer = analysis_for(source, FINDINGS, detector=DETECTOR.__class__(DETECTOR.name, "9.9.9"))
    other = build_gsps(source, newer)
    assert other is not None
    assert other.SOPInstanceUID != gsps.SOPInstanceUID
    assert other.SeriesInstanceUID != gsps.SeriesInstanceUID


def test_nothing_found_means_no_gsps() -> None:
    source = blank_mg("R", "MLO", generate_uid(), *MIAS_SIZE)
    assert build_gsps(source, analysis_for(source)) is None


def test_rejects_an_analysis_of_another_image() -> None:
    source = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    other = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    with pytest.raises(ValueError, match="analysis is for SOP Instance"):
        build_gsps(source, analysis_for(other, FINDINGS))
