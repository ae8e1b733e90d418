"""An explicit "analysed, no finding" answer for a study in which the models find nothing.

A study with findings gets the TID 1500 Measurement Report; one without gets nothing from
it, because OHIF (3.13) cannot open a TID 1500 report without a finding
(:mod:`mammo_scp.encode.sr`). So that "the AI looked and found nothing" is told apart from
"the AI never ran", such a study gets this small Enhanced SR instead: not a TID 1500
report (its title is not "Imaging Measurement Report"), which OHIF shows as text.

Content, under the root container "Diagnostic Imaging Report" (LOINC 18748-4, CID 7000):

* the device observer (TID 1004), as in the Measurement Report;
* CAD Processing and Findings Summary (DCM 111017) = "All algorithms succeeded; without
  findings" (DCM 111241), the code the Mammography CAD SR uses for the same statement;
* a Comment (DCM 121106) in one line: "No finding: AI mass detection and segmentation
  analysed 4 images (RCC, LCC, RMLO, LMLO) with mass-frcnn 0.9.1 and mass-unet 1.2.0";
* for each model, Algorithm Name (DCM 111001) and Algorithm Version (DCM 111003);
* the study's breast and exam assessment, when given: one Impression Description line,
  per scope a Certainty of Finding (%) and an Assessment Category
  (:mod:`mammo_scp.encode.assessment`).

The analysed images are listed as evidence (Current Requested Procedure Evidence
Sequence). COMPLETE and UNVERIFIED: no human has signed it. Series "AI mass analysis",
series number :attr:`SeriesNumber.NO_FINDINGS`, instance number 1; UIDs derived from the
study, both models, the analysed images and the assessment's thresholds, as the
Measurement Report's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from mammo_scp.assessment import StudyAssessment
from mammo_scp.encode import codes
from mammo_scp.encode.assessment import check_assessment, enhanced_sr_items
from mammo_scp.encode.common import (
    MANUFACTURER,
    SOFTWARE_VERSION,
    check_one_study,
    copy_patient_study,
    image_label,
    pair_analyses,
    single_model,
    valid_header,
)
from mammo_scp.encode.sr import device_observer, has_findings
from mammo_scp.encode.uids import ObjectKind, SeriesNumber, derive_uid, model_key
from mammo_scp.results import ImageAnalysis, ModelInfo

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AI mass analysis"


def no_findings_comment(sources: Sequence[Dataset], detector: ModelInfo,
                        segmenter: ModelInfo) -> str:
    """The report's one-line statement: no finding, on which images, by which models."""
    labels = ", ".join(image_label(source) for source in sources)
    return (f"No finding: AI mass detection and segmentation analysed {len(sources)} "
            f"image(s) ({labels}) with {detector.name} {detector.version} and "
            f"{segmenter.name} {segmenter.version}")


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value,
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def build_no_findings_report(sources: Sequence[Dataset], analyses: Sequence[ImageAnalysis],
                             assessment: StudyAssessment | None = None) -> hd.sr.EnhancedSR:
    """The Enhanced SR saying that the study's images were analysed, by which models,
    and that nothing was found; with the study's breast and exam ``assessment`` when given
    (:mod:`mammo_scp.encode.assessment`).

    Raises
    ------
    ValueError
        If sources mix studies, analyses and sources do not match one to one, the
        analyses come from different models, an analysis has a finding (that study
        gets a Measurement Report instead), or the assessment is not that of these images.
    """
    sources = [valid_header(source) for source in sources]
    check_one_study(sources)
    pairs = pair_analyses(sources, analyses)
    if has_findings(analyses):
        raise ValueError("analyses hold findings: such a study gets a Measurement Report")
    detector = single_model([analysis.detector for analysis in analyses], "detector")
    segmenter = single_model([analysis.segmenter for analysis in analyses], "segmenter")
    if assessment is not None:
        check_assessment(assessment, pairs)

    root = hd.sr.ContainerContentItem(name=codes.DIAGNOSTIC_IMAGING_REPORT)
    items: list[Dataset] = [*device_observer(detector)]
    items.append(hd.sr.CodeContentItem(
        name=codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY,
        value=codes.ALL_ALGORITHMS_SUCCEEDED_WITHOUT_FINDINGS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    ))
    items.append(_text(codes.COMMENT, no_findings_comment(sources, detector, segmenter)))
    for model in (detector, segmenter):
        items.append(_text(codes.ALGORITHM_NAME, model.name))
        items.append(_text(codes.ALGORITHM_VERSION, model.version))
    if assessment is not None:
        items.extend(enhanced_sr_items(assessment, detector))
    root.ContentSequence = DicomSequence(items)

    study_uid = str(sources[0].StudyInstanceUID)
    models = model_key([(segmenter.name, segmenter.version), (detector.name, detector.version)])
    images = ",".join(sorted(str(source.SOPInstanceUID) for source in sources))
    # the assessment's thresholds shape the content: other thresholds, another object
    content = (images,) if assessment is None else (images, assessment.thresholds.key)
    instance_uid = derive_uid(ObjectKind.NO_FINDINGS_INSTANCE, study_uid, models, *content)
    sr = hd.sr.EnhancedSR(
        evidence=sources,
        content=root,
        series_instance_uid=derive_uid(ObjectKind.NO_FINDINGS_SERIES, study_uid, models),
        series_number=int(SeriesNumber.NO_FINDINGS),
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
    )
    copy_patient_study(sources[0], sr)
    sr.SoftwareVersions = SOFTWARE_VERSION
    logger.info("built no-findings report %s for study %s (%d images)", instance_uid,
                study_uid, len(sources))
    return sr
