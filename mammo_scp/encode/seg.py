"""One BINARY DICOM Segmentation per processed MG image.

Single-frame mammograms have no Frame of Reference, so each SEG is tied to
exactly one source image: one frame, same Rows x Columns, pixel (r, c) of the
SEG frame is pixel (r, c) of the source image (the mask in
:class:`~mammo_scp.results.ImageAnalysis` is already in source pixels).

The SEG carries one segment, "Mass" (category "Morphologically abnormal
structure"), anatomic region Breast with the image's laterality as modifier,
algorithm type AUTOMATIC identified by the segmenter's name and version. It
lists the source in ReferencedSeriesSequence and in each frame's Derivation
Image Sequence: OHIF >= 3.9 uses these to draw a SEG on a stack (non-volume)
image such as MG.

No mass found: when the mask is empty, :func:`build_seg` returns ``None`` and
no SEG is sent for that image. An all-empty SEG would add a blank segmentation
layer to the viewer for every normal image; the Measurement Report (one per
study with findings) still lists every processed image, and a study without
findings gets the "no finding" Enhanced SR (:mod:`mammo_scp.encode.no_findings`),
so "looked at and found nothing" is recorded.

Pixel Measures: the SEG keeps the shared Pixel Measures item with the source's
pixel spacing, because OHIF (3.13) fails to load a SEG without it. Slice
Thickness is the source's Body Part Thickness (the compressed breast thickness)
when the image has one; highdicom's reader needs it, dciodvfy accepts either.
OHIF's SEG loader also reads Image Orientation (Patient) from the Plane Orientation
group: the SEG carries the nominal in-plane orientation (1,0,0 / 0,1,0), which
says only that frame rows and columns run as the source's; with no Frame of
Reference it claims nothing about patient space.

Each SEG is in a series of its own (description "AI mass segmentation", series
number :attr:`SeriesNumber.SEG`): OHIF (3.13) makes one display set per SEG
*series*, from its last instance only, so SEGs sharing a series would hide all
but one from a radiologist. The instance number is the source's InstanceNumber,
so the SEG of RCC image 1 is SEG instance 1.
"""

from __future__ import annotations

import logging
from copy import deepcopy

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from mammo_scp.encode import codes
from mammo_scp.encode.common import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SOFTWARE_VERSION,
    check_analysis,
    copy_patient_study,
    laterality_of,
    valid_header,
)
from mammo_scp.encode.uids import ObjectKind, SeriesNumber, derive_uid
from mammo_scp.results import ImageAnalysis

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AI mass segmentation"
SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Mass"
# Recommended display colour: a saturated red, CIELab (L*, a*, b*) of sRGB (255, 0, 0).
DISPLAY_COLOUR = hd.color.CIELabColor(53.24, 80.09, 67.20)


def seg_series_uid(source: Dataset, analysis: ImageAnalysis) -> UID:
    """Series Instance UID of the SEG of ``source`` by this segmenter version: one series
    per SEG, so that viewers listing one SEG per series (OHIF) show every one."""
    return derive_uid(
        ObjectKind.SEG_SERIES, str(source.StudyInstanceUID), str(source.SOPInstanceUID),
        analysis.segmenter.name, analysis.segmenter.version,
    )


def seg_instance_uid(source: Dataset, analysis: ImageAnalysis) -> UID:
    """SOP Instance UID of the SEG of ``source`` made by this segmenter version."""
    return derive_uid(
        ObjectKind.SEG_INSTANCE, str(source.SOPInstanceUID), analysis.segmenter.name,
        analysis.segmenter.version,
    )


def _segment_description(source: Dataset, analysis: ImageAnalysis) -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=analysis.segmenter.name,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=analysis.segmenter.version,
    )
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.MASS,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=derive_uid(ObjectKind.SEGMENT_TRACKING, str(source.SOPInstanceUID),
                                analysis.segmenter.name, analysis.segmenter.version),
        tracking_id=f"Mass segmentation {laterality_of(source).value}",
        # A copy: the modifier is added to this item, and shared codes must never change.
        anatomic_regions=[deepcopy(codes.BREAST)],
        display_color=DISPLAY_COLOUR,
    )
    # Anatomic Region Modifier Sequence (CID 244) carries the breast's laterality.
    modifier = Dataset()
    modifier.update(laterality_of(source).code)
    description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = DicomSequence(
        [modifier]
    )
    return description


def _processing_equipment(analysis: ImageAnalysis) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=analysis.segmenter.name,
        software_versions=[SOFTWARE_VERSION, analysis.segmenter.version],
        contribution_description="AI mass segmentation",
    )


def _pixel_measures(source: Dataset, seg: Dataset) -> None:
    """The shared Pixel Measures and Plane Orientation items viewers need (see the module
    docstring): the source's spacing and compressed breast thickness, nominal orientation."""
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    if spacing is None:
        return
    measures = Dataset()
    measures.PixelSpacing = [float(v) for v in spacing]
    thickness = source.get("BodyPartThickness")
    if thickness is not None and thickness != "" and float(thickness) > 0:
        measures.SliceThickness = float(thickness)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    for shared in seg.SharedFunctionalGroupsSequence:
        shared.PixelMeasuresSequence = DicomSequence([measures])
        shared.PlaneOrientationSequence = DicomSequence([orientation])


def build_seg(source: Dataset, analysis: ImageAnalysis) -> Dataset | None:
    """The BINARY SEG of one MG image's mass mask, or ``None`` when the mask is empty.

    Parameters
    ----------
    source
        The MG image as received (with pixel-module attributes; pixel data not needed).
    analysis
        The models' output for that image, mask in source pixels.

    Raises
    ------
    ValueError
        If ``analysis`` is for another image, its mask does not match the source
        grid, or the source is not of one breast.
    """
    source = valid_header(source)  # only valid values reach the SEG
    check_analysis(source, analysis)
    laterality_of(source)  # raises early for images that are not of one breast
    if not analysis.mask.any():
        logger.info("no mass segmented on %s: no SEG", source.SOPInstanceUID)
        return None

    instance_uid = seg_instance_uid(source, analysis)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=analysis.mask[np.newaxis, :, :],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(source, analysis)],
        series_instance_uid=seg_series_uid(source, analysis),
        series_number=int(SeriesNumber.SEG),
        sop_instance_uid=instance_uid,
        instance_number=max(1, int(source.get("InstanceNumber") or 1)),  # positive, as PS3.3 wants
        manufacturer=MANUFACTURER,
        manufacturer_model_name=analysis.segmenter.name,
        software_versions=[SOFTWARE_VERSION, analysis.segmenter.version],  # type: ignore[arg-type]  # a list: pydicom rejects tuples for multi-valued LO
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description="AI mass segmentation",
        content_label="MASS",
        omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[_processing_equipment(analysis)],
        series_description=SERIES_DESCRIPTION,
    )
    copy_patient_study(source, seg)
    if "FrameOfReferenceUID" not in source:
        # Type 2C in the General Image module without a Frame of Reference (projection
        # images): the SEG frame has the source's orientation.
        if "PatientOrientation" in source:
            seg.PatientOrientation = source.PatientOrientation
        _pixel_measures(source, seg)
    # highdicom draws a random Dimension Organization UID; make it reproducible too.
    dimension_uid = derive_uid(ObjectKind.SEG_DIMENSION_ORGANIZATION, str(instance_uid))
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    logger.info("built SEG %s for %s (%d mask pixels)", instance_uid, source.SOPInstanceUID,
                int(np.count_nonzero(analysis.mask)))
    return seg
