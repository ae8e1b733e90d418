"""One bad image never costs its study: each stage skips that image with its reason and
processes the rest (issue 25), with the real decoding, preprocessing and encoders and
stand-in networks (tests.support.stub_analyzer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.assessment import Category, Thresholds
from mammo_scp.dicom import VIEW_CODES, view_of
from mammo_scp.pipeline import NO_FINDINGS_KIND, InstanceRecord, JobContext, default_pipeline
from mammo_scp.store.ingest import laterality_of
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.support.mg import FOUR_VIEWS, make_mg
from tests.support.stub_analyzer import FindsNothing, StubAnalyzer
from tests.unit.test_decode import panicking_rle

assert VIEW_CODES  # the view codes ingest reads


def _study(n: int = 4) -> list[Dataset]:
    study_uid = generate_uid()
    return [make_mg(lat, view, study_uid=study_uid, instance_number=k, seed=k)
            for k, (lat, view) in enumerate(FOUR_VIEWS[:n], start=1)]


def _run(tmp_path: Path, datasets: list[Dataset], analyzer: object | None = None,
         cad_sr: bool = True, gsps: bool = False) -> JobContext:
    records = []
    for ds in datasets:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        records.append(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), path,
                                      laterality_of(ds), view_of(ds)))
    ctx = JobContext(job_id=1, study_uid=str(datasets[0].StudyInstanceUID),
                     instances=tuple(records))
    for stage in default_pipeline(analyzer or StubAnalyzer(), cad_sr=cad_sr,  # type: ignore[arg-type]
                                  gsps=gsps).stages:
        stage.run(ctx)
    return ctx


def _empty_pixel_data(ds: Dataset) -> None:
    ds.PixelData = None


def _rows_two_values(ds: Dataset) -> None:
    ds["Rows"] = DataElement(0x00280010, "US", [256, 256])


def _rows_as_text(ds: Dataset) -> None:
    ds["Rows"] = DataElement(0x00280010, "LO", "256")


def _frames_as_text(ds: Dataset) -> None:
    ds["NumberOfFrames"] = DataElement(0x00280008, "LO", "one")


def _spacing_74mm(ds: Dataset) -> None:
    ds.ImagerPixelSpacing = [74.7, 74.7]


def _rle_panic(ds: Dataset) -> None:
    bad = panicking_rle()
    for keyword in ("PixelData", "Rows", "Columns"):
        ds[keyword] = bad[keyword]
    ds.file_meta.TransferSyntaxUID = bad.file_meta.TransferSyntaxUID


BAD_FIFTH = [
    ("empty Pixel Data", _empty_pixel_data, "Pixel Data element is empty"),
    ("Rows with two values", _rows_two_values, "Rows holds several values"),
    ("Rows as text", _rows_as_text, "Rows is stored as text"),
    ("NumberOfFrames as text", _frames_as_text, "NumberOfFrames is stored as text"),
    ("spacing 74.7 mm", _spacing_74mm, "outside the 0.02-0.5 mm of mammography"),
    ("RLE decoder panic", _rle_panic, "PanicException"),
]


@pytest.mark.parametrize("spoil,reason", [c[1:] for c in BAD_FIFTH], ids=[c[0] for c in BAD_FIFTH])
def test_a_bad_fifth_image_is_skipped_and_the_four_views_are_processed(
        tmp_path: Path, spoil: Callable[[Dataset], None], reason: str) -> None:
    study = _study()
    fifth = make_mg("R", "CC", study_uid=str(study[0].StudyInstanceUID), instance_number=5)
    spoil(fifth)
    ctx = _run(tmp_path, [*study, fifth])
    assert list(ctx.skipped) == [str(fifth.SOPInstanceUID)]
    assert reason in ctx.skipped[str(fifth.SOPInstanceUID)]
    assert set(ctx.analyses) == {str(ds.SOPInstanceUID) for ds in study}
    kinds = sorted(r.kind for r in ctx.results)
    assert kinds.count("SEG") == 4 and "SR" in kinds and "CAD_SR" in kinds


@pytest.mark.parametrize("cad_sr", [False, True], ids=["default", "cad_sr"])
def test_a_study_without_findings_gets_a_no_findings_report(tmp_path: Path,
                                                            cad_sr: bool) -> None:
    """Issue 26: "analysed, found nothing" is an object, not silence; no SEG, SR or GSPS."""
    study = _study()
    ctx = _run(tmp_path, study, FindsNothing(), cad_sr=cad_sr, gsps=True)
    assert ctx.skipped == {} and len(ctx.analyses) == 4
    kinds = sorted(r.kind for r in ctx.results)
    assert kinds == (["CAD_SR", NO_FINDINGS_KIND] if cad_sr else [NO_FINDINGS_KIND])
    (report,) = [r.dataset for r in ctx.results if r.kind == NO_FINDINGS_KIND]
    assert report.StudyInstanceUID == study[0].StudyInstanceUID
    assert_dciodvfy_clean(report, tmp_path, "no-findings.dcm")


def test_a_study_with_findings_gets_no_no_findings_report(tmp_path: Path) -> None:
    ctx = _run(tmp_path, _study(), gsps=True)
    kinds = sorted(r.kind for r in ctx.results)
    assert NO_FINDINGS_KIND not in kinds
    assert kinds.count("GSPS") == 4 and "SR" in kinds  # the stub finds a mass on each image


def test_the_study_is_assessed_per_breast_and_exam(tmp_path: Path) -> None:
    """Issue 26: the stub detector's box scores 0.85, above its finding threshold 0.5, on
    every view: each breast carries a finding and is elevated; the report says so."""
    ctx = _run(tmp_path, _study(), cad_sr=True)
    assessment = ctx.assessment
    assert assessment is not None and assessment.right is not None
    assert assessment.thresholds == Thresholds(low=0.25, elevated=0.5)  # the default low
    assert assessment.exam.category is Category.ELEVATED
    assert assessment.exam.score == pytest.approx(0.85)
    assert assessment.right.category is Category.ELEVATED
    assert all(a.findings for a in ctx.analyses.values())
    (report,) = [r.dataset for r in ctx.results if r.kind == "SR"]
    texts = _texts(report)
    assert "AI mass assessment: exam elevated (85%); right elevated (85%), left elevated (85%)" \
        in texts
    (cad,) = [r.dataset for r in ctx.results if r.kind == "CAD_SR"]
    assert f"AI mass assessment: {assessment.summary()}" in _texts(cad)


def test_a_study_without_findings_is_assessed_low(tmp_path: Path) -> None:
    ctx = _run(tmp_path, _study(), FindsNothing(), cad_sr=False)
    assert ctx.assessment is not None
    assert ctx.assessment.summary() == "exam low (0%); right low (0%), left low (0%)"
    (report,) = [r.dataset for r in ctx.results if r.kind == NO_FINDINGS_KIND]
    assert "low" in _texts(report)


def test_the_assessment_is_of_the_images_the_objects_were_made_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both left views skipped in encode (their SEGs cannot be written): the study objects
    and the assessment are of the right breast alone."""
    import mammo_scp.encode as encode

    study = _study()
    left = {str(ds.SOPInstanceUID) for ds in study if ds.ImageLaterality == "L"}
    real_build_seg = encode.build_seg

    def build_seg(source: Dataset, analysis: object) -> Dataset | None:
        seg = real_build_seg(source, analysis)  # type: ignore[arg-type]
        if seg is not None and analysis.sop_instance_uid in left:  # type: ignore[attr-defined]
            seg.add_new(0x00209161, "UI", 12345)  # an int where a UID string must be
        return seg

    monkeypatch.setattr(encode, "build_seg", build_seg)
    ctx = _run(tmp_path, study)
    assert set(ctx.skipped) == left
    assert ctx.assessment is not None and ctx.assessment.left is None
    assert ctx.assessment.summary() == "exam elevated (85%); right elevated (85%)"
    (report,) = [r.dataset for r in ctx.results if r.kind == "SR"]
    assert "AI mass assessment: exam elevated (85%); right elevated (85%)" in _texts(report)


def _texts(ds: Dataset) -> list[str]:
    """Every TEXT value anywhere in the content tree."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            found.append(str(item.TextValue))
        found += _texts(item)
    return found


class _Raising(StubAnalyzer):
    """Raises a BaseException that is not an Exception (as pyo3's PanicException) for one image."""

    def __init__(self, bad_uid: str) -> None:
        super().__init__()
        self.bad_uid = bad_uid

    def analyze(self, ds: Dataset, score_threshold: float | None = None):  # type: ignore[no-untyped-def]
        if str(ds.SOPInstanceUID) == self.bad_uid:
            raise type("PanicException", (BaseException,), {})("index out of bounds")
        return super().analyze(ds, score_threshold)


def test_a_base_exception_in_the_models_skips_only_that_image(tmp_path: Path) -> None:
    study = _study()
    ctx = _run(tmp_path, study, _Raising(str(study[1].SOPInstanceUID)))
    assert "PanicException: index out of bounds" in ctx.skipped[str(study[1].SOPInstanceUID)]
    assert len(ctx.analyses) == 3


def test_padding_detections_of_a_flat_grey_image_are_not_findings(tmp_path: Path) -> None:
    """Issue 25: a flat grey 425x266 MG image failed in encode ('box ... lies outside the
    266x425 image') because five boxes in the zero padding became findings."""
    ds = make_mg("R", "CC", study_uid=generate_uid(), spacing_mm=0.1,
                 pixels=np.full((425, 266), 2048, np.uint16))
    ctx = _run(tmp_path, [ds])
    assert ctx.skipped == {}
    analysis = ctx.analyses[str(ds.SOPInstanceUID)]
    for finding in analysis.findings:
        box = finding.box
        assert 0 <= box.x0 < box.x1 <= 266 and 0 <= box.y0 < box.y1 <= 425
    assert len(analysis.findings) <= 1  # the one on the image at most; none of the padding


def _no_spacing(ds: Dataset) -> None:
    del ds.ImagerPixelSpacing
    del ds.PixelSpacing


def _no_orientation(ds: Dataset) -> None:
    del ds.PatientOrientation


def _charset_999(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 999"


def _name_with_controls(ds: Dataset) -> None:
    ds.PatientName = "DOE\x00^JA\x1bNE\\X"


def _laterality_b_series_l(ds: Dataset) -> None:
    ds.ImageLaterality = "B"
    ds.Laterality = "L"


def _over_long_and_invalid(ds: Dataset) -> None:
    ds.StudyDescription = "x" * 200
    ds.AccessionNumber = "A" * 40
    ds.PatientSex = "Q"
    ds.StudyDate = "20261345"
    ds.PatientBirthDate = "1960-01-01"


def _pixel_spacing_zero(ds: Dataset) -> None:
    ds.PixelSpacing = [0, 0]


def _negative_numbers(ds: Dataset) -> None:
    ds.InstanceNumber = -5
    ds.BodyPartThickness = -3


def _over_long_code_meaning(ds: Dataset) -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "RPID1", "RADLEX"
    item.CodeMeaning = "Mammography screening, bilateral " * 4  # over 64 characters
    ds.ProcedureCodeSequence = [item]


HEADER_ODDITIES = [
    ("over-long CodeMeaning in ProcedureCodeSequence", _over_long_code_meaning),
    ("negative InstanceNumber and BodyPartThickness", _negative_numbers),
    ("no ImagerPixelSpacing nor PixelSpacing", _no_spacing),
    ("no PatientOrientation", _no_orientation),
    ("SpecificCharacterSet ISO_IR 999", _charset_999),
    ("PatientName with NUL, ESC, backslash", _name_with_controls),
    ("ImageLaterality B, Laterality L", _laterality_b_series_l),
    ("over-long and invalid values", _over_long_and_invalid),
    ("PixelSpacing 0", _pixel_spacing_zero),
]


@pytest.mark.parametrize("spoil", [c[1] for c in HEADER_ODDITIES],
                         ids=[c[0] for c in HEADER_ODDITIES])
def test_header_oddities_give_valid_results(tmp_path: Path,
                                            spoil: Callable[[Dataset], None]) -> None:
    """Issue 25: each of these failed the encode stage (or its objects failed dciodvfy)."""
    study = _study()
    for ds in study:
        spoil(ds)
    ctx = _run(tmp_path, study)
    assert ctx.skipped == {}
    kinds = sorted(r.kind for r in ctx.results)
    assert kinds == ["CAD_SR", "SEG", "SEG", "SEG", "SEG", "SR"]
    for number, result in enumerate(ctx.results):
        assert_dciodvfy_clean(result.dataset, tmp_path, f"{result.kind}-{number}.dcm")
        # what was valid is copied as it was
        assert result.dataset.StudyInstanceUID == study[0].StudyInstanceUID
        assert result.dataset.PatientID == study[0].PatientID
        if spoil is not _name_with_controls:
            assert result.dataset.PatientName == study[0].PatientName


def test_a_result_that_cannot_be_written_skips_its_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SEG pydicom cannot write fails in the encode stage, for its image only (it used to
    fail the whole job, later, when the worker wrote the results)."""
    import mammo_scp.encode as encode

    study = _study()
    bad_uid = str(study[2].SOPInstanceUID)
    real_build_seg = encode.build_seg

    def build_seg(source: Dataset, analysis: object) -> Dataset | None:
        seg = real_build_seg(source, analysis)  # type: ignore[arg-type]
        if seg is not None and analysis.sop_instance_uid == bad_uid:  # type: ignore[attr-defined]
            seg.add_new(0x00209161, "UI", 12345)  # an int where a UID string must be
        return seg

    monkeypatch.setattr(encode, "build_seg", build_seg)
    ctx = _run(tmp_path, study)
    assert list(ctx.skipped) == [bad_uid]
    assert "its SEG cannot be encoded" in ctx.skipped[bad_uid]
    assert [r.kind for r in ctx.results].count("SEG") == 3
    assert all(r.data for r in ctx.results)


def test_an_image_of_another_identity_is_left_out_not_the_study(tmp_path: Path) -> None:
    """An image whose Patient Name differs from the rest of its study (here the first one
    analysed) is skipped; the study's objects are made of the other four."""
    study = _study()
    odd = make_mg("R", "CC", study_uid=str(study[0].StudyInstanceUID), instance_number=5)
    odd.PatientName = "SOMEONE^ELSE"
    ctx = _run(tmp_path, [odd, *study])
    assert list(ctx.skipped) == [str(odd.SOPInstanceUID)]
    assert "Patient Name differs" in ctx.skipped[str(odd.SOPInstanceUID)]
    assert sorted(r.kind for r in ctx.results) == ["CAD_SR", "SEG", "SEG", "SEG", "SEG", "SR"]
