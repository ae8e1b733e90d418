"""TID 1500 Measurement Report (Comprehensive 3D SR), one per study.

Content, under the root "Imaging Measurement Report" (which OHIF reads):

* Image Library: every processed image, with laterality and view (highdicom's
  TID 1603 projection radiography descriptors).
* Per finding, two TID 1410 measurement groups with the same tracking
  identifier "Mass <n> <RCC|LMLO...>" and tracking UID, both with finding
  category "Morphologically abnormal structure", finding "Mass", finding site
  Breast with laterality, the detector as algorithm and the image region, a
  closed POLYLINE of the detection box:

  - the first says the finding in one line as a text qualitative evaluation,
    Comment (DCM 121106) ("Mass 1 LCC: probability of cancer 19%, certainty
    82%"), and holds no measurement;
  - the second holds the two measurements: Probability of cancer (DCM 111047,
    the detector's ``p_malignant``) and Certainty of Finding (DCM 111012, the
    detector's ``score``), both in percent (UCUM "%", as the Mammography CAD SR
    requires).

  OHIF (3.13) draws a finding from the groups of its tracking UID together (the
  box with the probabilities), and when the radiologist tracks the report it
  makes a measurement of each group whose place it can find: that of a group's
  first measurement (INFERRED FROM coordinates, which TID 1410 does not have), or
  the group's own region when it has no measurement. The first group is that
  one, so each finding becomes a row of OHIF's Measurements panel, labelled
  with its Comment; the second is skipped (a console warning).
* When a SEG was sent for that image and its mask overlaps the box, a third
  TID 1410 group with the same tracking identifier and UID references the SEG's
  segment 1 ("Mass", frame 1) instead of a region (TID 1410 allows one or the
  other).
* The study's breast and exam assessment, when given: its scores in the
  Derived Imaging Measurements container, its categories and one summary line in
  Qualitative Evaluations (:mod:`mammo_scp.encode.assessment`). Not as measurement
  groups: OHIF (3.13) cannot open a report holding a measurement group without an
  image region, and reads no other container.
* Nothing else: OHIF (3.13) cannot open a report without any finding either, so a
  study without findings gets no report (:func:`has_findings`).

SCOORD coordinates are source image pixels, column then row, with (0, 0) the
top left corner of the top left pixel (PS3.3 C.18.6.1.2). A
:class:`~mammo_scp.results.Box` has exclusive right/bottom edges in the same
convention, so its edges are written unchanged (clipped to the image).

The document is COMPLETE and UNVERIFIED: no human has signed it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as hd_codes

from mammo_scp.assessment import StudyAssessment
from mammo_scp.encode import codes
from mammo_scp.encode.assessment import check_assessment, measurement_report_containers
from mammo_scp.encode.common import (
    MANUFACTURER,
    SOFTWARE_VERSION,
    check_one_study,
    copy_patient_study,
    image_label,
    laterality_of,
    pair_analyses,
    single_model,
    valid_header,
    view_code_of,
)
from mammo_scp.encode.seg import SEGMENT_NUMBER
from mammo_scp.encode.uids import ObjectKind, SeriesNumber, derive_uid, model_key
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AI mass measurements"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def box_polyline(box: Box, rows: int, columns: int) -> np.ndarray:
    """The closed polyline (5 points, first == last) of ``box`` clipped to the image, (x, y)."""
    x0, x1 = float(np.clip(box.x0, 0, columns)), float(np.clip(box.x1, 0, columns))
    y0, y1 = float(np.clip(box.y0, 0, rows)), float(np.clip(box.y1, 0, rows))
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {box} lies outside the {columns}x{rows} image")
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def box_overlaps_mask(box: Box, mask: np.ndarray) -> bool:
    """True when the mask has a pixel inside the box (pixel centres inside the box)."""
    rows, columns = mask.shape
    r0, r1 = max(int(np.floor(box.y0)), 0), min(int(np.ceil(box.y1)), rows)
    c0, c1 = max(int(np.floor(box.x0)), 0), min(int(np.ceil(box.x1)), columns)
    return bool(mask[r0:r1, c0:c1].any())


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version)


def _percent(measurement: hd.sr.CodedConcept, fraction: float,
             algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=measurement, value=round(100.0 * fraction, 4),
                             unit=codes.PERCENT, algorithm_id=algorithm)


def finding_label(identifier: str, finding: Finding) -> str:
    """The finding's one-line summary (its tracking identifier, then its scores): what OHIF
    shows as its measurement's label."""
    return (f"{identifier}: probability of cancer {100 * finding.p_malignant:.0f}%, "
            f"certainty {100 * finding.score:.0f}%")


def _seg_by_source(segs: Sequence[Dataset], source_uids: set[str]) -> dict[str, Dataset]:
    """Map source SOP Instance UID -> its SEG, checking that each SEG is ours to reference."""
    by_source: dict[str, Dataset] = {}
    for seg in segs:
        if seg.get("SOPClassUID") != SEGMENTATION_STORAGE:
            raise ValueError(
                f"segs must be Segmentation objects, got SOP class {seg.get('SOPClassUID')}"
            )
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in seg.get("ReferencedSeriesSequence", [])
            for item in series.ReferencedInstanceSequence
        }
        if len(referenced) != 1 or not referenced <= source_uids:
            raise ValueError(
                f"segs: SEG {seg.SOPInstanceUID} references {sorted(referenced)}, "
                "not exactly one of the source images"
            )
        source_uid = referenced.pop()
        if source_uid in by_source:
            raise ValueError(f"segs: two SEGs reference source {source_uid}")
        by_source[source_uid] = seg
    return by_source


def _finding_groups(
    source: Dataset, analysis: ImageAnalysis, seg: Dataset | None, number: int, finding: Finding,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    laterality = laterality_of(source)
    identifier = f"Mass {number} {image_label(source)}"
    tracking = hd.sr.TrackingIdentifier(
        uid=derive_uid(ObjectKind.FINDING_TRACKING, str(source.SOPInstanceUID),
                       analysis.detector.name, analysis.detector.version, str(number)),
        identifier=identifier,
    )
    sites = [hd.sr.FindingSite(anatomic_location=codes.BREAST, laterality=laterality.code)]
    detector = _algorithm(analysis.detector)

    def with_region(**extra: Any) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        """A group of this finding with its box as the image region."""
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=box_polyline(finding.box, int(source.Rows), int(source.Columns)),
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=source.SOPClassUID,
                    referenced_sop_instance_uid=source.SOPInstanceUID,
                ),
            ),
            finding_type=codes.MASS,
            finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            algorithm_id=detector,
            finding_sites=sites,
            **extra,
        )

    # Where and what, said in one line (a text qualitative evaluation named Comment, DCM
    # 121106), without measurements: the group OHIF tracks (see the module's docstring).
    where = with_region()
    where[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.COMMENT, value=finding_label(identifier, finding),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    ))
    measured = with_region(measurements=[
        _percent(codes.PROBABILITY_OF_CANCER, finding.p_malignant, detector),
        _percent(codes.CERTAINTY_OF_FINDING, finding.score, detector),
    ])
    groups = [where, measured]
    if seg is not None and box_overlaps_mask(finding.box, analysis.mask):
        segment = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=1,
            segment_number=SEGMENT_NUMBER,
            source_image=hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            ),
        )
        # PS3.3 Table 10-3: Referenced Segment Number shall be absent when Referenced
        # Frame Number is present (dciodvfy enforces it); frame 1 of this BINARY SEG
        # holds exactly segment 1, so the frame identifies the segment.
        for item in segment[0].ReferencedSOPSequence:
            if "ReferencedSegmentNumber" in item:
                del item.ReferencedSegmentNumber
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=segment,
                finding_type=codes.MASS,
                finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                algorithm_id=_algorithm(analysis.segmenter),
                finding_sites=sites,
            )
        )
    return groups


def has_findings(analyses: Sequence[ImageAnalysis]) -> bool:
    """Whether a study's analyses give a Measurement Report anything to hold."""
    return any(analysis.findings for analysis in analyses)


def device_observer(detector: ModelInfo) -> hd.sr.ObserverContext:
    """The node as the device observer of the report (TID 1004)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(ObjectKind.DEVICE_OBSERVER, MANUFACTURER),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{detector.name} {detector.version}",
        ),
    )


#: TID 1603 descriptors highdicom requires of a projection image and writes from its
#: Patient Orientation and Imager Pixel Spacing.
_ORIENTATION_ITEMS = frozenset({hd_codes.DCM.PatientOrientationRow.value,
                                hd_codes.DCM.PatientOrientationColumn.value})
_SPACING_ITEMS = frozenset({hd_codes.DCM.HorizontalPixelSpacing.value,
                            hd_codes.DCM.VerticalPixelSpacing.value})


def _library_source(source: Dataset) -> Dataset:
    """``source`` as highdicom's Image Library reads it. highdicom requires Patient
    Orientation and Imager Pixel Spacing of a projection image; where the source has no
    valid one, a placeholder goes in, whose items :func:`_describe_library_images` removes."""
    library = _header_only(source)
    if "PatientOrientation" not in source:
        library.PatientOrientation = ["A", "R"]
    if "ImagerPixelSpacing" not in source:
        library.ImagerPixelSpacing = [0.1, 0.1]
    return library


def _describe_library_images(report: hd.sr.MeasurementReport, sources: Sequence[Dataset]) -> None:
    """Add Image Laterality and Image View (TID 1602/1603) to each Image Library entry,
    and remove the orientation and spacing items of images that have none (placeholders
    of :func:`_library_source`).

    highdicom's projection radiography descriptors stop at orientation and spacing;
    mammography readers need the laterality and view of every image.
    """
    by_uid = {str(source.SOPInstanceUID): source for source in sources}
    for item in report[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != codes.IMAGE_LIBRARY.value:
            continue
        for group in item.ContentSequence:
            for image in group.ContentSequence:
                if image.ValueType != "IMAGE":
                    continue
                source = by_uid[str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
                placeholders: set[str] = set()
                if "PatientOrientation" not in source:
                    placeholders |= _ORIENTATION_ITEMS
                if "ImagerPixelSpacing" not in source:
                    placeholders |= _SPACING_ITEMS
                if placeholders:
                    image.ContentSequence = [
                        item for item in image.ContentSequence
                        if item.ConceptNameCodeSequence[0].CodeValue not in placeholders]
                image.ContentSequence.append(hd.sr.CodeContentItem(
                    name=codes.IMAGE_LATERALITY, value=laterality_of(source).code,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                ))
                view = view_code_of(source)
                if view is not None:
                    image.ContentSequence.append(hd.sr.CodeContentItem(
                        name=codes.IMAGE_VIEW, value=view,
                        relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                    ))


def _header_only(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` without its bulk pixel data."""
    header = Dataset()
    header.update({tag: element for tag, element in ds.items()
                   if tag not in (0x7FE00010, 0x7FE00008, 0x7FE00009)})
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


def referenced_instances(content: Dataset) -> set[str]:
    """SOP Instance UIDs that IMAGE and COMPOSITE items anywhere under ``content`` reference."""
    found: set[str] = set()
    for item in content.get("ContentSequence", []):
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            found.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found |= referenced_instances(item)
    return found


def comprehensive_3d_sr(*, evidence: Sequence[Dataset], content: Dataset,
                        **kwargs: Any) -> hd.sr.Comprehensive3DSR:
    """highdicom's Comprehensive 3D SR of ``content``, without its copy of the content tree.

    highdicom deep-copies the tree, parses the copy back into content items (kept only
    for its ``content`` property) and searches it for references: about 40 ms of a
    report's 70 for a study with two findings. The tree here was built by
    highdicom's own template classes, which check it as they build it. So the document
    is made around the root item alone, and then takes the tree itself: the attributes
    written are the same (a test compares the two), and every instance the tree
    references must be in ``evidence``, as highdicom requires.
    """
    missing = referenced_instances(content) - {str(ds.SOPInstanceUID) for ds in evidence}
    if missing:
        raise ValueError(f"the report references instances not in its evidence: "
                         f"{sorted(missing)}")
    root = Dataset()
    root.update({tag: element for tag, element in content.items()
                 if tag != 0x0040A730})  # all but the Content Sequence...
    root.ContentSequence = []  # ...which highdicom requires
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=root, **kwargs)
    sr.ContentSequence = content.ContentSequence
    return sr


def build_measurement_report(
    sources: Sequence[Dataset], analyses: Sequence[ImageAnalysis], segs: Sequence[Dataset],
    assessment: StudyAssessment | None = None,
) -> Dataset:
    """The study's TID 1500 Measurement Report.

    Parameters
    ----------
    sources
        The study's processed MG images (one patient, one study).
    analyses
        One analysis per source image (matched by SOP Instance UID).
    segs
        The SEGs that :func:`~mammo_scp.encode.seg.build_seg` made for these images
        (images without a SEG are simply absent).
    assessment
        The study's breast and exam assessment (:func:`mammo_scp.assessment.assess` of
        these images), written as derived measurements and qualitative evaluations
        (:mod:`mammo_scp.encode.assessment`); none when omitted.

    Raises
    ------
    ValueError
        If sources mix studies, analyses and sources do not match one to one, the
        analyses come from different models, a SEG references something else, there
        is no finding to report, or the assessment is not that of these images.
    """
    sources = [valid_header(source) for source in sources]
    check_one_study(sources)
    pairs = pair_analyses(sources, analyses)
    if not has_findings(analyses):
        raise ValueError("no findings: a Measurement Report needs at least one")
    detector = single_model([analysis.detector for analysis in analyses], "detector")
    segmenter = single_model([analysis.segmenter for analysis in analyses], "segmenter")
    seg_of = _seg_by_source(segs, {str(source.SOPInstanceUID) for source in sources})
    if assessment is not None:
        check_assessment(assessment, pairs)

    study_uid = str(sources[0].StudyInstanceUID)
    models = model_key([(segmenter.name, segmenter.version), (detector.name, detector.version)])
    images = ",".join(sorted(str(source.SOPInstanceUID) for source in sources))
    # the assessment's thresholds shape the content: other thresholds, another object
    content = (images,) if assessment is None else (images, assessment.thresholds.key)

    # Only findings, each with its image region (see the module's docstring).
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for source, analysis in pairs:
        seg = seg_of.get(str(source.SOPInstanceUID))
        for number, finding in enumerate(analysis.findings, start=1):
            groups.extend(_finding_groups(source, analysis, seg, number, finding))

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(detector)
        ),
        procedure_reported=codes.MAMMOGRAPHY,
        imaging_measurements=groups,
        referenced_images=[_library_source(source) for source in sources],
    )
    _describe_library_images(report, sources)
    if assessment is not None:
        report[0].ContentSequence.extend(measurement_report_containers(assessment, detector))
    instance_uid = derive_uid(ObjectKind.SR_INSTANCE, study_uid, models, *content)
    sr = comprehensive_3d_sr(
        # Evidence needs only the identifying attributes; without the pixel data highdicom
        # does not copy megabytes per image.
        evidence=[_header_only(ds) for ds in (*sources, *segs)],
        content=report[0],
        series_instance_uid=derive_uid(ObjectKind.SR_SERIES, study_uid, models),
        series_number=int(SeriesNumber.MEASUREMENT_REPORT),
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        contributing_equipment=[hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=f"{detector.name} / {segmenter.name}",
            software_versions=[SOFTWARE_VERSION, detector.version, segmenter.version],
            contribution_description="AI mass detection and segmentation",
        )],
    )
    copy_patient_study(sources[0], sr)
    sr.SoftwareVersions = SOFTWARE_VERSION
    logger.info("built measurement report %s for study %s: %d groups", instance_uid, study_uid,
                len(groups))
    return sr
