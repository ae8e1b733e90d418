"""One Grayscale Softcopy Presentation State (GSPS) per MG image with findings.

Most PACS workstations show neither DICOM SEG nor TID 1500 findings, but nearly all
apply a presentation state. Each GSPS references exactly one source image and draws,
in source pixels (PIXEL units, (0, 0) the top left corner of the top left pixel, as in
the Measurement Report):

* graphic layer ``AI FINDINGS``: each finding's box as a closed POLYLINE, and a short
  text label above it, the finding's Comment in the Measurement Report ("Mass 1 LCC:
  probability of cancer 19%, certainty 82%");
* graphic layer ``AI MASS OUTLINE``: the outline of the segmented mass (the mask the
  SEG carries) as closed POLYLINEs, one per connected region
  (:func:`cv2.findContours`).

The boxes are also carried as a graphic overlay (Overlay Plane, group 6000) activated
on the ``AI FINDINGS`` layer: dcmtk's presentation-state renderer (``dcmp2pgm``) and
viewers built on it render a presentation state's overlays but not its graphic
annotations, and the test proves the boxes' place with that renderer.

An image without a finding and without a segmented mass gets no GSPS. The VOI of the
source image (its first window, if any) is kept, so the image looks as without the
presentation state. All GSPS of a study and model versions share one series
(description "AI mass annotations", number :attr:`SeriesNumber.GSPS`); the instance
number is the source's.
"""

from __future__ import annotations

import logging

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from mammo_scp.encode.common import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SOFTWARE_VERSION,
    check_analysis,
    copy_patient_study,
    image_label,
    laterality_of,
    valid_header,
)
from mammo_scp.encode.sr import box_polyline, finding_label
from mammo_scp.encode.uids import ObjectKind, SeriesNumber, derive_uid, model_key
from mammo_scp.results import Box, ImageAnalysis

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AI mass annotations"
CONTENT_LABEL = "AI_MASS"
FINDINGS_LAYER = "AI FINDINGS"
OUTLINE_LAYER = "AI MASS OUTLINE"
# Recommended layer colours, CIELab (L*, a*, b*): yellow for boxes, red for the outline.
FINDINGS_COLOUR = hd.color.CIELabColor(97.14, -21.56, 94.48)
OUTLINE_COLOUR = hd.color.CIELabColor(53.24, 80.09, 67.20)
#: The overlay group (PS3.3 C.9.2) that carries the boxes as a bitmap.
OVERLAY_GROUP = 0x6000
#: Text label height, as a fraction of the image's rows (at least MIN_TEXT_ROWS pixels).
TEXT_HEIGHT_FRACTION = 1 / 40
MIN_TEXT_ROWS = 12


def _models(analysis: ImageAnalysis) -> str:
    return model_key([(analysis.segmenter.name, analysis.segmenter.version),
                      (analysis.detector.name, analysis.detector.version)])


def gsps_series_uid(source: Dataset, analysis: ImageAnalysis) -> UID:
    """Series Instance UID of the study's GSPS made by these model versions."""
    return derive_uid(ObjectKind.GSPS_SERIES, str(source.StudyInstanceUID), _models(analysis))


def gsps_instance_uid(source: Dataset, analysis: ImageAnalysis) -> UID:
    """SOP Instance UID of the GSPS of ``source`` made by these model versions."""
    return derive_uid(ObjectKind.GSPS_INSTANCE, str(source.SOPInstanceUID), _models(analysis))


def _text_box(box: Box, rows: int, columns: int, text: str) -> tuple[float, float, float, float]:
    """Where a finding's label goes: a line above the box (below it when the box touches
    the top edge), as wide as the text, all inside the image."""
    height = max(float(MIN_TEXT_ROWS), rows * TEXT_HEIGHT_FRACTION)
    width = min(float(columns), 0.6 * height * len(text))
    left = float(np.clip(box.x0, 0, columns - width))
    top = box.y0 - height if box.y0 - height >= 0 else min(box.y1, rows - height)
    top = float(np.clip(top, 0, rows - height))
    return (left, top, left + width, top + height)


def _finding_objects(source: Dataset, analysis: ImageAnalysis
                     ) -> tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]:
    rows, columns = int(source.Rows), int(source.Columns)
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for number, finding in enumerate(analysis.findings, start=1):
        identifier = f"Mass {number} {image_label(source)}"  # as in the Measurement Report
        tracking_uid = derive_uid(ObjectKind.FINDING_TRACKING, str(source.SOPInstanceUID),
                                  analysis.detector.name, analysis.detector.version,
                                  str(number))
        graphics.append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(finding.box, rows, columns),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=identifier, tracking_uid=tracking_uid,
        ))
        label = finding_label(identifier, finding)
        texts.append(hd.pr.TextObject(
            text_value=label, units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=_text_box(finding.box, rows, columns, label),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        ))
    return graphics, texts


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The outer outline of each connected region of ``mask`` as a closed polyline of
    (x, y) points in source pixels (through the centres of its edge pixels). Regions of
    fewer than three outline points (one or two pixels) have no outline."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float32) + 0.5  # pixel index -> centre
        if len(points) < 3:
            continue
        outlines.append(np.vstack([points, points[:1]]))  # closed: first point again
    return outlines


def _box_overlay(source: Dataset, analysis: ImageAnalysis, gsps: Dataset) -> None:
    """The boxes as a one-bit graphic overlay, activated on the findings layer."""
    rows, columns = int(source.Rows), int(source.Columns)
    bitmap = np.zeros((rows, columns), dtype=np.uint8)
    thickness = max(1, rows // 1000)
    for finding in analysis.findings:
        corners = box_polyline(finding.box, rows, columns)
        x0, y0 = (int(round(v)) for v in corners[0])
        x1, y1 = (int(round(v)) - 1 for v in corners[2])  # exclusive edges -> last pixel
        cv2.rectangle(bitmap, (x0, y0), (max(x0, x1), max(y0, y1)), 1, thickness)
    group = OVERLAY_GROUP << 16
    gsps.add_new(group | 0x0010, "US", rows)
    gsps.add_new(group | 0x0011, "US", columns)
    gsps.add_new(group | 0x0022, "LO", "AI finding boxes")
    gsps.add_new(group | 0x0040, "CS", "G")
    gsps.add_new(group | 0x0050, "SS", [1, 1])  # row, column of its first pixel
    gsps.add_new(group | 0x0100, "US", 1)
    gsps.add_new(group | 0x0102, "US", 0)
    gsps.add_new(group | 0x1001, "CS", FINDINGS_LAYER)
    gsps.add_new(group | 0x3000, "OW", pack_bits(bitmap))


def build_gsps(source: Dataset, analysis: ImageAnalysis) -> Dataset | None:
    """The GSPS of one MG image's findings and mass outline, or ``None`` when the image
    has neither a finding nor a segmented mass.

    Raises
    ------
    ValueError
        If ``analysis`` is for another image, its mask does not match the source grid,
        a box lies outside the image, or the source is not of one breast.
    """
    source = valid_header(source)
    check_analysis(source, analysis)
    laterality = laterality_of(source)
    outlines = mask_outlines(analysis.mask)
    if not analysis.findings and not outlines:
        logger.info("nothing found on %s: no GSPS", source.SOPInstanceUID)
        return None

    layers: list[hd.pr.GraphicLayer] = []
    annotations: list[hd.pr.GraphicAnnotation] = []
    if analysis.findings:
        layer = hd.pr.GraphicLayer(FINDINGS_LAYER, order=1, description="AI finding boxes",
                                   display_color=FINDINGS_COLOUR)
        graphics, texts = _finding_objects(source, analysis)
        layers.append(layer)
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[source], graphic_layer=layer,
            graphic_objects=graphics, text_objects=texts,
        ))
    if outlines:
        layer = hd.pr.GraphicLayer(OUTLINE_LAYER, order=2, description="AI mass outline",
                                   display_color=OUTLINE_COLOUR)
        layers.append(layer)
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[source], graphic_layer=layer,
            graphic_objects=[hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=outline,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            ) for outline in outlines],
        ))

    instance_uid = gsps_instance_uid(source, analysis)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=gsps_series_uid(source, analysis),
        series_number=int(SeriesNumber.GSPS),
        sop_instance_uid=instance_uid,
        instance_number=max(1, int(source.get("InstanceNumber") or 1)),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=analysis.detector.name,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label=CONTENT_LABEL,
        content_description="AI mass findings and outline",
        graphic_annotations=annotations,
        graphic_layers=layers,
        series_description=SERIES_DESCRIPTION,
    )
    copy_patient_study(source, gsps)
    # General Series: Laterality is type 2C for a paired body part (the breast).
    gsps.Laterality = laterality.value
    if analysis.findings:
        _box_overlay(source, analysis, gsps)
    logger.info("built GSPS %s for %s (%d finding(s), %d outline(s))", instance_uid,
                source.SOPInstanceUID, len(analysis.findings), len(outlines))
    return gsps
