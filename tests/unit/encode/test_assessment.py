"""The breast and exam assessment in the three study objects: what they say, read back from
their bytes; dciodvfy finds no error; the Measurement Report stays one OHIF opens; UIDs."""

from __future__ import annotations

import dataclasses
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from mammo_scp.assessment import Assessment, Category, StudyAssessment, Thresholds, assess
from mammo_scp.encode import (
    build_cad_sr,
    build_measurement_report,
    build_no_findings_report,
    build_seg,
)
from mammo_scp.results import Box, Finding, ImageAnalysis
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.unit.encode.factories import analysis_for, four_view, round_trip

THRESHOLDS = Thresholds(low=0.1, elevated=0.3)
RCC_MASS = Finding(Box(x0=40, y0=60, x1=90, y1=100), score=0.92, p_malignant=0.81)

# concept code values the tests look for
CERTAINTY_OF_FINDING = "111012"
ASSESSMENT_CATEGORY = "111005"
IMPRESSION_DESCRIPTION = "111033"
FINDING_SITE = "363698007"
LATERALITY = "272741003"
DERIVED_IMAGING_MEASUREMENTS = "126011"
QUALITATIVE_EVALUATIONS = "C0034375"
IMAGING_MEASUREMENTS = "126010"
SUMMARY = "111017"
SIDE = {"24028007": "R", "7771000": "L"}


def _study(scores: tuple[float, float, float, float], with_finding: bool
           ) -> tuple[list[Dataset], list[ImageAnalysis], StudyAssessment]:
    """RCC, LCC, RMLO, LMLO with these mass scores (RCC's finding when ``with_finding``)."""
    sources = four_view()
    analyses = [dataclasses.replace(
        analysis_for(source, (RCC_MASS,) if with_finding and k == 0 else ()), mass_score=score)
        for k, (source, score) in enumerate(zip(sources, scores, strict=True))]
    assessment = assess([(str(s.ImageLaterality), a.mass_score)
                         for s, a in zip(sources, analyses, strict=True)], THRESHOLDS)
    return sources, analyses, assessment


def _with_finding() -> tuple[list[Dataset], list[ImageAnalysis], StudyAssessment]:
    """Right breast elevated (its finding, 92 %), left intermediate (12 %)."""
    return _study((0.92, 0.05, 0.2, 0.12), with_finding=True)


def _without_finding() -> tuple[list[Dataset], list[ImageAnalysis], StudyAssessment]:
    """Right breast intermediate (20 %), left low (4 %)."""
    return _study((0.2, 0.04, 0.02, 0.03), with_finding=False)


def _report(sources: list[Dataset], analyses: list[ImageAnalysis],
            assessment: StudyAssessment | None) -> Dataset:
    segs = [seg for seg in (build_seg(s, a) for s, a in zip(sources, analyses, strict=True))
            if seg is not None]
    return build_measurement_report(sources, analyses, segs, assessment)


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _side(item: Dataset) -> str:
    """'exam', 'R' or 'L': the laterality below the item's finding site (or its own
    Laterality modifier, as in the CAD SR)."""
    for child in item.get("ContentSequence", []):
        if _code(child) == LATERALITY:
            return SIDE[child.ConceptCodeSequence[0].CodeValue]
        if _code(child) == FINDING_SITE:
            return _side(child)
    return "exam"


def _said(items: list[Dataset]) -> dict[str, object]:
    """What the items say: the one-line summary, and per scope its score and category."""
    said: dict[str, object] = {}
    for item in items:
        if _code(item) == IMPRESSION_DESCRIPTION:
            said["summary"] = item.TextValue
        elif _code(item) == CERTAINTY_OF_FINDING:
            measured = item.MeasuredValueSequence[0]
            assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "%"
            said[f"{_side(item)} score"] = float(measured.NumericValue)
        elif _code(item) == ASSESSMENT_CATEGORY:
            said[f"{_side(item)} category"] = item.TextValue
    return said


def _container(sr: Dataset, code: str) -> Dataset:
    found: list[Dataset] = [item for item in sr.ContentSequence if _code(item) == code]
    assert len(found) == 1, f"expected one {code} container"
    return found[0]


def test_measurement_report_carries_scores_and_categories() -> None:
    sources, analyses, assessment = _with_finding()
    read = dcmread(BytesIO(round_trip(_report(sources, analyses, assessment))))
    derived = _said(list(_container(read, DERIVED_IMAGING_MEASUREMENTS).ContentSequence))
    assert derived == {"exam score": 92.0, "R score": 92.0, "L score": 12.0}
    qualitative = _said(list(_container(read, QUALITATIVE_EVALUATIONS).ContentSequence))
    assert qualitative == {
        "summary": "AI mass assessment: exam elevated (92%); right elevated (92%), "
                   "left intermediate (12%)",
        "exam category": "elevated", "R category": "elevated", "L category": "intermediate"}


def test_measurement_report_with_assessment_passes_dciodvfy(tmp_path: Path) -> None:
    sources, analyses, assessment = _with_finding()
    verdict = assert_dciodvfy_clean(_report(sources, analyses, assessment), tmp_path)
    assert verdict.iod == "Comprehensive3DSR"


def test_measurement_report_keeps_only_findings_as_measurement_groups() -> None:
    """OHIF (3.13) reads measurement groups under Imaging Measurements only, and fails on one
    without an image region: the assessment adds none, and highdicom still reads it."""
    sources, analyses, assessment = _with_finding()
    read = hd.sr.srread(BytesIO(round_trip(_report(sources, analyses, assessment))))
    report = hd.sr.MeasurementReport.from_sequence([read])
    assert report.get_image_measurement_groups() == []
    groups = report.get_planar_roi_measurement_groups()
    assert groups and all(g.roi is not None or g.referenced_segmentation_frame is not None
                          for g in groups)
    imaging = _container(read, IMAGING_MEASUREMENTS)
    assert {_code(item) for item in imaging.ContentSequence} == {"125007"}  # groups only


def test_no_findings_report_carries_scores_and_categories(tmp_path: Path) -> None:
    sources, analyses, assessment = _without_finding()
    sr = build_no_findings_report(sources, analyses, assessment)
    assert assert_dciodvfy_clean(sr, tmp_path).iod == "EnhancedSR"
    read = dcmread(BytesIO(round_trip(sr)))
    assert _said(list(read.ContentSequence)) == {
        "summary": "AI mass assessment: exam intermediate (20%); right intermediate (20%), "
                   "left low (4%)",
        "exam score": 20.0, "R score": 20.0, "L score": 4.0,
        "exam category": "intermediate", "R category": "intermediate", "L category": "low"}


@pytest.mark.parametrize("study", [_with_finding, _without_finding],
                         ids=["with findings", "without findings"])
def test_cad_sr_carries_scores_in_its_impression_body(tmp_path: Path, study) -> None:  # type: ignore[no-untyped-def]
    sources, analyses, assessment = study()
    sr = build_cad_sr(sources, analyses, assessment)
    assert assert_dciodvfy_clean(sr, tmp_path).iod == "MammographyCADSR"
    summary = _container(dcmread(BytesIO(round_trip(sr))), SUMMARY)
    body = [item for item in summary.ContentSequence
            if item.RelationshipType == "HAS PROPERTIES"]
    said = _said(body)
    right, left = assessment.right, assessment.left
    assert right is not None and left is not None
    assert said == {"summary": f"AI mass assessment: {assessment.summary()}",
                    "exam score": round(100 * assessment.exam.score, 4),
                    "R score": round(100 * right.score, 4),
                    "L score": round(100 * left.score, 4)}
    # the body comes before the individual impressions it sums up (TID 4001 order)
    relationships = [item.RelationshipType for item in summary.ContentSequence]
    assert relationships == sorted(relationships, key=lambda r: r != "HAS PROPERTIES")


def test_an_assessment_of_other_images_is_refused() -> None:
    sources, analyses, assessment = _with_finding()
    other = assess([("R", 0.5), ("L", 0.12)], THRESHOLDS)
    with pytest.raises(ValueError, match="not that of the analysed images"):
        _report(sources, analyses, other)
    wrong_category = dataclasses.replace(assessment, left=Assessment(0.12, Category.LOW))
    with pytest.raises(ValueError, match="not that of the analysed images"):
        build_cad_sr(sources, analyses, wrong_category)
    quiet_sources, quiet_analyses, quiet = _without_finding()
    with pytest.raises(ValueError, match="not that of the analysed images"):
        build_no_findings_report(quiet_sources[2:], quiet_analyses[2:], quiet)


def test_uids_are_the_same_again_and_new_with_other_thresholds() -> None:
    """A re-run sends the same objects; other thresholds make other content, so new
    instances (in the same series)."""
    sources, analyses, assessment = _with_finding()
    other = assess([(str(s.ImageLaterality), a.mass_score)
                    for s, a in zip(sources, analyses, strict=True)],
                   Thresholds(low=0.15, elevated=0.3))
    def report(a: StudyAssessment) -> Dataset:
        return _report(sources, analyses, a)

    def cad(a: StudyAssessment) -> Dataset:
        return build_cad_sr(sources, analyses, a)

    for build in (report, cad):
        first, again, changed = build(assessment), build(assessment), build(other)
        assert again.SOPInstanceUID == first.SOPInstanceUID
        assert changed.SOPInstanceUID != first.SOPInstanceUID
        assert changed.SeriesInstanceUID == first.SeriesInstanceUID
    quiet_sources, quiet_analyses, quiet = _without_finding()
    first = build_no_findings_report(quiet_sources, quiet_analyses, quiet)
    again = build_no_findings_report(quiet_sources, quiet_analyses, quiet)
    changed = build_no_findings_report(quiet_sources, quiet_analyses, dataclasses.replace(
        quiet, thresholds=Thresholds(low=0.1, elevated=0.25)))
    assert again.SOPInstanceUID == first.SOPInstanceUID != changed.SOPInstanceUID
