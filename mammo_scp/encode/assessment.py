"""The study's breast- and exam-level assessment (:mod:`mammo_scp.assessment`) as SR content.

The same items in the Measurement Report and the "no finding" Enhanced SR:

* Impression Description (DCM 111033), TEXT, the assessment in one line: "AI mass
  assessment: exam elevated (41%); right elevated (41%), left low (3%)";
* per scope (the exam, then each breast), a TID 300 measurement Certainty of Finding
  (DCM 111012) in percent, the score: the detector's highest mass score there, whatever its
  finding threshold; finding site Breast, with the breast's laterality (none for the exam);
  the detector as algorithm;
* per scope, Assessment Category (DCM 111005), TEXT, the category (``low``,
  ``intermediate``, ``elevated``), with the same finding site.

In the Measurement Report (TID 1500) the measurements go in the Derived Imaging Measurements
container (DCM 126011) and the texts in Qualitative Evaluations (UMLS C0034375): neither is a
measurement group, which OHIF (3.13) reads only under Imaging Measurements. The Mammography
CAD SR says it its own way (:mod:`mammo_scp.encode.cad_sr`).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from mammo_scp.assessment import Assessment, Side, StudyAssessment, assess
from mammo_scp.encode import codes
from mammo_scp.encode.common import laterality_of
from mammo_scp.results import ImageAnalysis, ModelInfo

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def check_assessment(assessment: StudyAssessment,
                     pairs: Sequence[tuple[Dataset, ImageAnalysis]]) -> None:
    """Raise ValueError unless ``assessment`` is that of these images (each source with its
    analysis: their lateralities and mass scores, at the assessment's own thresholds)."""
    expected = assess([(laterality_of(source).value, analysis.mass_score)
                       for source, analysis in pairs], assessment.thresholds)
    if expected != assessment:
        raise ValueError(f"assessment ({assessment.summary()}) is not that of the analysed "
                         f"images ({expected.summary()})")


def summary_line(assessment: StudyAssessment) -> str:
    """What the Impression Description says."""
    return f"AI mass assessment: {assessment.summary()}"


def scopes(assessment: StudyAssessment) -> list[tuple[Side | None, Assessment]]:
    """The exam (no side), then each assessed breast."""
    return [(None, assessment.exam), *assessment.breasts()]


def _site(side: Side | None) -> hd.sr.FindingSite:
    if side is None:
        return hd.sr.FindingSite(anatomic_location=codes.BREAST)
    laterality = codes.RIGHT if side is Side.RIGHT else codes.LEFT
    return hd.sr.FindingSite(anatomic_location=codes.BREAST, laterality=laterality)


def score_measurements(assessment: StudyAssessment,
                       detector: ModelInfo) -> list[hd.sr.Measurement]:
    """One TID 300 Certainty of Finding (%) per scope."""
    algorithm = hd.sr.AlgorithmIdentification(name=detector.name, version=detector.version)
    return [hd.sr.Measurement(name=codes.CERTAINTY_OF_FINDING,
                              value=round(100.0 * found.score, 4), unit=codes.PERCENT,
                              finding_sites=[_site(side)], algorithm_id=algorithm)
            for side, found in scopes(assessment)]


def category_items(assessment: StudyAssessment) -> list[hd.sr.TextContentItem]:
    """One Assessment Category per scope, with its finding site."""
    items = []
    for side, found in scopes(assessment):
        item = hd.sr.TextContentItem(name=codes.ASSESSMENT_CATEGORY,
                                     value=found.category.value, relationship_type=CONTAINS)
        item.ContentSequence = hd.sr.ContentSequence([_site(side)])
        items.append(item)
    return items


def _summary_item(assessment: StudyAssessment) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=codes.IMPRESSION_DESCRIPTION,
                                 value=summary_line(assessment), relationship_type=CONTAINS)


def measurement_report_containers(assessment: StudyAssessment,
                                  detector: ModelInfo) -> list[hd.sr.ContainerContentItem]:
    """TID 1500's Derived Imaging Measurements and Qualitative Evaluations containers."""
    derived = hd.sr.ContainerContentItem(name=codes.DERIVED_IMAGING_MEASUREMENTS,
                                         relationship_type=CONTAINS)
    derived.ContentSequence = hd.sr.ContentSequence(
        [item for measurement in score_measurements(assessment, detector)
         for item in measurement])
    qualitative = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                             relationship_type=CONTAINS)
    qualitative.ContentSequence = hd.sr.ContentSequence(
        [_summary_item(assessment), *category_items(assessment)])
    return [derived, qualitative]


def enhanced_sr_items(assessment: StudyAssessment, detector: ModelInfo) -> list[Dataset]:
    """The same items, for a document without a template: straight under the root."""
    return [_summary_item(assessment),
            *[item for measurement in score_measurements(assessment, detector)
              for item in measurement],
            *category_items(assessment)]
