"""The Mammography CAD SR (TID 4000): valid, parseable, geometry and scores exact."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.encode import build_cad_sr
from mammo_scp.encode.cad_sr import MAMMOGRAPHY_CAD_SR_STORAGE, SERIES_DESCRIPTION
from mammo_scp.encode.uids import SeriesNumber
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.unit.encode.factories import (
    DETECTOR,
    FULL_FIELD_SIZE,
    IDENTITY_KEYWORDS,
    analysis_for,
    blank_mg,
    four_view,
    reread,
    with_extra_identity,
)

RCC_MASS = Finding(Box(x0=40, y0=60, x1=90, y1=100), score=0.92, p_malignant=0.81)
LMLO_MASS = Finding(Box(x0=120.5, y0=30.25, x1=170.75, y1=75.5), score=0.77, p_malignant=0.35)

# Concept code values (DCM) the tests look for.
IMAGE_LIBRARY = "111028"
SUMMARY = "111017"
IMPRESSION = "111034"
SINGLE_IMAGE_FINDING = "111059"
CENTER = "111010"
OUTLINE = "111041"
CERTAINTY = "111012"
PROBABILITY_OF_CANCER = "111047"
SUMMARY_OF_DETECTIONS = "111064"
SUMMARY_OF_ANALYSES = "111065"


def _study() -> tuple[list[Dataset], list[ImageAnalysis]]:
    sources = with_extra_identity(four_view())
    findings: list[tuple[Finding, ...]] = [(RCC_MASS,), (), (), (LMLO_MASS,)]
    return sources, [analysis_for(s, f) for s, f in zip(sources, findings, strict=True)]


def _children(item: Dataset, code_value: str) -> list[Dataset]:
    return [child for child in item.get("ContentSequence", [])
            if "ConceptNameCodeSequence" in child
            and child.ConceptNameCodeSequence[0].CodeValue == code_value]


def _child(item: Dataset, code_value: str) -> Dataset:
    found = _children(item, code_value)
    assert len(found) == 1, f"expected one {code_value} below {item.get('ValueType')}"
    return found[0]


def _resolve(root: Dataset, path: list[int]) -> Dataset:
    """The content item a Referenced Content Item Identifier points at (1 is the root)."""
    assert path[0] == 1
    item = root
    for position in path[1:]:
        item = item.ContentSequence[position - 1]
    return item


def _findings(sr: Dataset) -> list[Dataset]:
    summary = _child(sr, SUMMARY)
    return [_child(impression, SINGLE_IMAGE_FINDING)
            for impression in _children(summary, IMPRESSION)]


def _scoord(item: Dataset) -> tuple[str, np.ndarray]:
    """Graphic type and (x, y) points of a SCOORD item (highdicom cannot parse by-reference
    children, so the SCOORD is read directly)."""
    assert item.ValueType == "SCOORD"
    return str(item.GraphicType), np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)


def test_cad_sr_passes_dciodvfy(tmp_path: Path) -> None:
    sources, analyses = _study()
    verdict = assert_dciodvfy_clean(build_cad_sr(sources, analyses), tmp_path)
    assert verdict.iod == "MammographyCADSR"


def test_cad_sr_without_findings_passes_dciodvfy(tmp_path: Path) -> None:
    sources = four_view()
    sr = build_cad_sr(sources, [analysis_for(s) for s in sources])
    assert_dciodvfy_clean(sr, tmp_path)
    summary = _child(sr, SUMMARY)
    assert summary.ConceptCodeSequence[0].CodeValue == "111241"  # succeeded; without findings
    assert _children(summary, IMPRESSION) == []


def test_dcmtk_reads_it_without_errors(tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump (dcmtk) is not installed")
    sources, analyses = _study()
    path = tmp_path / "cad.dcm"
    build_cad_sr(sources, analyses).save_as(path, enforce_file_format=True)
    result = subprocess.run(["dsrdump", "-v", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith("E:") or (line.startswith("W:") and "template" not in line)]
    assert problems == []
    assert "Mammography CAD Report" in result.stdout


def test_round_trip_findings_geometry_and_scores() -> None:
    sources, analyses = _study()
    sr = reread(build_cad_sr(sources, analyses))
    assert sr.SOPClassUID == MAMMOGRAPHY_CAD_SR_STORAGE
    assert sr.ConceptNameCodeSequence[0].CodeValue == "111036"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    assert _child(sr, SUMMARY).ConceptCodeSequence[0].CodeValue == "111242"

    findings = _findings(sr)
    assert len(findings) == 2
    for finding_item, finding, source in zip(findings, (RCC_MASS, LMLO_MASS),
                                             (sources[0], sources[3]), strict=True):
        assert finding_item.ConceptCodeSequence[0].CodeValue == "4147007"  # Mass
        certainty = hd.sr.NumContentItem.from_dataset(_child(finding_item, CERTAINTY))
        probability = hd.sr.NumContentItem.from_dataset(
            _child(finding_item, PROBABILITY_OF_CANCER))
        assert certainty.value == pytest.approx(100 * finding.score)
        assert probability.value == pytest.approx(100 * finding.p_malignant)
        assert certainty.unit.value == probability.unit.value == "%"

        centre_item = _child(finding_item, CENTER)
        centre_type, centre = _scoord(centre_item)
        assert centre_type == "POINT"
        assert np.allclose(centre, [finding.box.centre])
        outline_type, outline = _scoord(_child(finding_item, OUTLINE))
        assert outline_type == "POLYLINE"
        box = finding.box
        assert np.allclose(outline, [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1],
                                           [box.x0, box.y1], [box.x0, box.y0]])
        # The SCOORDs are selected from the library entry of the right image.
        reference = centre_item.ContentSequence[0]
        assert reference.RelationshipType == "SELECTED FROM"
        image = _resolve(sr, list(reference.ReferencedContentItemIdentifier))
        assert image.ValueType == "IMAGE"
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_image_library_and_processing_summaries() -> None:
    sources, analyses = _study()
    sr = reread(build_cad_sr(sources, analyses))
    library = _child(sr, IMAGE_LIBRARY)
    entries = {}
    for image in library.ContentSequence:
        context = {item.ConceptNameCodeSequence[0].CodeMeaning:
                   item.ConceptCodeSequence[0].CodeMeaning
                   for item in image.ContentSequence if item.ValueType == "CODE"}
        entries[image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID] = (
            context["Image Laterality"], context["Image View"])
    assert entries == {
        sources[0].SOPInstanceUID: ("Right", "cranio-caudal"),
        sources[1].SOPInstanceUID: ("Left", "cranio-caudal"),
        sources[2].SOPInstanceUID: ("Right", "medio-lateral oblique"),
        sources[3].SOPInstanceUID: ("Left", "medio-lateral oblique"),
    }
    detections = _child(sr, SUMMARY_OF_DETECTIONS)
    assert detections.ConceptCodeSequence[0].CodeMeaning == "Succeeded"
    performed = detections.ContentSequence[0].ContentSequence[0]
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
             for item in performed.ContentSequence if item.get("ValueType") == "TEXT"}
    assert texts == {"Algorithm Name": DETECTOR.name, "Algorithm Version": DETECTOR.version}
    inferred = [_resolve(sr, list(item.ReferencedContentItemIdentifier))
                for item in performed.ContentSequence if "ReferencedContentItemIdentifier" in item]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in inferred} == \
        {s.SOPInstanceUID for s in sources}
    assert _child(sr, SUMMARY_OF_ANALYSES).ConceptCodeSequence[0].CodeMeaning == "Not Attempted"


def test_identity_and_series() -> None:
    sources, analyses = _study()
    sr = build_cad_sr(sources, analyses)
    for keyword in IDENTITY_KEYWORDS:
        assert sr.get(keyword) == sources[0].get(keyword), keyword
    assert sr.SeriesDescription == SERIES_DESCRIPTION
    assert (sr.SeriesNumber, sr.InstanceNumber) == (SeriesNumber.CAD_SR, 1)
    assert sr.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID


def test_uids_are_deterministic_and_follow_the_detector_version() -> None:
    sources, analyses = _study()
    first = build_cad_sr(sources, analyses)
    again = build_cad_sr(sources, analyses)
    newer = build_cad_sr(sources, [
        ImageAnalysis(a.sop_instance_uid, a.mask, a.findings, a.segmenter,
                      ModelInfo(DETECTOR.name, "1.0.0")) for a in analyses])
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == \
        (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != newer.SOPInstanceUID
    assert first.SeriesInstanceUID != newer.SeriesInstanceUID


def test_full_field_image(tmp_path: Path) -> None:
    rows, cols = FULL_FIELD_SIZE
    source = blank_mg("R", "CC", generate_uid(), rows, cols)
    finding = Finding(Box(x0=2900, y0=3700, x1=3100, y1=3950), 0.8, 0.6)
    sr = build_cad_sr([source], [analysis_for(source, (finding,))])
    assert_dciodvfy_clean(sr, tmp_path)
    _, centre = _scoord(_child(_findings(sr)[0], CENTER))
    assert np.allclose(centre, [(3000.0, 3825.0)])


def test_rejects_an_image_without_view() -> None:
    source = blank_mg("R", "CC", generate_uid(), 256, 208)
    del source.ViewCodeSequence
    del source.ViewPosition
    with pytest.raises(ValueError, match="ViewCodeSequence"):
        build_cad_sr([source], [analysis_for(source)])


def test_the_view_of_an_image_without_view_code_comes_from_its_view_position() -> None:
    """Issue 25: an image with a View Position (MLO) but no View Code Sequence was dropped
    from the study's objects when the CAD SR was on."""
    source = blank_mg("R", "MLO", generate_uid(), 256, 208)
    del source.ViewCodeSequence
    sr = build_cad_sr([source], [analysis_for(source)])
    found: list[str] = []
    items = [sr]
    while items:
        item = items.pop()
        if "ConceptCodeSequence" in item:
            found.append(str(item.ConceptCodeSequence[0].CodeValue))
        items.extend(item.get("ContentSequence", []))
    assert "399368009" in found  # medio-lateral oblique (SNOMED CT)


def test_non_ascii_patient_name_survives(tmp_path: Path) -> None:
    sources = four_view()
    for source in sources:
        source.PatientName = "Müller^Jöla"
    sr = build_cad_sr(sources, [analysis_for(s) for s in sources])
    assert sr.SpecificCharacterSet == "ISO_IR 100"
    assert_dciodvfy_clean(sr, tmp_path)
    assert str(reread(sr).PatientName) == "Müller^Jöla"
