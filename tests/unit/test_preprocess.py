"""Preprocessing: presentation pixels, breast crop, spacing, flips and the way back."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from mammo_scp.preprocess import (
    DEFAULT_SPACING_MM,
    FlipMode,
    dataset_spacing,
    preprocess_array,
    preprocess_dataset,
    presentation_image,
)
from tests.support.mg import add_mass, breast_phantom, make_mg

MODEL_SPACING = 0.8

GEOMETRIES = [
    pytest.param(1024, 1024, 0.2, id="mias-1024x1024@0.2mm"),
    pytest.param(4096, 3328, 0.07, id="ffdm-4096x3328@0.07mm"),
]


@pytest.fixture(scope="module")
def phantoms() -> dict[tuple[int, int, str], np.ndarray]:
    cache: dict[tuple[int, int, str], np.ndarray] = {}
    for rows, cols in ((1024, 1024), (4096, 3328)):
        for lat in ("L", "R"):
            cache[(rows, cols, lat)] = breast_phantom(rows, cols, lat, seed=3)
    return cache


@pytest.mark.parametrize("rows,cols,spacing", GEOMETRIES)
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_points_round_trip_within_one_source_pixel(phantoms, rows, cols, spacing, laterality):
    pre = preprocess_array(phantoms[(rows, cols, laterality)], spacing,
                           model_spacing_mm=MODEL_SPACING, laterality=laterality)
    t = pre.transform
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(t.crop[1], t.crop[1] + t.crop[3], 500),
                           rng.uniform(t.crop[0], t.crop[0] + t.crop[2], 500)])
    back = t.to_source(t.from_source(pts))
    assert np.abs(back - pts).max() < 1.0
    # and the model grid's corners land on the crop's corners
    corners = t.to_source(np.array([[0.0, 0.0], [t.resized_shape[1], t.resized_shape[0]]]))
    xs = sorted(corners[:, 0])
    assert abs(xs[0] - t.crop[1]) < 1.0 and abs(xs[1] - (t.crop[1] + t.crop[3])) < 1.0


@pytest.mark.parametrize("rows,cols,spacing", GEOMETRIES)
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_a_mass_lands_where_the_transform_says(phantoms, rows, cols, spacing, laterality):
    """The transform describes the image geometry, not just itself: follow a bright mass."""
    centre_rc = (int(rows * 0.42), int(cols * 0.25) if laterality == "R" else int(cols * 0.75))
    radius = int(round(6.0 / spacing))  # 6 mm
    img = add_mass(phantoms[(rows, cols, laterality)], centre_rc, radius, contrast=0.5)
    pre = preprocess_array(img, spacing, model_spacing_mm=MODEL_SPACING, laterality=laterality)
    t = pre.transform
    expected = t.from_source(np.array([[centre_rc[1] + 0.5, centre_rc[0] + 0.5]]))[0]
    smooth = pre.image.copy()
    import cv2

    smooth = cv2.GaussianBlur(smooth, (0, 0), 2.0)
    r, c = np.unravel_index(np.argmax(smooth), smooth.shape)
    assert abs(c + 0.5 - expected[0]) <= 2.0 and abs(r + 0.5 - expected[1]) <= 2.0
    # a model-space disk around the found centre maps back over the true centre in source pixels
    yy, xx = np.mgrid[0:t.model_shape[0], 0:t.model_shape[1]]
    disk = ((yy - r) ** 2 + (xx - c) ** 2) <= (radius * spacing / MODEL_SPACING) ** 2
    mask = t.mask_to_source(disk.astype(np.float32))
    assert mask.shape == (rows, cols) and mask.dtype == np.bool_
    assert mask[centre_rc]
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - centre_rc[0]) < 2.5 * spacing ** -1 * MODEL_SPACING
    assert abs(xs.mean() - centre_rc[1]) < 2.5 * spacing ** -1 * MODEL_SPACING


@pytest.mark.parametrize("rows,cols,spacing", GEOMETRIES)
def test_resampling_follows_physical_spacing(phantoms, rows, cols, spacing):
    pre = preprocess_array(phantoms[(rows, cols, "R")], spacing, model_spacing_mm=MODEL_SPACING)
    t = pre.transform
    assert pre.image.dtype == np.float32 and pre.image.shape == t.model_shape
    assert pre.image.min() >= 0.0 and pre.image.max() <= 1.0
    assert t.model_shape[0] % 32 == 0 and t.model_shape[1] % 32 == 0
    sx, sy = t.scale
    assert sx == pytest.approx(spacing / MODEL_SPACING, rel=0.02)
    assert sy == pytest.approx(spacing / MODEL_SPACING, rel=0.02)
    # the breast crop excludes most of the empty background on the far side
    assert t.crop[3] < cols


def test_flip_puts_the_chest_wall_on_the_left(phantoms):
    left = preprocess_array(phantoms[(1024, 1024, "L")], 0.2, model_spacing_mm=MODEL_SPACING)
    right = preprocess_array(phantoms[(1024, 1024, "R")], 0.2, model_spacing_mm=MODEL_SPACING)
    assert left.transform.flipped and not right.transform.flipped
    for pre in (left, right):
        rows, cols = pre.transform.resized_shape
        body = pre.image[:rows, :cols] > 0.05
        assert body[:, : cols // 4].mean() > body[:, -cols // 4:].mean()
    by_tag = preprocess_array(phantoms[(1024, 1024, "R")], 0.2, model_spacing_mm=MODEL_SPACING,
                              laterality="L", flip=FlipMode.LATERALITY)
    assert by_tag.transform.flipped
    none = preprocess_array(phantoms[(1024, 1024, "L")], 0.2, model_spacing_mm=MODEL_SPACING,
                            flip=FlipMode.NONE)
    assert not none.transform.flipped


def test_flipped_box_maps_back_with_ordered_corners(phantoms):
    pre = preprocess_array(phantoms[(1024, 1024, "L")], 0.2, model_spacing_mm=MODEL_SPACING)
    t = pre.transform
    src_box = np.array([700.0, 400.0, 760.0, 470.0])
    model_corners = t.from_source(np.array([[700.0, 400.0], [760.0, 470.0]]))
    model_box = np.array([model_corners[:, 0].min(), model_corners[:, 1].min(),
                          model_corners[:, 0].max(), model_corners[:, 1].max()])
    back = t.box_to_source(model_box)
    assert np.abs(back - src_box).max() < 1.0


def _study() -> str:
    return generate_uid()


def test_dicom_monochrome1_is_inverted_and_16bit_handled():
    pixels = breast_phantom(256, 208, "R", seed=1, bits=16)
    ds2 = make_mg("R", "CC", study_uid=_study(), pixels=pixels, bits_stored=16)
    ds1 = make_mg("R", "CC", study_uid=_study(), pixels=(65535 - pixels).astype(np.uint16),
                  bits_stored=16)
    ds1.PhotometricInterpretation = "MONOCHROME1"
    a, b = presentation_image(ds2), presentation_image(ds1)
    assert a.shape == (256, 208) and a.dtype == np.float32
    assert np.abs(a - b).max() < 1e-3
    assert a[128, 20] > a[128, 200]  # breast tissue (chest wall left) brighter than background


def test_dicom_8bit_rescale_and_window():
    pixels = breast_phantom(256, 208, "L", seed=2, bits=8).astype(np.uint8)
    ds = make_mg("L", "MLO", study_uid=_study(), pixels=pixels, bits_stored=8)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ds.WindowCenter, ds.WindowWidth = 120, 200
    img = presentation_image(ds)
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img[128, 200] > img[128, 5]  # left breast: tissue on the right edge
    pre = preprocess_dataset(ds, model_spacing_mm=MODEL_SPACING)
    assert pre.transform.flipped and pre.transform.source_shape == (256, 208)


def test_spacing_preference_and_default():
    ds = make_mg("R", "CC", study_uid=_study(), spacing_mm=0.07)
    ds.PixelSpacing = [0.1, 0.1]
    assert dataset_spacing(ds) == (0.07, 0.07)
    del ds.ImagerPixelSpacing
    assert dataset_spacing(ds) == (0.1, 0.1)
    del ds.PixelSpacing
    assert dataset_spacing(ds) == (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        preprocess_array(np.zeros((4, 4, 3)), 0.2, model_spacing_mm=0.8)
    with pytest.raises(ValueError, match="model_spacing_mm"):
        preprocess_array(np.zeros((4, 4)), 0.2, model_spacing_mm=0.0)


def reread(ds: Dataset) -> Dataset:
    """``ds`` as the node has it: written to a file and read back."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def _presentation_pixel_by_pixel(ds: Dataset) -> np.ndarray:
    """The presentation steps on every pixel, as the node ran them before the table."""
    arr = ds.pixel_array
    out = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        out = apply_voi_lut(out, ds, index=0)
    out = np.asarray(out, dtype=np.float64)
    lo, hi = float(out.min()), float(out.max())
    scaled = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _voi_lut(entries: np.ndarray, first: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(entries), first, 16]
    item.add_new(0x00283006, "OW", np.asarray(entries, dtype=np.uint16).tobytes())  # LUT Data
    return item


def _variant(name: str) -> Dataset:
    """MG images covering the stored-value paths: bits, sign, LUTs, windows, photometry."""
    pixels = breast_phantom(300, 240, "R", seed=5, bits=12)
    ds = make_mg("R", "CC", study_uid=_study(), pixels=pixels, bits_stored=12)
    if name == "window":
        ds.WindowCenter, ds.WindowWidth = 1800, 1500  # clips both ends
    elif name == "two windows, sigmoid, MONOCHROME1":
        ds.WindowCenter, ds.WindowWidth = [1800, 2048], [1500, 4096]
        ds.VOILUTFunction = "SIGMOID"
        ds.PhotometricInterpretation = "MONOCHROME1"
    elif name == "rescale and window":
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
        ds.WindowCenter, ds.WindowWidth = 600, 900
    elif name == "no VOI, offset range":
        ds.PixelData = (pixels + 1000).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 16, 15
    elif name == "signed, negative values":
        signed = (pixels.astype(np.int32) - 2048).astype(np.int16)
        ds.PixelRepresentation = 1
        ds.PixelData = signed.tobytes()
        ds.WindowCenter, ds.WindowWidth = 0, 3000
    elif name == "VOI LUT, monotone":
        ds.VOILUTSequence = [_voi_lut(np.sqrt(np.arange(4096) / 4095) * 65535, 0)]
    elif name == "VOI LUT, rises and falls":
        ds.VOILUTSequence = [_voi_lut(np.abs(np.arange(4096) - 2000) * 16, 0)]
    elif name == "8-bit":
        ds = make_mg("R", "CC", study_uid=_study(),
                     pixels=breast_phantom(300, 240, "R", seed=5, bits=8).astype(np.uint8),
                     bits_stored=8)
    elif name == "flat":
        ds.PixelData = np.full((300, 240), 700, dtype=np.uint16).tobytes()
    return ds


@pytest.mark.parametrize("name", [
    "plain", "window", "two windows, sigmoid, MONOCHROME1", "rescale and window",
    "no VOI, offset range", "signed, negative values", "VOI LUT, monotone",
    "VOI LUT, rises and falls", "8-bit", "flat"])
def test_presentation_by_table_is_exactly_the_pixel_by_pixel_result(name: str) -> None:
    ds = reread(_variant(name))
    expected = _presentation_pixel_by_pixel(ds)
    got = presentation_image(ds)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert got.min() >= 0.0 and got.max() <= 1.0
