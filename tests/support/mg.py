"""Synthetic digital mammograms as real DICOM files, for tests.

The images are small by default (fast to send and process) but carry every
attribute a modality writes that the node relies on: patient/study identity,
laterality and view (both as attributes and as ViewCodeSequence), pixel
spacing, presentation intent and a VOI window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"

# SNOMED CT codes of ViewCodeSequence (CID 4014).
VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
FOUR_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


@dataclass(frozen=True)
class Patient:
    name: str = "TEST^JANE"
    patient_id: str = "PID-0001"
    birth_date: str = "19600101"


def breast_phantom(rows: int, cols: int, laterality: str, seed: int = 0,
                   bits: int = 12) -> np.ndarray:
    """A half-ellipse 'breast' on a dark background, chest wall on the image edge.

    Right breasts have the chest wall on the left edge of the image, as a
    modality displays them; left breasts the opposite.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cx = 0.0 if laterality == "R" else cols - 1.0
    inside = ((xx - cx) / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 <= 1.0
    top = (1 << bits) - 1
    img = np.full((rows, cols), 0.05 * top, dtype=np.float32)
    tissue = 0.45 * top + 0.1 * top * rng.standard_normal((rows, cols)).astype(np.float32)
    img[inside] = tissue[inside]
    return np.clip(img, 0, top).astype(np.uint16)


def add_mass(pixels: np.ndarray, centre_rc: tuple[int, int], radius: int,
             contrast: float = 0.35) -> np.ndarray:
    """Draw a bright, soft-edged round 'mass' (a fraction of the full scale) onto a copy."""
    rows, cols = pixels.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    d2 = (yy - centre_rc[0]) ** 2 + (xx - centre_rc[1]) ** 2
    blob = np.exp(-d2 / (2.0 * (radius / 1.5) ** 2))
    # The full scale of the data: 255 for 8-bit, else the smallest 2**n - 1 holding the
    # image (4095 for 12-bit data in uint16), so a 12-bit image never gets 16-bit values.
    if pixels.dtype == np.uint8:
        top = 255.0
    else:
        top = float((1 << max(int(pixels.max()), 1).bit_length()) - 1)
    out = pixels.astype(np.float64) + contrast * top * blob
    return np.clip(out, 0, top).astype(pixels.dtype)


def make_mg(
    laterality: str,
    view: str,
    *,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient: Patient = Patient(),
    rows: int = 256,
    cols: int = 208,
    pixels: np.ndarray | None = None,
    spacing_mm: float = 0.2,
    sop_class: str = MG_FOR_PRESENTATION,
    bits_stored: int = 12,
    instance_number: int = 1,
    seed: int = 0,
) -> Dataset:
    """One MG image as a complete dataset with file meta, ready to save or send."""
    if pixels is None:
        pixels = breast_phantom(rows, cols, laterality, seed=seed, bits=bits_stored)
    rows, cols = pixels.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261121"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "F"
    ds.Modality = "MG"
    ds.Manufacturer = "mammo-scp tests"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = (
        "FOR PROCESSING" if sop_class == MG_FOR_PROCESSING else "FOR PRESENTATION"
    )
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    code, meaning = VIEW_CODES[view]
    view_item = Dataset()
    view_item.CodeValue = code
    view_item.CodingSchemeDesignator = "SCT"
    view_item.CodeMeaning = meaning
    view_item.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view_item])
    ds.BodyPartExamined = "BREAST"
    ds.BodyPartThickness = 52  # compressed breast thickness, mm
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.DetectorType = "DIRECT"
    ds.AcquisitionContextSequence = Sequence()
    region = Dataset()
    region.CodeValue = "76752008"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Breast"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.BurnedInAnnotation = "NO"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (1 << bits_stored) // 2
    ds.WindowWidth = 1 << bits_stored
    ds.VOILUTFunction = "LINEAR"
    dtype = np.uint16 if ds.BitsAllocated == 16 else np.uint8
    ds.PixelData = pixels.astype(dtype).tobytes()
    return ds


def four_view_study(directory: Path, *, patient: Patient = Patient(), rows: int = 256,
                    cols: int = 208, seed: int = 0) -> tuple[str, list[Path]]:
    """Write RCC, LCC, RMLO and LMLO of a new study into ``directory``; return UID and files."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    paths = []
    for number, (laterality, view) in enumerate(FOUR_VIEWS, start=1):
        ds = make_mg(laterality, view, study_uid=study_uid, patient=patient, rows=rows,
                     cols=cols, instance_number=number, seed=seed + number)
        path = directory / f"{laterality}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths
