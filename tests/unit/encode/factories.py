"""Hand-made model outputs on synthetic MG images (no models needed)."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo
from tests.support.mg import FOUR_VIEWS, make_mg

SEGMENTER = ModelInfo("mass-unet", "1.2.0")
DETECTOR = ModelInfo("mass-frcnn", "0.9.1")
MIAS_SIZE = (1024, 1024)
FULL_FIELD_SIZE = (4096, 3328)  # Rows, Columns of a 24x30 cm full-field detector


def blank_mg(laterality: str, view: str, study_uid: str, rows: int, cols: int,
             instance_number: int = 1) -> Dataset:
    """An MG image with flat pixels: geometry tests need the grid, not the anatomy."""
    return make_mg(laterality, view, study_uid=study_uid, instance_number=instance_number,
                   pixels=np.full((rows, cols), 200, dtype=np.uint16))


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """A boolean mask that is True exactly on the pixels of ``box``."""
    mask = np.zeros(shape, dtype=bool)
    mask[int(box.y0):int(box.y1), int(box.x0):int(box.x1)] = True
    return mask


def analysis_for(source: Dataset, findings: tuple[Finding, ...] = (), *,
                 mask: np.ndarray | None = None, segmenter: ModelInfo = SEGMENTER,
                 detector: ModelInfo = DETECTOR) -> ImageAnalysis:
    shape = (int(source.Rows), int(source.Columns))
    if mask is None:
        mask = np.zeros(shape, dtype=bool)
        for finding in findings:
            mask |= box_mask(shape, finding.box)
    return ImageAnalysis(sop_instance_uid=str(source.SOPInstanceUID), mask=mask,
                         findings=findings, segmenter=segmenter, detector=detector)


def four_view(rows: int = 256, cols: int = 208) -> list[Dataset]:
    """RCC, LCC, RMLO, LMLO of one new study (from tests.support.mg)."""
    study_uid = generate_uid()
    return [make_mg(laterality, view, study_uid=study_uid, rows=rows, cols=cols,
                    instance_number=number, seed=number)
            for number, (laterality, view) in enumerate(FOUR_VIEWS, start=1)]


def round_trip(dataset: Dataset) -> bytes:
    """The bytes of ``dataset`` as a DICOM file (file meta enforced)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reread(dataset: Dataset) -> Dataset:
    return dcmread(BytesIO(round_trip(dataset)))


# Attributes that tests add to sources to check they are copied, beyond tests.support.mg.
EXTRA_PATIENT_STUDY = {
    "PatientAge": "066Y",
    "StudyDescription": "MAMMO SCREENING BILATERAL",
    "IssuerOfPatientID": "HOSP-A",
    "PatientWeight": "61.5",
}


def with_extra_identity(sources: list[Dataset]) -> list[Dataset]:
    for source in sources:
        for keyword, value in EXTRA_PATIENT_STUDY.items():
            setattr(source, keyword, value)
    return sources


IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    *EXTRA_PATIENT_STUDY,
)
