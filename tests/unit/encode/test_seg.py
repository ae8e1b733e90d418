"""The per-image BINARY SEG: valid, pixel-aligned, reproducible, readable by highdicom."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.encode import build_seg, codes
from mammo_scp.encode.seg import SERIES_DESCRIPTION
from mammo_scp.encode.uids import SeriesNumber
from mammo_scp.results import Box, Finding, ModelInfo
from tests.support.dciodvfy import assert_dciodvfy_clean
from tests.unit.encode.factories import (
    FULL_FIELD_SIZE,
    IDENTITY_KEYWORDS,
    MIAS_SIZE,
    SEGMENTER,
    analysis_for,
    blank_mg,
    box_mask,
    reread,
    round_trip,
    with_extra_identity,
)

MASS_BOX = Box(x0=300, y0=100, x1=360, y1=140)  # columns 300..359, rows 100..139


def _seg_for(rows: int, cols: int, laterality: str = "R", box: Box = MASS_BOX,
             mask: np.ndarray | None = None) -> tuple[Dataset, Dataset]:
    source = blank_mg(laterality, "CC", generate_uid(), rows, cols)
    analysis = analysis_for(source, (Finding(box, 0.9, 0.6),), mask=mask)
    seg = build_seg(source, analysis)
    assert seg is not None
    return source, seg


@pytest.mark.parametrize("size", [MIAS_SIZE, FULL_FIELD_SIZE], ids=["mias", "full-field"])
def test_seg_passes_dciodvfy(size: tuple[int, int], tmp_path: Path) -> None:
    _, seg = _seg_for(*size)
    verdict = assert_dciodvfy_clean(seg, tmp_path, "seg.dcm")
    assert verdict.iod == "Segmentation"


@pytest.mark.parametrize("size", [MIAS_SIZE, FULL_FIELD_SIZE], ids=["mias", "full-field"])
def test_mask_lands_on_the_same_source_pixels(size: tuple[int, int]) -> None:
    rows, cols = size
    # An asymmetric L-shaped mask: a transposed or flipped frame would not match it.
    mask = box_mask(size, MASS_BOX)
    mask[140:180, 300:310] = True
    _, seg = _seg_for(rows, cols, mask=mask)

    frame = reread(seg).pixel_array.astype(bool)
    assert frame.shape == (rows, cols)
    assert np.array_equal(frame, mask)


def test_round_trip_through_highdicom(tmp_path: Path) -> None:
    source, seg = _seg_for(*MIAS_SIZE, laterality="L")
    read = hd.seg.segread(BytesIO(round_trip(seg)))

    assert read.SOPInstanceUID == seg.SOPInstanceUID
    assert read.SegmentationType == "BINARY"
    description = read.get_segment_description(1)
    assert description.segment_label == "Mass"
    assert description.segmented_property_category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    assert description.segmented_property_type == codes.MASS
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert description.algorithm_identification is not None
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == SEGMENTER.name
    assert algorithm.AlgorithmVersion == SEGMENTER.version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    region = description.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator) == ("76752008", "SCT")
    modifier = region.AnatomicRegionModifierSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("7771000", "Left")
    assert len(description.RecommendedDisplayCIELabValue) == 3

    pixels = read.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(pixels[0, :, :, 0].astype(bool), box_mask(MIAS_SIZE, MASS_BOX))


def test_references_the_source_for_stack_viewers() -> None:
    source, seg = _seg_for(*MIAS_SIZE)
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.PatientOrientation == source.PatientOrientation


def test_identity_series_and_equipment() -> None:
    source = with_extra_identity([blank_mg("R", "MLO", generate_uid(), *MIAS_SIZE, 3)])[0]
    seg = build_seg(source, analysis_for(source, (Finding(MASS_BOX, 0.8, 0.4),)))
    assert seg is not None
    for keyword in IDENTITY_KEYWORDS:
        assert seg.get(keyword) == source.get(keyword), keyword
    assert seg.SeriesDescription == SERIES_DESCRIPTION
    assert seg.SeriesNumber == SeriesNumber.SEG
    assert seg.InstanceNumber == 3
    assert seg.Modality == "SEG"
    processing = [item for item in seg.ContributingEquipmentSequence
                  if item.get("ManufacturerModelName") == SEGMENTER.name]
    assert processing, "no ContributingEquipment item names the segmenter"
    assert processing[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"


def test_uids_are_deterministic_and_follow_the_model_version() -> None:
    source = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    findings = (Finding(MASS_BOX, 0.9, 0.6),)
    first = build_seg(source, analysis_for(source, findings))
    again = build_seg(source, analysis_for(source, findings))
    newer = build_seg(source, analysis_for(
        source, findings, segmenter=ModelInfo(SEGMENTER.name, "1.3.0")))
    assert first is not None and again is not None and newer is not None

    def uids(seg: Dataset) -> tuple[str, ...]:
        return (seg.SOPInstanceUID, seg.SeriesInstanceUID,
                seg.DimensionOrganizationSequence[0].DimensionOrganizationUID,
                seg.SegmentSequence[0].TrackingUID)

    assert uids(first) == uids(again)
    assert all(a != b for a, b in zip(uids(first), uids(newer), strict=True))
    assert (first.SeriesNumber, first.InstanceNumber) == (again.SeriesNumber, again.InstanceNumber)
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in uids(first))


def test_seg_of_each_image_has_a_series_of_its_own() -> None:
    # OHIF 3.13 shows one SEG per series (the last instance): shared series hide SEGs.
    study = generate_uid()
    segs = []
    for number, laterality in enumerate(("R", "L"), start=1):
        source = blank_mg(laterality, "CC", study, *MIAS_SIZE, number)
        segs.append(build_seg(source, analysis_for(source, (Finding(MASS_BOX, 0.9, 0.6),))))
    assert segs[0] is not None and segs[1] is not None
    assert segs[0].SeriesInstanceUID != segs[1].SeriesInstanceUID
    assert segs[0].SOPInstanceUID != segs[1].SOPInstanceUID
    assert segs[0].SeriesDescription == segs[1].SeriesDescription == SERIES_DESCRIPTION


def test_no_mass_means_no_seg() -> None:
    source = blank_mg("L", "CC", generate_uid(), *MIAS_SIZE)
    assert build_seg(source, analysis_for(source)) is None


def test_shared_codes_are_not_mutated() -> None:
    _seg_for(*MIAS_SIZE)
    assert "AnatomicRegionModifierSequence" not in codes.BREAST


def test_rejects_an_analysis_of_another_image() -> None:
    source = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    other = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    with pytest.raises(ValueError, match="analysis is for SOP Instance"):
        build_seg(source, analysis_for(other, (Finding(MASS_BOX, 0.9, 0.6),)))


def test_rejects_a_mask_in_another_grid() -> None:
    source = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    analysis = analysis_for(source, mask=np.ones((512, 512), dtype=bool))
    with pytest.raises(ValueError, match="mask has shape"):
        build_seg(source, analysis)


def test_rejects_an_image_without_laterality() -> None:
    source = blank_mg("R", "CC", generate_uid(), *MIAS_SIZE)
    source.ImageLaterality = "B"
    with pytest.raises(ValueError, match="ImageLaterality"):
        build_seg(source, analysis_for(source, (Finding(MASS_BOX, 0.9, 0.6),)))
