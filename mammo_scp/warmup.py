"""Warm-up at start: one synthetic mammogram through every step a study takes.

The first study after start paid ~0.7 s more than the rest (graph tracing, and the
first use of pydicom's pixel handlers, highdicom's SEG and SR builders and pydicom's
writer). :func:`warm_up` runs a made-up image through the same code before the node
says it is ready: decoding and preprocessing from DICOM, both models, a SEG and a
Measurement Report (with one made-up finding, whatever the models say), both
serialised. Then a full-field-sized image (4096 x 3328 at 0.07 mm) is analysed too: the
first full-field study after start otherwise paid ~0.4 s more, nearly all of it in reading,
decoding and preprocessing its first image (the process' first arrays of that size) and
~30 ms in the detector's first run at that input shape. With unet 1.0.0 that cost ~0.7 s at
start and ~200 MiB of peak memory in the worker (more with an ensemble: every member runs).
Nothing is stored, sent or recorded.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from mammo_scp.dicom import SopClass
from mammo_scp.results import Box, Finding

if TYPE_CHECKING:
    from mammo_scp.models.analyzer import Analyzer

#: Size and spacing of the made-up image: a mini-MIAS-sized breast.
ROWS, COLUMNS, SPACING_MM = 1024, 832, 0.2
#: Size and spacing of the full-field one (the largest common detector).
FULL_FIELD = (4096, 3328, 0.07)


def synthetic_mammogram(rows: int = ROWS, columns: int = COLUMNS,
                        spacing_mm: float = SPACING_MM) -> Dataset:
    """A right CC, For Presentation, 12-bit: a half-ellipse breast with one bright blob
    (8 mm radius)."""
    yy, xx = (axis.astype(np.float32) for axis in np.ogrid[0:rows, 0:columns])
    breast = (xx / (0.8 * columns)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 <= 1.0
    radius = 8.0 / spacing_mm
    blob = (xx - 0.35 * columns) ** 2 + (yy - 0.5 * rows) ** 2 <= radius ** 2
    pixels = np.where(breast, 1800, 200) + np.where(blob, 1200, 0)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(SopClass.MG_FOR_PRESENTATION.value)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SopClass.MG_FOR_PRESENTATION.value
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.StudyID = "WARMUP"
    ds.PatientName, ds.PatientID = "WARM^UP", "WARMUP"
    ds.PatientBirthDate, ds.PatientSex = "", "F"
    ds.Modality = "MG"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality, ds.ViewPosition = "R", "CC"
    ds.PatientOrientation = ["P", "L"]
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator = "399162004", "SCT"
    view.CodeMeaning = "cranio-caudal"
    ds.ViewCodeSequence = Sequence([view])
    ds.ImagerPixelSpacing = ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def warm_up(analyzer: Analyzer) -> None:
    """Run :func:`synthetic_mammogram` through analysis, both encoders and the writer, then
    a full-field-sized one through analysis."""
    from mammo_scp.encode import build_measurement_report, build_seg, save_result

    source = synthetic_mammogram()
    analysis = analyzer.analyze(source)
    mask = np.zeros((ROWS, COLUMNS), dtype=bool)
    mask[472:552, 251:331] = True
    analysis = replace(analysis, mask=mask, findings=(
        Finding(Box(251.0, 472.0, 331.0, 552.0), score=0.5, p_malignant=0.5),))
    encode_log = logging.getLogger("mammo_scp.encode")
    level = encode_log.level
    encode_log.setLevel(logging.WARNING)  # no "built ..." lines for a made-up study
    try:
        seg = build_seg(source, analysis)
        segs = [seg] if seg is not None else []
        report = build_measurement_report([source], [analysis], segs)
    finally:
        encode_log.setLevel(level)
    for result in (*segs, report):
        save_result(result, io.BytesIO())
    analyzer.analyze(synthetic_mammogram(*FULL_FIELD))


__all__ = ["synthetic_mammogram", "warm_up"]
