"""Warm-up at start: one synthetic mammogram through every step a study takes.

The first study after start paid ~0.7 s more than the rest (graph tracing, and the
first use of pydicom's pixel handlers, highdicom's SEG and SR builders and pydicom's
writer). :func:`warm_up` runs a made-up image through the same code before the node
says it is ready: decoding and preprocessing from DICOM, both models, a SEG and a
Measurement Report (with one made-up finding, whatever the models say), both
serialised. Nothing is stored, sent or recorded.
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


def synthetic_mammogram() -> Dataset:
    """A right CC, For Presentation, 12-bit: a half-ellipse breast with one bright blob."""
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    breast = (xx / (0.8 * COLUMNS)) ** 2 + ((yy - ROWS / 2) / (0.45 * ROWS)) ** 2 <= 1.0
    blob = (xx - 0.35 * COLUMNS) ** 2 + (yy - 0.5 * ROWS) ** 2 <= 40.0 ** 2
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
    ds.ImagerPixelSpacing = ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def warm_up(analyzer: Analyzer) -> None:
    """Run :func:`synthetic_mammogram` through analysis, both encoders and the writer."""
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


__all__ = ["synthetic_mammogram", "warm_up"]
