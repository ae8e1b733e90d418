"""The study's TID 1500 Measurement Report: valid, readable by highdicom, geometry exact."""

from __future__ import annotations

from copy import deepcopy
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid

from mammo_scp.encode import build_cad_sr, build_measurement_report, build_seg, codes, save_result
from mammo_scp.encode import sr as sr_module
from mammo_scp.encode.sr import SERIES_DESCRIPTION
from mammo_scp.encode.uids import SeriesNumber
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.unit.encode.factories import (
    DETECTOR,
    FULL_FIELD_SIZE,
    IDENTITY_KEYWORDS,
    MIAS_SIZE,
    SEGMENTER,
    analysis_for,
    blank_mg,
    box_mask,
    four_view,
    round_trip,
    with_extra_identity,
)

RCC_MASS = Finding(Box(x0=40, y0=60, x1=90, y1=100), score=0.92, p_malignant=0.81)
RCC_SPECK = Finding(Box(x0=150, y0=200, x1=160, y1=212), score=0.41, p_malignant=0.12)
LMLO_MASS = Finding(Box(x0=120.5, y0=30.25, x1=170.75, y1=75.5), score=0.77, p_malignant=0.35)


def _study(
    segmenter: ModelInfo = SEGMENTER, detector: ModelInfo = DETECTOR,
) -> tuple[list[Dataset], list[ImageAnalysis], list[Dataset]]:
    """Four views: two findings on RCC (the speck outside the mask), one on LMLO."""
    sources = with_extra_identity(four_view())
    rcc, lcc, rmlo, lmlo = sources
    shape = (int(rcc.Rows), int(rcc.Columns))
    analyses = [
        analysis_for(rcc, (RCC_MASS, RCC_SPECK), mask=box_mask(shape, RCC_MASS.box),
                     segmenter=segmenter, detector=detector),
        analysis_for(lcc, segmenter=segmenter, detector=detector),
        analysis_for(rmlo, segmenter=segmenter, detector=detector),
        analysis_for(lmlo, (LMLO_MASS,), segmenter=segmenter, detector=detector),
    ]
    segs = [seg for seg in (build_seg(s, a) for s, a in zip(sources, analyses, strict=True))
            if seg is not None]
    return sources, analyses, segs


def _read(sr: Dataset) -> tuple[hd.sr.Comprehensive3DSR, hd.sr.MeasurementReport]:
    read = hd.sr.srread(BytesIO(round_trip(sr)))
    assert isinstance(read, hd.sr.Comprehensive3DSR)
    return read, hd.sr.MeasurementReport.from_sequence([read])


def _values(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
            | hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, tuple[float, str]]:
    return {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}


def test_report_passes_dciodvfy(tmp_path: Path) -> None:
    sources, analyses, segs = _study()
    verdict = assert_dciodvfy_clean(build_measurement_report(sources, analyses, segs), tmp_path)
    assert verdict.iod == "Comprehensive3DSR"


def test_no_report_without_findings() -> None:
    """OHIF (3.13) fails to open a Measurement Report without a finding: none is made."""
    sources = four_view()
    analyses = [analysis_for(source) for source in sources]
    with pytest.raises(ValueError, match="no findings"):
        build_measurement_report(sources, analyses, [])


def test_round_trip_findings_polylines_and_scores() -> None:
    sources, analyses, segs = _study()
    sr = build_measurement_report(sources, analyses, segs)
    read, report = _read(sr)
    assert read.ContentSequence and read.ConceptNameCodeSequence[0].CodeValue == "126000"

    regions = [g for g in report.get_planar_roi_measurement_groups() if g.roi is not None]
    by_identifier = {str(g.tracking_identifier): g for g in regions}
    assert sorted(by_identifier) == ["Mass 1 LMLO", "Mass 1 RCC", "Mass 2 RCC"]

    expected = {"Mass 1 RCC": (sources[0], RCC_MASS, "24028007"),
                "Mass 2 RCC": (sources[0], RCC_SPECK, "24028007"),
                "Mass 1 LMLO": (sources[3], LMLO_MASS, "7771000")}
    for identifier, (source, finding, laterality) in expected.items():
        group = by_identifier[identifier]
        assert group.finding_type == codes.MASS
        assert group.finding_category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        site = group.finding_sites[0]
        assert site.value == codes.BREAST
        assert site.laterality is not None and site.laterality.value == laterality
        roi = group.roi
        assert roi is not None and roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        box = finding.box
        assert np.allclose(roi.value, [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1],
                                       [box.x0, box.y1], [box.x0, box.y0]])
        assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
            source.SOPInstanceUID
        values = _values(group)
        assert values["Probability of cancer"] == pytest.approx((100 * finding.p_malignant, "%"))
        assert values["Certainty of Finding"] == pytest.approx((100 * finding.score, "%"))


def test_each_finding_has_a_group_ohif_can_track() -> None:
    """OHIF makes a tracked measurement of a group from its region when it holds no
    measurement, labelled with its Comment: each finding has such a group, with the same
    tracking UID and region as the group of its measurements."""
    sources, analyses, segs = _study()
    _, report = _read(build_measurement_report(sources, analyses, segs))
    expected = {"Mass 1 RCC": RCC_MASS, "Mass 2 RCC": RCC_SPECK, "Mass 1 LMLO": LMLO_MASS}
    for identifier, finding in expected.items():
        with_region = [g for g in report.get_planar_roi_measurement_groups()
                       if g.tracking_identifier == identifier and g.roi is not None]
        tracked = [g for g in with_region if not g.get_measurements()]
        measured = [g for g in with_region if g.get_measurements()]
        assert len(tracked) == 1 and len(measured) == 1
        assert tracked[0].tracking_uid == measured[0].tracking_uid
        assert np.array_equal(tracked[0].roi.value, measured[0].roi.value)
        comments = [item.TextValue for item in tracked[0][0].ContentSequence
                    if item.ValueType == "TEXT"
                    and item.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value]
        assert comments == [f"{identifier}: probability of cancer "
                            f"{100 * finding.p_malignant:.0f}%, certainty "
                            f"{100 * finding.score:.0f}%"]


def test_findings_reference_their_seg_segment() -> None:
    sources, analyses, segs = _study()
    _, report = _read(build_measurement_report(sources, analyses, segs))
    seg_groups = [g for g in report.get_planar_roi_measurement_groups()
                  if g.referenced_segmentation_frame is not None]
    # The RCC speck lies outside the RCC mask, so only the two masses reference a segment.
    assert [g.tracking_identifier for g in seg_groups] == ["Mass 1 RCC", "Mass 1 LMLO"]
    region_group = next(g for g in report.get_planar_roi_measurement_groups()
                        if g.tracking_identifier == "Mass 1 RCC" and g.roi is not None)
    assert seg_groups[0].tracking_uid == region_group.tracking_uid
    frame = seg_groups[0].referenced_segmentation_frame
    assert frame is not None
    assert frame[0].referenced_sop_instance_uid == segs[0].SOPInstanceUID
    assert frame[0].referenced_frame_numbers == [1]
    assert frame[1].referenced_sop_instance_uid == sources[0].SOPInstanceUID


def test_every_group_has_an_image_region_or_a_segment() -> None:
    """OHIF 3.13 fails to open a report with a measurement group without either (a
    per-breast or exam score group): the report holds only findings."""
    sources, analyses, segs = _study()
    _, report = _read(build_measurement_report(sources, analyses, segs))
    assert report.get_image_measurement_groups() == []
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) >= 3
    for group in groups:
        assert group.roi is not None or group.referenced_segmentation_frame is not None


def test_image_library_has_laterality_and_view_of_every_image() -> None:
    sources, analyses, segs = _study()
    sr = build_measurement_report(sources, analyses, segs)
    library = next(item for item in sr.ContentSequence
                   if item.ConceptNameCodeSequence[0].CodeValue == "111028")
    seen = {}
    for group in library.ContentSequence:
        for image in group.ContentSequence:
            context = {item.ConceptNameCodeSequence[0].CodeMeaning:
                       item.ConceptCodeSequence[0].CodeMeaning
                       for item in image.ContentSequence if item.ValueType == "CODE"}
            uid = image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            seen[uid] = (context["Image Laterality"], context["Image View"])
    assert seen == {
        sources[0].SOPInstanceUID: ("Right", "cranio-caudal"),
        sources[1].SOPInstanceUID: ("Left", "cranio-caudal"),
        sources[2].SOPInstanceUID: ("Right", "medio-lateral oblique"),
        sources[3].SOPInstanceUID: ("Left", "medio-lateral oblique"),
    }


def test_identity_series_and_evidence() -> None:
    sources, analyses, segs = _study()
    sr = build_measurement_report(sources, analyses, segs)
    for keyword in IDENTITY_KEYWORDS:
        assert sr.get(keyword) == sources[0].get(keyword), keyword
    assert sr.SeriesDescription == SERIES_DESCRIPTION
    assert (sr.SeriesNumber, sr.InstanceNumber) == (SeriesNumber.MEASUREMENT_REPORT, 1)
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert evidence == {s.SOPInstanceUID for s in sources} | {s.SOPInstanceUID for s in segs}


def test_uids_are_deterministic_and_follow_the_model_versions() -> None:
    sources, analyses, segs = _study()
    first = build_measurement_report(sources, analyses, segs)
    again = build_measurement_report(sources, analyses, segs)
    newer_analyses = [ImageAnalysis(a.sop_instance_uid, a.mask, a.findings, a.segmenter,
                                    ModelInfo(DETECTOR.name, "0.9.2")) for a in analyses]
    newer = build_measurement_report(sources, newer_analyses, segs)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == \
        (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != newer.SOPInstanceUID
    assert first.SeriesInstanceUID != newer.SeriesInstanceUID

    def tracking(sr: Dataset) -> list[str]:
        _, report = _read(sr)
        return [str(g.tracking_uid) for g in report.get_planar_roi_measurement_groups()]

    assert tracking(first) == tracking(again)
    assert set(tracking(first)).isdisjoint(tracking(newer))


@pytest.mark.parametrize("size", [MIAS_SIZE, FULL_FIELD_SIZE], ids=["mias", "full-field"])
def test_polyline_is_the_box_on_real_image_sizes(size: tuple[int, int], tmp_path: Path) -> None:
    rows, cols = size
    source = blank_mg("L", "MLO", generate_uid(), rows, cols)
    box = Box(x0=cols - 400, y0=rows - 300, x1=cols - 250, y1=rows - 120)
    finding = Finding(box, 0.9, 0.7)
    analysis = analysis_for(source, (finding,))
    seg = build_seg(source, analysis)
    assert seg is not None
    sr = build_measurement_report([source], [analysis], [seg])
    assert_dciodvfy_clean(sr, tmp_path)
    _, report = _read(sr)
    group = next(g for g in report.get_planar_roi_measurement_groups() if g.roi is not None)
    assert group.roi is not None
    assert np.allclose(group.roi.value[:4], [[box.x0, box.y0], [box.x1, box.y0],
                                             [box.x1, box.y1], [box.x0, box.y1]])


def test_box_beyond_the_image_is_clipped() -> None:
    source = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    finding = Finding(Box(x0=-5, y0=1000, x1=40, y1=1030), 0.9, 0.7)
    _, report = _read(build_measurement_report([source], [analysis_for(source, (finding,))], []))
    roi = report.get_planar_roi_measurement_groups()[0].roi
    assert roi is not None
    assert roi.value.min() >= 0 and roi.value[:, 1].max() == 1024


def test_rejects_mixed_studies() -> None:
    sources = four_view()
    stranger = blank_mg("R", "CC", generate_uid(), 256, 208)
    analyses = [analysis_for(s) for s in [*sources, stranger]]
    with pytest.raises(ValueError, match="sources mix studies"):
        build_measurement_report([*sources, stranger], analyses, [])


def test_rejects_missing_analysis() -> None:
    sources = four_view()
    with pytest.raises(ValueError, match="no analysis for"):
        build_measurement_report(sources, [analysis_for(s) for s in sources[:3]], [])


def test_rejects_a_seg_of_another_image() -> None:
    sources = four_view()
    stranger = blank_mg("R", "CC", sources[0].StudyInstanceUID, 256, 208)
    seg = build_seg(stranger, analysis_for(stranger, (RCC_MASS,)))
    assert seg is not None
    analyses = [analysis_for(sources[0], (RCC_MASS,)), *map(analysis_for, sources[1:])]
    with pytest.raises(ValueError, match="segs"):
        build_measurement_report(sources, analyses, [seg])


def test_report_is_what_highdicom_alone_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report built without highdicom's copy of the content tree has, element for
    element, what highdicom's own Comprehensive3DSR writes for the same arguments."""
    calls: list[dict[str, object]] = []
    real = sr_module.comprehensive_3d_sr

    def recording(**kwargs: object) -> Dataset:
        calls.append(kwargs)
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sr_module, "comprehensive_3d_sr", recording)
    sources, analyses, segs = _study()
    fast = build_measurement_report(sources, analyses, segs)
    (kwargs,) = calls
    plain = hd.sr.Comprehensive3DSR(**kwargs)  # type: ignore[arg-type]
    sr_module.copy_patient_study(sources[0], plain)
    plain.SoftwareVersions = fast.SoftwareVersions
    for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate",
                    "InstanceCreationTime"):  # highdicom's "now"
        if keyword in fast:
            setattr(plain, keyword, fast[keyword].value)
    for ours, theirs in zip(fast.ContributingEquipmentSequence,
                            plain.ContributingEquipmentSequence, strict=True):
        if "ContributionDateTime" in ours:
            theirs.ContributionDateTime = ours.ContributionDateTime
    assert round_trip(fast) == round_trip(plain)


def test_report_refuses_a_reference_outside_its_evidence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sources, analyses, segs = _study()
    calls: list[dict[str, object]] = []
    real = sr_module.comprehensive_3d_sr
    monkeypatch.setattr(sr_module, "comprehensive_3d_sr",
                        lambda **kwargs: calls.append(kwargs) or real(**kwargs))
    build_measurement_report(sources, analyses, segs)
    content = calls[0]["content"]
    with pytest.raises(ValueError, match="not in its evidence"):
        real(evidence=sources[1:], content=content, series_instance_uid=generate_uid(),
            series_number=1, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer="x")


@pytest.mark.parametrize("source_syntax", [None, ImplicitVRLittleEndian])
def test_save_result_writes_what_pydicom_writes(source_syntax: UID | None) -> None:
    """save_result (VR correction once for the whole tree) writes the same bytes as
    pydicom's save_as, for the report, the SEGs and the CAD SR, also when the sources
    were read from implicit VR files and the copied identity (a sequence too) is raw."""
    sources, analyses, segs = _study()
    if source_syntax is not None:
        read = []
        for source in sources:
            other_id = Dataset()
            other_id.PatientID, other_id.IssuerOfPatientID = "B-7", "HOSP-B"
            source.OtherPatientIDsSequence = [other_id]
            buffer = BytesIO()
            source.file_meta.TransferSyntaxUID = source_syntax
            source.save_as(buffer, enforce_file_format=True)
            read.append(dcmread(BytesIO(buffer.getvalue())))
        sources = read
        segs = [seg for seg in (build_seg(s, a) for s, a in zip(sources, analyses, strict=True))
                if seg is not None]
    results = [*segs, build_measurement_report(sources, analyses, segs),
               build_cad_sr(sources, analyses)]
    for result in results:
        expected = BytesIO()
        deepcopy(result).save_as(expected, enforce_file_format=True)
        written = BytesIO()
        save_result(result, written)
        assert written.getvalue() == expected.getvalue(), result.Modality
