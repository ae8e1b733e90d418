"""Every coded concept the encoders write, defined once.

SNOMED CT concepts use the current ``SCT`` designator (never the retired
``SRT`` codes); DICOM concepts use ``DCM``. Values and meanings follow
PS3.16 (checked against pydicom's code dictionary, which is generated from it).
Meanings are typed out here rather than taken from pydicom's dictionary
because some of its meanings contain zero-width spaces from the standard's
HTML (e.g. "Individual Impression/Recommendation").
"""

from __future__ import annotations

from enum import Enum

from highdicom.sr import CodedConcept


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="DCM", meaning=meaning)


def _ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


# --- What was found (CID 7150 category, CID 7151/6014 type) --------------------
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically abnormal structure")
MASS = _sct("4147007", "Mass")

# --- Where (CID 4031 region, CID 244 laterality) -------------------------------
BREAST = _sct("76752008", "Breast")
RIGHT = _sct("24028007", "Right")
LEFT = _sct("7771000", "Left")

# --- Procedure reported (CID 100) ---------------------------------------------
MAMMOGRAPHY = _sct("71651007", "Mammography")

# --- Document title (CID 7000) -------------------------------------------------
DIAGNOSTIC_IMAGING_REPORT = CodedConcept(value="18748-4", scheme_designator="LN",
                                         meaning="Diagnostic Imaging Report")

# --- Algorithm and equipment --------------------------------------------------
ARTIFICIAL_INTELLIGENCE = _dcm("123110", "Artificial Intelligence")  # CID 7162 family
PROCESSING_EQUIPMENT = _dcm("109102", "Processing Equipment")  # CID 7005 purpose

# --- Measurements --------------------------------------------------------------
PROBABILITY_OF_CANCER = _dcm("111047", "Probability of cancer")
CERTAINTY_OF_FINDING = _dcm("111012", "Certainty of Finding")
#: A finding's one-line summary (TID 1501 row 12, a qualitative evaluation as text).
COMMENT = _dcm("121106", "Comment")

# --- Breast- and exam-level assessment (mammo_scp.assessment) ---------------------
#: TID 1500's container of measurements that are not of one image region (TID 300 items).
DERIVED_IMAGING_MEASUREMENTS = _dcm("126011", "Derived Imaging Measurements")
#: TID 1500's container of qualitative evaluations (CODE and TEXT items).
QUALITATIVE_EVALUATIONS = CodedConcept(value="C0034375", scheme_designator="UMLS",
                                       meaning="Qualitative Evaluations")
#: A breast's or the exam's category (low / intermediate / elevated), as text.
ASSESSMENT_CATEGORY = _dcm("111005", "Assessment Category")
#: The assessment in one line (TID 4002 row 5 in the Mammography CAD SR).
IMPRESSION_DESCRIPTION = _dcm("111033", "Impression Description")
#: Concept modifier naming a breast (TID 4002).
LATERALITY = _sct("272741003", "Laterality")

# --- Units ---------------------------------------------------------------------
NO_UNITS = _ucum("1", "no units")
PERCENT = _ucum("%", "Percent")
MILLIMETRE = _ucum("mm", "mm")

# --- Mammography CAD SR (TID 4000 family) --------------------------------------
MAMMOGRAPHY_CAD_REPORT = _dcm("111036", "Mammography CAD Report")
IMAGE_LIBRARY = _dcm("111028", "Image Library")
IMAGE_LATERALITY = _dcm("111027", "Image Laterality")
IMAGE_VIEW = _dcm("111031", "Image View")
STUDY_DATE = _dcm("111060", "Study Date")
HORIZONTAL_PIXEL_SPACING = _dcm("111026", "Horizontal Pixel Spacing")
VERTICAL_PIXEL_SPACING = _dcm("111066", "Vertical Pixel Spacing")
PATIENT_ORIENTATION_ROW = _dcm("111044", "Patient Orientation Row")
PATIENT_ORIENTATION_COLUMN = _dcm("111043", "Patient Orientation Column")
CAD_PROCESSING_AND_FINDINGS_SUMMARY = _dcm("111017", "CAD Processing and Findings Summary")
ALL_ALGORITHMS_SUCCEEDED_WITH_FINDINGS = _dcm("111242", "All algorithms succeeded; with findings")
ALL_ALGORITHMS_SUCCEEDED_WITHOUT_FINDINGS = _dcm(
    "111241", "All algorithms succeeded; without findings"
)
INDIVIDUAL_IMPRESSION_RECOMMENDATION = _dcm("111034", "Individual Impression/Recommendation")
SINGLE_IMAGE_FINDING = _dcm("111059", "Single Image Finding")
RENDERING_INTENT = _dcm("111056", "Rendering Intent")
PRESENTATION_REQUIRED = _dcm(
    "111150", "Presentation Required: Rendering device is expected to present"
)
CENTER = _dcm("111010", "Center")
OUTLINE = _dcm("111041", "Outline")
ALGORITHM_NAME = _dcm("111001", "Algorithm Name")
ALGORITHM_VERSION = _dcm("111003", "Algorithm Version")
SUMMARY_OF_DETECTIONS = _dcm("111064", "Summary of Detections")
SUMMARY_OF_ANALYSES = _dcm("111065", "Summary of Analyses")
SUCCESSFUL_DETECTIONS = _dcm("111063", "Successful Detections")
DETECTION_PERFORMED = _dcm("111022", "Detection Performed")
SUCCEEDED = _dcm("111222", "Succeeded")
NOT_ATTEMPTED = _dcm("111225", "Not Attempted")

# --- Observer context (TID 1002 / TID 1004) --------------------------------------
OBSERVER_TYPE = _dcm("121005", "Observer Type")
DEVICE = _dcm("121007", "Device")
DEVICE_OBSERVER_UID = _dcm("121012", "Device Observer UID")
DEVICE_OBSERVER_NAME = _dcm("121013", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = _dcm("121014", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = _dcm("121015", "Device Observer Model Name")


class Laterality(Enum):
    """Laterality of a breast image, as ImageLaterality (0020,0062) writes it."""

    RIGHT = "R"
    LEFT = "L"

    @property
    def code(self) -> CodedConcept:
        """The SNOMED CT laterality qualifier (CID 244)."""
        return RIGHT if self is Laterality.RIGHT else LEFT

    @property
    def word(self) -> str:
        return "Right" if self is Laterality.RIGHT else "Left"
