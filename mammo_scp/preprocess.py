"""The seeds' preprocessing, returning the model input and the exact way back to source pixels.

Steps (seed 004, adapted): decode -> modality LUT -> VOI (window or LUT) -> invert MONOCHROME1
-> Gaussian blur + Otsu + largest contour to find the breast -> crop to it -> resample by
physical pixel spacing to the model's spacing -> optional flip (chest wall on the left) -> CLAHE
-> [0, 1] -> zero padding at bottom/right to a multiple of the network stride.

Coordinates are continuous pixel-edge coordinates: pixel (row r, column c) covers
``[c, c + 1) x [r, r + 1)``; points are ``(x, y)`` = (column, row), as in
:class:`mammo_scp.results.Box`. ``cv2.resize`` maps such edges linearly, so every step
of the geometry is an exact affine map per axis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from mammo_scp.decode import decode_pixels
from mammo_scp.dicom import view_of
from mammo_scp.pectoral import PectoralEdge, find_pectoral, is_oblique

logger = logging.getLogger(__name__)

# Used when a dataset carries neither ImagerPixelSpacing nor PixelSpacing. 0.1 mm is typical of
# full-field digital mammography detectors (0.05-0.1 mm) and of digitised film at 254 dpi.
DEFAULT_SPACING_MM = 0.1
#: Pixel spacings (mm) of real mammograms: detectors of 0.05-0.1 mm, film digitised at
#: 0.02-0.5 mm. Anything else is refused: the image is skipped with the reason.
PLAUSIBLE_SPACING_MM = (0.02, 0.5)
BLUR_SIGMA_MM = 0.8
BREAST_FIND_SPACING_MM = 0.4
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILE_MM = 25.6


class FlipMode(StrEnum):
    """How to decide the horizontal flip that puts the chest wall on the left edge."""

    NONE = "none"
    LATERALITY = "laterality"  # flip left breasts (L), as modalities display them chest-wall right
    CONTENT = "content"  # flip when the breast's mass lies in the right half (laterality unknown)
    AUTO = "auto"  # image content; laterality is not trusted for film scans with odd orientation


@dataclass(frozen=True)
class Transform:
    """Exact geometry from source pixels to model pixels (crop, scale per axis, flip, pad).

    ``crop`` is ``(row0, col0, rows, cols)`` of the breast box in the source image;
    ``resized_shape`` is the shape of the crop after resampling (before padding) and
    ``model_shape`` the padded model input shape.
    """

    source_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    resized_shape: tuple[int, int]
    model_shape: tuple[int, int]
    flipped: bool

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): model pixels per source pixel along columns and rows."""
        return (self.resized_shape[1] / self.crop[3], self.resized_shape[0] / self.crop[2])

    def from_source(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) source ``(x, y)`` edge coordinates to model coordinates."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        x = (pts[:, 0] - self.crop[1]) * sx
        y = (pts[:, 1] - self.crop[0]) * sy
        if self.flipped:
            x = self.resized_shape[1] - x
        return np.stack([x, y], axis=1)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) model ``(x, y)`` edge coordinates back to source coordinates."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        x = pts[:, 0]
        if self.flipped:
            x = self.resized_shape[1] - x
        return np.stack([x / sx + self.crop[1], pts[:, 1] / sy + self.crop[0]], axis=1)

    def box_to_source(self, box: np.ndarray) -> np.ndarray:
        """Map a model box ``(x0, y0, x1, y1)`` to a source box (corners re-ordered if flipped)."""
        corners = self.to_source(np.array([[box[0], box[1]], [box[2], box[3]]]))
        x0, x1 = sorted((corners[0, 0], corners[1, 0]))
        y0, y1 = sorted((corners[0, 1], corners[1, 1]))
        return np.array([x0, y0, x1, y1])

    def mask_to_source(self, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Map a model-space probability (or boolean) map to a boolean mask of the source size."""
        rows, cols = self.resized_shape
        m = np.asarray(prob, dtype=np.float32)[:rows, :cols]
        if self.flipped:
            m = m[:, ::-1]
        r0, c0, ch, cw = self.crop
        resized = cv2.resize(np.ascontiguousarray(m), (cw, ch), interpolation=cv2.INTER_LINEAR)
        out = np.zeros(self.source_shape, dtype=np.bool_)
        out[r0:r0 + ch, c0:c0 + cw] = resized >= threshold
        return out

    def mask_from_source(self, mask: np.ndarray) -> np.ndarray:
        """Map a source-size mask to a float model-space map (used for training targets)."""
        r0, c0, ch, cw = self.crop
        sub = np.asarray(mask, dtype=np.float32)[r0:r0 + ch, c0:c0 + cw]
        rows, cols = self.resized_shape
        res = cv2.resize(sub, (cols, rows), interpolation=cv2.INTER_AREA)
        if self.flipped:
            res = res[:, ::-1]
        out = np.zeros(self.model_shape, dtype=np.float32)
        out[:rows, :cols] = res
        return out


@dataclass(frozen=True)
class Preprocessed:
    """Model input (float32 in [0, 1], shape ``transform.model_shape``) and its geometry."""

    image: np.ndarray
    transform: Transform
    spacing_mm: tuple[float, float]
    model_spacing_mm: float
    #: the pectoral muscle's edge in model pixels, on an oblique view where one was found
    pectoral: PectoralEdge | None = None


def dataset_spacing(ds: Dataset) -> tuple[float, float]:
    """(row, column) spacing in mm: ImagerPixelSpacing, else PixelSpacing, else the default.

    Raises
    ------
    ValueError
        If the spacing the image carries is not two numbers within
        :data:`PLAUSIBLE_SPACING_MM` (a 74.7 mm spacing would make the resampling to the
        models' 0.4 mm ask for gigabytes).
    """
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        if keyword not in ds:
            continue
        spacing = plausible_spacing(ds, keyword)
        if spacing is None:
            continue  # present but empty: as if absent
        return spacing
    logger.warning("no pixel spacing in %s; assuming %.2f mm", ds.get("SOPInstanceUID", "?"),
                   DEFAULT_SPACING_MM)
    return (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)


def plausible_spacing(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    """The (row, column) spacing in ``keyword``; None when absent or empty.

    Raises
    ------
    ValueError
        If it is not two numbers, each within :data:`PLAUSIBLE_SPACING_MM`.
    """
    low, high = PLAUSIBLE_SPACING_MM
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        items = [value] if isinstance(value, str | bytes | float | int) else list(value)
        values = [float(v) for v in items]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{keyword} is not a pair of numbers ({type(exc).__name__})") from None
    if not values:
        return None
    if len(values) != 2:
        raise ValueError(f"{keyword} has {len(values)} values, not 2 (row\\column)")
    if not all(low <= v <= high for v in values):
        shown = "\\".join(f"{v:g}" for v in values)
        raise ValueError(f"{keyword} {shown} mm is outside the {low:g}-{high:g} mm of "
                         "mammography detectors")
    return (values[0], values[1])


def presentation_image(ds: Dataset) -> np.ndarray:
    """Decoded, modality- and VOI-transformed pixels as float32 in [0, 1], bright = dense.

    Every step is a function of the stored value alone, so for integer pixels (every MG
    image) the steps run once per stored value in the image's range and the image takes
    its values from that table: the same numbers as running them on every pixel, in an
    eighth of the time (a 4096 x 3328 image: 31-38 ms instead of 255-290 ms here).
    """
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError("only single-sample (grayscale) images can be analysed")
    arr = decode_pixels(ds)  # compressed data in a process of its own (mammo_scp.decode)
    if arr.ndim != 2:
        raise ValueError(f"expected one 2-D frame, got pixel array of shape {arr.shape}")
    monochrome1 = str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1"
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        by_table = _presentation_by_table(arr, ds, monochrome1)
        if by_table is not None:
            return by_table
    display = _display_values(arr, ds)
    # after the VOI step the values span the display range; stretch what is present to [0, 1]
    return _unit_range(display, float(display.min()), float(display.max()), monochrome1)


def _display_values(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT (or rescale), then the first VOI window or LUT, as float64."""
    out = apply_modality_lut(stored, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        out = apply_voi_lut(out, ds, index=0)
    return np.asarray(out, dtype=np.float64)


def _unit_range(display: np.ndarray, lo: float, hi: float, monochrome1: bool) -> np.ndarray:
    """Display values stretched from [lo, hi] to [0, 1] (inverted for MONOCHROME1), float32."""
    scaled = (display - lo) / (hi - lo) if hi > lo else np.zeros_like(display)
    if monochrome1:
        scaled = 1.0 - scaled
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _presentation_by_table(arr: np.ndarray, ds: Dataset, monochrome1: bool) -> np.ndarray | None:
    """:func:`presentation_image` of integer pixels through a table of every stored value
    from the image's minimum to its maximum; None when the display values are not monotone
    in the stored value (a VOI LUT that rises and falls), where the lowest and highest
    display values present cannot be read off the ends of the table."""
    low, high = int(arr.min()), int(arr.max())
    start = min(low, 0)  # unsigned pixels index the table directly, from 0
    stored = np.arange(start, high + 1, dtype=arr.dtype)
    display = _display_values(stored, ds)
    present = display[low - start:]
    steps = np.diff(present)
    if not (np.all(steps >= 0) or np.all(steps <= 0)):
        return None
    lo, hi = sorted((float(present[0]), float(present[-1])))
    table = _unit_range(display, lo, hi, monochrome1)
    index = arr if start == 0 else arr.astype(np.int32) - start
    return table[index]


def breast_region(image01: np.ndarray, spacing_mm: tuple[float, float]
                  ) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
    """Box (row0, col0, rows, cols) and filled mask (of the box) of the largest bright region.

    Gaussian blur, Otsu threshold, largest external contour (seed 004), found on a copy
    reduced to about ``BREAST_FIND_SPACING_MM`` (a breast outline needs no finer detail and a
    4096 x 3328 image would otherwise cost a large blur). Labels and markers outside that contour
    are later blanked so the models never see them.
    """
    rows, cols = image01.shape
    whole = (0, 0, rows, cols)
    factor = max(1, int(BREAST_FIND_SPACING_MM / max(min(spacing_mm), 1e-6)))
    small = image01 if factor == 1 else cv2.resize(
        image01, (max(1, cols // factor), max(1, rows // factor)), interpolation=cv2.INTER_AREA)
    img8 = np.round(small * 255.0).astype(np.uint8)
    sigma = max(BLUR_SIGMA_MM / (spacing_mm[0] * factor), 0.5)
    blurred = cv2.GaussianBlur(img8, (0, 0), sigmaX=sigma)
    _, binary = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return whole, None
    largest = max(contours, key=cv2.contourArea)
    x, y, w, h = cv2.boundingRect(largest)
    if w * factor < 8 or h * factor < 8:
        return whole, None
    small_mask = np.zeros(small.shape, dtype=np.uint8)
    cv2.drawContours(small_mask, [largest], -1, 1, thickness=cv2.FILLED)
    r0, c0 = y * factor, x * factor
    r1 = rows if y + h >= small.shape[0] else (y + h) * factor
    c1 = cols if x + w >= small.shape[1] else (x + w) * factor
    box_mask = np.asarray(small_mask[y:y + h, x:x + w])
    if factor > 1:
        box_mask = np.asarray(cv2.resize(box_mask, (c1 - c0, r1 - r0),
                                         interpolation=cv2.INTER_NEAREST))
    return (int(r0), int(c0), int(r1 - r0), int(c1 - c0)), box_mask


def _chest_wall_right(crop01: np.ndarray) -> bool:
    """True when the breast tissue's centre of mass lies in the right half of the crop."""
    cols = crop01.shape[1]
    weights = crop01.sum(axis=0).astype(np.float64)
    if weights.sum() <= 0:
        return False
    centre = float((weights * (np.arange(cols) + 0.5)).sum() / weights.sum())
    return bool(centre > cols / 2.0)


def preprocess_array(
    image: np.ndarray,
    spacing_mm: float | tuple[float, float],
    *,
    model_spacing_mm: float,
    laterality: str | None = None,
    flip: FlipMode = FlipMode.AUTO,
    pad_multiple: int = 32,
    crop_breast: bool = True,
    view: str | None = None,
) -> Preprocessed:
    """Preprocess a presentation-ready 2-D array (any dtype; bright = dense), e.g. a MIAS PNG.

    ``view``: its View Position (``MLO``, ``CC``, ...), given where the pectoral muscle is
    to be looked for: on an oblique view it is (:mod:`mammo_scp.pectoral`)."""
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if model_spacing_mm <= 0:
        raise ValueError(f"model_spacing_mm must be positive, got {model_spacing_mm}")
    if isinstance(spacing_mm, tuple):
        spacing = (float(spacing_mm[0]), float(spacing_mm[1]))
    else:
        spacing = (float(spacing_mm), float(spacing_mm))
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    img01 = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return _preprocess01(img01, spacing, model_spacing_mm, laterality, flip, pad_multiple,
                         crop_breast, view)


def preprocess_dataset(ds: Dataset, *, model_spacing_mm: float, flip: FlipMode = FlipMode.AUTO,
                       pad_multiple: int = 32, pectoral: bool = False) -> Preprocessed:
    """Preprocess a received DICOM image (decode, LUTs, MONOCHROME1, spacing, laterality);
    ``pectoral``: look for the pectoral muscle if its view is oblique."""
    img01 = presentation_image(ds)
    laterality = ds.get("ImageLaterality") or ds.get("Laterality")
    return _preprocess01(img01, dataset_spacing(ds), model_spacing_mm,
                         str(laterality) if laterality else None, flip, pad_multiple, True,
                         view_of(ds) if pectoral else None)


def _preprocess01(img01: np.ndarray, spacing: tuple[float, float], model_spacing_mm: float,
                  laterality: str | None, flip: FlipMode, pad_multiple: int,
                  crop_breast: bool, view: str | None) -> Preprocessed:
    rows, cols = img01.shape
    crop, region = breast_region(img01, spacing) if crop_breast else ((0, 0, rows, cols), None)
    r0, c0, ch, cw = crop
    sub = img01[r0:r0 + ch, c0:c0 + cw]
    if region is not None:
        sub = sub * region.astype(np.float32)
    out_rows = max(1, int(round(ch * spacing[0] / model_spacing_mm)))
    out_cols = max(1, int(round(cw * spacing[1] / model_spacing_mm)))
    shrinking = out_rows < ch or out_cols < cw
    resized = cv2.resize(sub, (out_cols, out_rows),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if flip is FlipMode.NONE:
        flipped = False
    elif flip is FlipMode.LATERALITY and laterality in ("L", "R"):
        flipped = laterality == "L"
    else:
        flipped = _chest_wall_right(resized)
    if flipped:
        resized = resized[:, ::-1]
    pectoral = (find_pectoral(np.clip(resized, 0, 1), model_spacing_mm) if is_oblique(view)
                else None)
    tile = max(1, int(round(out_rows * model_spacing_mm / CLAHE_TILE_MM)))
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=(tile, tile))
    enhanced = clahe.apply(np.round(np.clip(resized, 0, 1) * 255.0).astype(np.uint8))
    pad_rows = -(-out_rows // pad_multiple) * pad_multiple
    pad_cols = -(-out_cols // pad_multiple) * pad_multiple
    model = np.zeros((pad_rows, pad_cols), dtype=np.float32)
    model[:out_rows, :out_cols] = enhanced.astype(np.float32) / 255.0
    transform = Transform(source_shape=(rows, cols), crop=crop, resized_shape=(out_rows, out_cols),
                          model_shape=(pad_rows, pad_cols), flipped=flipped)
    return Preprocessed(image=model, transform=transform, spacing_mm=spacing,
                        model_spacing_mm=model_spacing_mm, pectoral=pectoral)
