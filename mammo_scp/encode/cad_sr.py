"""Mammography CAD SR (TID 4000, SOP class 1.2.840.10008.5.1.4.1.1.88.50), one per study.

highdicom has no template for this object, so the content tree is built here
from plain pydicom datasets, following PS3.16 TID 4000 and the examples of
PS3.17 Annex E::

    CONTAINER Mammography CAD Report                              TID 4000
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/
                       Manufacturer/Model Name                    TID 1002/1004
      CONTAINS CONTAINER Image Library
        CONTAINS IMAGE <each MG image>                            TID 4020
          HAS ACQ CONTEXT Image Laterality, Image View, Study Date,
                          Patient Orientation Row/Column, Horizontal/Vertical
                          Pixel Spacing
      CONTAINS CODE CAD Processing and Findings Summary
                    = All algorithms succeeded; with/without findings  TID 4001
        HAS PROPERTIES TEXT Impression Description = the assessment   TID 4002
                              in one line ("AI mass assessment: exam elevated (41%); ...")
        HAS PROPERTIES TEXT Algorithm Name, Algorithm Version         TID 4019
        HAS PROPERTIES NUM Certainty of Finding (%) = the exam's score
        HAS PROPERTIES NUM Certainty of Finding (%) = a breast's score
          HAS CONCEPT MOD CODE Laterality = Right | Left
        INFERRED FROM CONTAINER Individual Impression/Recommendation  TID 4003
          HAS CONCEPT MOD Rendering Intent = Presentation Required
          CONTAINS CODE Single Image Finding = Mass               TID 4006
            HAS CONCEPT MOD Rendering Intent = Presentation Required
            HAS CONCEPT MOD Algorithm Name, Algorithm Version     TID 4019
            HAS PROPERTIES NUM Certainty of Finding (%)  = detector score
            HAS PROPERTIES NUM Probability of cancer (%) = p_malignant
            HAS PROPERTIES SCOORD Center (POINT)                  TID 4021
              R-SELECTED FROM <the image's library entry>
            HAS PROPERTIES SCOORD Outline (closed POLYLINE of the box)
              R-SELECTED FROM <the image's library entry>
      CONTAINS CODE Summary of Detections = Succeeded             TID 4015
        INFERRED FROM CONTAINER Successful Detections
          CONTAINS CODE Detection Performed = Mass                TID 4017
            HAS CONCEPT MOD Algorithm Name, Algorithm Version
            R-INFERRED FROM <every image library entry>
      CONTAINS CODE Summary of Analyses = Not Attempted           TID 4016

Coordinates are source pixels (column, row) with (0, 0) the top left corner of
the top left pixel, as in the Measurement Report. The document is COMPLETE and
UNVERIFIED. UIDs derive from the study, the detector version, the images and (with an
assessment) its thresholds. The assessment's lines are present only when it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from mammo_scp.assessment import Side, StudyAssessment
from mammo_scp.encode import codes
from mammo_scp.encode.assessment import check_assessment, scopes, summary_line
from mammo_scp.encode.common import (
    MANUFACTURER,
    SOFTWARE_VERSION,
    check_one_study,
    copy_patient_study,
    laterality_of,
    pair_analyses,
    single_model,
    valid_header,
    view_code_of,
)
from mammo_scp.encode.sr import box_polyline
from mammo_scp.encode.uids import ObjectKind, SeriesNumber, derive_uid, model_key
from mammo_scp.results import Finding, ImageAnalysis, ModelInfo

logger = logging.getLogger(__name__)

MAMMOGRAPHY_CAD_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.50")
SERIES_DESCRIPTION = "AI mammography CAD"
TEMPLATE_ID = "4000"

# Relationship types (PS3.3 C.17.3.2.4).
CONTAINS = "CONTAINS"
HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
HAS_ACQ_CONTEXT = "HAS ACQ CONTEXT"
HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
HAS_PROPERTIES = "HAS PROPERTIES"
INFERRED_FROM = "INFERRED FROM"
SELECTED_FROM = "SELECTED FROM"

def _code_dataset(code: CodedConcept) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _item(relationship: str | None, value_type: str, name: CodedConcept | None) -> Dataset:
    item = Dataset()
    if relationship is not None:
        item.RelationshipType = relationship
    item.ValueType = value_type
    if name is not None:
        item.ConceptNameCodeSequence = DicomSequence([_code_dataset(name)])
    return item


def _children(item: Dataset, children: Sequence[Dataset]) -> Dataset:
    """Attach ``children``; an item without children has no (empty) Content Sequence."""
    if children:
        item.ContentSequence = DicomSequence(list(children))
    return item


def _container(relationship: str | None, name: CodedConcept) -> Dataset:
    item = _item(relationship, "CONTAINER", name)
    item.ContinuityOfContent = "SEPARATE"
    return item


def _code(relationship: str, name: CodedConcept, value: CodedConcept) -> Dataset:
    item = _item(relationship, "CODE", name)
    item.ConceptCodeSequence = DicomSequence([_code_dataset(value)])
    return item


def _text(relationship: str, name: CodedConcept, value: str) -> Dataset:
    item = _item(relationship, "TEXT", name)
    item.TextValue = value
    return item


def _uidref(relationship: str, name: CodedConcept, value: str) -> Dataset:
    item = _item(relationship, "UIDREF", name)
    item.UID = value
    return item


def _date(relationship: str, name: CodedConcept, value: str) -> Dataset:
    item = _item(relationship, "DATE", name)
    item.Date = value
    return item


def _num(relationship: str, name: CodedConcept, value: float, unit: CodedConcept) -> Dataset:
    item = _item(relationship, "NUM", name)
    measured = Dataset()
    measured.NumericValue = format_number_as_ds(float(value))
    measured.MeasurementUnitsCodeSequence = DicomSequence([_code_dataset(unit)])
    item.MeasuredValueSequence = DicomSequence([measured])
    return item


def _scoord(relationship: str, name: CodedConcept, graphic_type: str,
            points: Sequence[tuple[float, float]]) -> Dataset:
    item = _item(relationship, "SCOORD", name)
    item.GraphicType = graphic_type
    item.GraphicData = [float(v) for point in points for v in point]
    return item


def _by_reference(relationship: str, position: Sequence[int]) -> Dataset:
    """A by-reference relationship to the content item at ``position`` (1-based path)."""
    item = Dataset()
    item.RelationshipType = relationship
    item.ReferencedContentItemIdentifier = [int(p) for p in position]
    return item


def _algorithm_items(model: ModelInfo) -> list[Dataset]:
    """TID 4019 CAD Algorithm Identification."""
    return [
        _text(HAS_CONCEPT_MOD, codes.ALGORITHM_NAME, model.name),
        _text(HAS_CONCEPT_MOD, codes.ALGORITHM_VERSION, model.version),
    ]


def _library_entry(source: Dataset) -> Dataset:
    """TID 4020 CAD Image Library Entry: the image with its acquisition context."""
    image = _item(CONTAINS, "IMAGE", None)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.ReferencedSOPSequence = DicomSequence([reference])
    context = [_code(HAS_ACQ_CONTEXT, codes.IMAGE_LATERALITY, laterality_of(source).code)]
    view = view_code_of(source)
    if view is None:
        raise ValueError(
            f"source {source.SOPInstanceUID} has no ViewCodeSequence; "
            "the Mammography CAD SR needs the image view"
        )
    context.append(_code(HAS_ACQ_CONTEXT, codes.IMAGE_VIEW, view))
    orientation = source.get("PatientOrientation")
    if orientation and len(orientation) == 2:
        context.append(_text(HAS_ACQ_CONTEXT, codes.PATIENT_ORIENTATION_ROW, str(orientation[0])))
        context.append(
            _text(HAS_ACQ_CONTEXT, codes.PATIENT_ORIENTATION_COLUMN, str(orientation[1]))
        )
    if source.get("StudyDate"):
        context.append(_date(HAS_ACQ_CONTEXT, codes.STUDY_DATE, str(source.StudyDate)))
    spacing = source.get("ImagerPixelSpacing") or source.get("PixelSpacing")
    if spacing:
        # Pixel spacing is (row spacing = vertical, column spacing = horizontal).
        context.append(_num(HAS_ACQ_CONTEXT, codes.HORIZONTAL_PIXEL_SPACING, float(spacing[1]),
                            codes.MILLIMETRE))
        context.append(_num(HAS_ACQ_CONTEXT, codes.VERTICAL_PIXEL_SPACING, float(spacing[0]),
                            codes.MILLIMETRE))
    return _children(image, context)


def _single_image_finding(source: Dataset, finding: Finding, detector: ModelInfo,
                          image_position: Sequence[int]) -> Dataset:
    """TID 4003 Individual Impression/Recommendation holding one TID 4006 Single Image Finding."""
    centre_x, centre_y = finding.box.centre
    outline = box_polyline(finding.box, int(source.Rows), int(source.Columns))
    centre = _children(
        _scoord(HAS_PROPERTIES, codes.CENTER, "POINT", [(centre_x, centre_y)]),
        [_by_reference(SELECTED_FROM, image_position)],
    )
    outline_item = _children(
        _scoord(HAS_PROPERTIES, codes.OUTLINE, "POLYLINE",
                [(float(x), float(y)) for x, y in outline]),
        [_by_reference(SELECTED_FROM, image_position)],
    )
    single = _children(_code(CONTAINS, codes.SINGLE_IMAGE_FINDING, codes.MASS), [
        _code(HAS_CONCEPT_MOD, codes.RENDERING_INTENT, codes.PRESENTATION_REQUIRED),
        *_algorithm_items(detector),
        _num(HAS_PROPERTIES, codes.CERTAINTY_OF_FINDING, round(100.0 * finding.score, 4),
             codes.PERCENT),
        _num(HAS_PROPERTIES, codes.PROBABILITY_OF_CANCER, round(100.0 * finding.p_malignant, 4),
             codes.PERCENT),
        centre,
        outline_item,
    ])
    return _children(_container(INFERRED_FROM, codes.INDIVIDUAL_IMPRESSION_RECOMMENDATION), [
        _code(HAS_CONCEPT_MOD, codes.RENDERING_INTENT, codes.PRESENTATION_REQUIRED),
        single,
    ])


def _observer_items(detector: ModelInfo) -> list[Dataset]:
    return [
        _code(HAS_OBS_CONTEXT, codes.OBSERVER_TYPE, codes.DEVICE),
        _uidref(HAS_OBS_CONTEXT, codes.DEVICE_OBSERVER_UID,
                derive_uid(ObjectKind.DEVICE_OBSERVER, MANUFACTURER)),
        _text(HAS_OBS_CONTEXT, codes.DEVICE_OBSERVER_NAME, MANUFACTURER),
        _text(HAS_OBS_CONTEXT, codes.DEVICE_OBSERVER_MANUFACTURER, MANUFACTURER),
        _text(HAS_OBS_CONTEXT, codes.DEVICE_OBSERVER_MODEL_NAME,
              f"{detector.name} {detector.version}"),
    ]


def _document_modules(sr: Dataset, sources: Sequence[Dataset], instance_uid: UID,
                      series_uid: UID) -> None:
    """SOP Common, SR Document Series, General Equipment and SR Document General."""
    now = datetime.now()
    first = sources[0]
    sr.SOPClassUID = MAMMOGRAPHY_CAD_SR_STORAGE
    sr.SOPInstanceUID = instance_uid
    sr.InstanceCreationDate = now.strftime("%Y%m%d")
    sr.InstanceCreationTime = now.strftime("%H%M%S")
    sr.Modality = "SR"
    sr.SeriesInstanceUID = series_uid
    sr.SeriesNumber = int(SeriesNumber.CAD_SR)
    sr.SeriesDescription = SERIES_DESCRIPTION
    sr.ReferencedPerformedProcedureStepSequence = DicomSequence()
    sr.Manufacturer = MANUFACTURER
    sr.SoftwareVersions = SOFTWARE_VERSION
    sr.InstanceNumber = 1
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "UNVERIFIED"
    sr.ContentDate = now.strftime("%Y%m%d")
    sr.ContentTime = now.strftime("%H%M%S")
    sr.PerformedProcedureCodeSequence = DicomSequence()
    # Every image the content references, grouped by series (Hierarchical SOP Instance
    # Reference Macro).
    series_items: dict[str, Dataset] = {}
    for source in sources:
        series_uid_of_source = str(source.SeriesInstanceUID)
        if series_uid_of_source not in series_items:
            series_item = Dataset()
            series_item.SeriesInstanceUID = series_uid_of_source
            series_item.ReferencedSOPSequence = DicomSequence()
            series_items[series_uid_of_source] = series_item
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        series_items[series_uid_of_source].ReferencedSOPSequence.append(reference)
    study_item = Dataset()
    study_item.StudyInstanceUID = first.StudyInstanceUID
    study_item.ReferencedSeriesSequence = DicomSequence(list(series_items.values()))
    sr.CurrentRequestedProcedureEvidenceSequence = DicomSequence([study_item])


def _impression_body(assessment: StudyAssessment, detector: ModelInfo) -> list[Dataset]:
    """TID 4002 Impression/Recommendation Body of the overall impression: the assessment in
    one line (Impression Description), the detector (TID 4019), and per scope its score as
    Certainty of Finding (%), a breast's with its Laterality."""
    body = [_text(HAS_PROPERTIES, codes.IMPRESSION_DESCRIPTION, summary_line(assessment)),
            _text(HAS_PROPERTIES, codes.ALGORITHM_NAME, detector.name),
            _text(HAS_PROPERTIES, codes.ALGORITHM_VERSION, detector.version)]
    for side, found in scopes(assessment):
        score = _num(HAS_PROPERTIES, codes.CERTAINTY_OF_FINDING, round(100.0 * found.score, 4),
                     codes.PERCENT)
        if side is not None:
            laterality = codes.RIGHT if side is Side.RIGHT else codes.LEFT
            _children(score, [_code(HAS_CONCEPT_MOD, codes.LATERALITY, laterality)])
        body.append(score)
    return body


def build_cad_sr(sources: Sequence[Dataset], analyses: Sequence[ImageAnalysis],
                 assessment: StudyAssessment | None = None) -> Dataset:
    """The study's Mammography CAD SR: image library, processing summary (with the study's
    breast and exam ``assessment`` as its impression body, when given) and mass findings.

    Raises
    ------
    ValueError
        If sources mix studies, sources and analyses do not match one to one, the
        analyses come from different detectors, an image lacks laterality or view, or
        the assessment is not that of these images.
    """
    sources = [valid_header(source) for source in sources]
    check_one_study(sources)
    pairs = pair_analyses(sources, analyses)
    detector = single_model([analysis.detector for analysis in analyses], "detector")
    if assessment is not None:
        check_assessment(assessment, pairs)

    observer = _observer_items(detector)
    library = _container(CONTAINS, codes.IMAGE_LIBRARY)
    _children(library, [_library_entry(source) for source in sources])
    # By-reference targets: root is 1, the library follows the observer items.
    library_position = len(observer) + 1
    position_of = {
        str(source.SOPInstanceUID): (1, library_position, index)
        for index, source in enumerate(sources, start=1)
    }

    impressions = [
        _single_image_finding(source, finding, detector, position_of[str(source.SOPInstanceUID)])
        for source, analysis in pairs
        for finding in analysis.findings
    ]
    summary_value = (codes.ALL_ALGORITHMS_SUCCEEDED_WITH_FINDINGS if impressions
                     else codes.ALL_ALGORITHMS_SUCCEEDED_WITHOUT_FINDINGS)
    body = _impression_body(assessment, detector) if assessment is not None else []
    summary = _children(
        _code(CONTAINS, codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY, summary_value),
        [*body, *impressions],
    )
    detection = _children(_code(CONTAINS, codes.DETECTION_PERFORMED, codes.MASS), [
        *_algorithm_items(detector),
        *[_by_reference(INFERRED_FROM, position_of[str(source.SOPInstanceUID)])
          for source in sources],
    ])
    detections = _children(_code(CONTAINS, codes.SUMMARY_OF_DETECTIONS, codes.SUCCEEDED), [
        _children(_container(INFERRED_FROM, codes.SUCCESSFUL_DETECTIONS), [detection]),
    ])
    analyses_summary = _code(CONTAINS, codes.SUMMARY_OF_ANALYSES, codes.NOT_ATTEMPTED)

    study_uid = str(sources[0].StudyInstanceUID)
    models = model_key([(detector.name, detector.version)])
    images = ",".join(sorted(str(source.SOPInstanceUID) for source in sources))
    # the assessment's thresholds shape the content: other thresholds, another object
    content = (images,) if assessment is None else (images, assessment.thresholds.key)
    instance_uid = derive_uid(ObjectKind.CAD_SR_INSTANCE, study_uid, models, *content)

    sr = Dataset()
    copy_patient_study(sources[0], sr)
    _document_modules(sr, sources, instance_uid,
                      derive_uid(ObjectKind.CAD_SR_SERIES, study_uid, models))
    # SR Document Content: the root container.
    sr.ValueType = "CONTAINER"
    sr.ConceptNameCodeSequence = DicomSequence([_code_dataset(codes.MAMMOGRAPHY_CAD_REPORT)])
    sr.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = TEMPLATE_ID
    sr.ContentTemplateSequence = DicomSequence([template])
    sr.ContentSequence = DicomSequence([
        *observer, library, summary, detections, analyses_summary,
    ])

    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = MAMMOGRAPHY_CAD_SR_STORAGE
    sr.file_meta.MediaStorageSOPInstanceUID = instance_uid
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    logger.info("built Mammography CAD SR %s for study %s: %d findings", instance_uid,
                study_uid, len(impressions))
    return sr
