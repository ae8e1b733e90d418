"""The "analysed, no finding" Enhanced SR of a study in which the models find nothing."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from mammo_scp.encode import build_no_findings_report
from mammo_scp.encode.uids import SeriesNumber
from mammo_scp.results import Box, Finding, ModelInfo
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.unit.encode.factories import (
    DETECTOR,
    SEGMENTER,
    analysis_for,
    four_view,
    round_trip,
)

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
IMAGING_MEASUREMENT_REPORT = "126000"  # the title OHIF (3.13) reads as TID 1500


def _report(detector: ModelInfo = DETECTOR) -> tuple[list[Dataset], Dataset]:
    sources = four_view()
    analyses = [analysis_for(source, detector=detector) for source in sources]
    return sources, build_no_findings_report(sources, analyses)


def _items(sr: Dataset) -> dict[str, list[str]]:
    """Concept meaning -> the values of the root's children (text, code meaning or UID)."""
    found: dict[str, list[str]] = {}
    for item in sr.ContentSequence:
        value = (item.get("TextValue") or item.get("UID")
                 or (item.ConceptCodeSequence[0].CodeMeaning
                     if "ConceptCodeSequence" in item else ""))
        found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(str(value))
    return found


def test_passes_dciodvfy(tmp_path: Path) -> None:
    _, sr = _report()
    verdict = assert_dciodvfy_clean(sr, tmp_path, "no-findings.dcm")
    assert verdict.iod == "EnhancedSR"


def test_says_analysed_by_which_models_and_nothing_found() -> None:
    sources, sr = _report()
    read = hd.sr.srread(BytesIO(round_trip(sr)))
    items = _items(read)
    assert items["CAD Processing and Findings Summary"] == [
        "All algorithms succeeded; without findings"]
    (comment,) = items["Comment"]
    assert comment == ("No finding: AI mass detection and segmentation analysed 4 image(s) "
                       "(RCC, LCC, RMLO, LMLO) with mass-frcnn 0.9.1 and mass-unet 1.2.0")
    assert items["Algorithm Name"] == [DETECTOR.name, SEGMENTER.name]
    assert items["Algorithm Version"] == [DETECTOR.version, SEGMENTER.version]
    assert items["Observer Type"] == ["Device"]
    # the analysed images are its evidence, and it is of their study and patient
    evidence = {str(image.ReferencedSOPInstanceUID)
                for study in read.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for image in series.ReferencedSOPSequence}
    assert evidence == {str(source.SOPInstanceUID) for source in sources}
    assert read.StudyInstanceUID == sources[0].StudyInstanceUID
    assert read.PatientID == sources[0].PatientID
    assert (read.CompletionFlag, read.VerificationFlag) == ("COMPLETE", "UNVERIFIED")


def test_is_what_ohif_opens_as_text_not_a_tid_1500_report() -> None:
    """OHIF (3.13) opens Basic Text, Enhanced and Comprehensive SR; one titled "Imaging
    Measurement Report" it reads as TID 1500 and fails on without findings."""
    _, sr = _report()
    assert sr.SOPClassUID == ENHANCED_SR
    assert sr.ConceptNameCodeSequence[0].CodeValue != IMAGING_MEASUREMENT_REPORT
    assert (sr.ConceptNameCodeSequence[0].CodeValue,
            sr.ConceptNameCodeSequence[0].CodingSchemeDesignator) == ("18748-4", "LN")
    assert sr.Modality == "SR"
    assert sr.SeriesNumber == SeriesNumber.NO_FINDINGS


def test_uids_are_deterministic_and_follow_the_model_version() -> None:
    sources, first = _report()
    again = build_no_findings_report(sources, [analysis_for(s) for s in sources])
    newer = build_no_findings_report(
        sources, [analysis_for(s, detector=ModelInfo(DETECTOR.name, "9.9.9")) for s in sources])
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        first.SOPInstanceUID, first.SeriesInstanceUID)
    assert newer.SOPInstanceUID != first.SOPInstanceUID
    assert newer.SeriesInstanceUID != first.SeriesInstanceUID


def test_refused_for_a_study_with_a_finding() -> None:
    sources = four_view()
    analyses = [analysis_for(source) for source in sources]
    analyses[2] = analysis_for(sources[2], (Finding(Box(10, 10, 40, 40), 0.9, 0.5),))
    with pytest.raises(ValueError, match="findings"):
        build_no_findings_report(sources, analyses)
