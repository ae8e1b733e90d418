"""Training data: the mini-MIAS folder layout and a DICOM folder layout a site can supply.

mini-MIAS (``annotations.csv`` + ``mdbNNN.png``): truth circles with the origin at the
bottom-left (``row_from_top = rows - y``); mdb(2k-1) and mdb(2k) are one woman.

DICOM layout: ``DIR/**/*.dcm``, each with an optional sidecar ``<stem>.json``::

    {"masses": [{"x": 512.0, "y": 300.0, "radius": 40.0, "severity": "M"},
                {"box": [x0, y0, x1, y1], "severity": "B"}]}

in source pixels (origin top-left, x = column); an optional ``<stem>_mask.png`` (non-zero =
mass) replaces the circles/boxes as the segmentation target. The woman is the PatientID.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom

from mammo_scp.dicom import view_of
from mammo_scp.preprocess import Preprocessed, Transform, preprocess_array, preprocess_dataset

logger = logging.getLogger(__name__)

MIAS_SPACING_MM = 0.2
MIAS_VIEW = "MLO"  # every mini-MIAS image is a mediolateral-oblique view (its README)
BENIGN, MALIGNANT, UNKNOWN = 1, 2, 3  # detector class ids; UNKNOWN = mass of unknown severity


@dataclass(frozen=True)
class Lesion:
    """One truth mass in source pixels: circle (centre x, y and radius) or box; severity B/M/''."""

    x: float
    y: float
    radius: float
    severity: str
    box: tuple[float, float, float, float] | None = None

    @property
    def label(self) -> int:
        return {"B": BENIGN, "M": MALIGNANT}.get(self.severity, UNKNOWN)

    def source_box(self) -> tuple[float, float, float, float]:
        if self.box is not None:
            return self.box
        return (self.x - self.radius, self.y - self.radius, self.x + self.radius,
                self.y + self.radius)


@dataclass(frozen=True)
class Record:
    """One training image on disk with its truth."""

    key: str
    path: Path
    woman: str
    lesions: tuple[Lesion, ...]
    spacing_mm: float | None = None  # None: read from the DICOM file
    laterality: str | None = None
    mask_path: Path | None = None
    view: str | None = None  # View Position (MLO, CC, ...) where known

    @property
    def is_mass(self) -> bool:
        return bool(self.lesions)

    @property
    def is_malignant(self) -> bool:
        return any(les.severity == "M" for les in self.lesions)


@dataclass(frozen=True)
class Sample:
    """A preprocessed record in model space.

    ``lesion_masks`` is (N, H, W) float32 with one soft disk/box per lesion (N may be 0).
    """

    record: Record
    pre: Preprocessed
    source: np.ndarray = field(repr=False)
    lesion_masks: np.ndarray = field(repr=False)

    @property
    def image(self) -> np.ndarray:
        return self.pre.image

    @property
    def transform(self) -> Transform:
        return self.pre.transform


def load_mias(folder: Path) -> list[Record]:
    """Records of a mini-MIAS folder; images whose mass has no coordinates are left out."""
    table = folder / "annotations.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: is {folder} a mini-MIAS folder?")
    by_ref: dict[str, list[dict[str, str]]] = {}
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            by_ref.setdefault(row["refnum"], []).append(row)
    records = []
    for ref, rows in sorted(by_ref.items()):
        path = folder / f"{ref}.png"
        if not path.is_file():
            logger.warning("%s listed in annotations.csv but %s is missing", ref, path)
            continue
        masses = [r for r in rows if r["is_mass"] == "1"]
        if any(not r["x"] for r in masses):
            logger.info("%s: mass without coordinates, left out", ref)
            continue
        number = int(ref[3:])
        lesions = tuple(
            Lesion(x=float(r["x"]), y=float(r["row_from_top"]), radius=float(r["radius"]),
                   severity=r["severity"])
            for r in masses)
        records.append(Record(key=ref, path=path, woman=f"mias-woman-{(number + 1) // 2:03d}",
                              lesions=lesions, spacing_mm=MIAS_SPACING_MM,
                              laterality="L" if number % 2 == 0 else "R", view=MIAS_VIEW))
    return records


def load_dicom_folder(folder: Path) -> list[Record]:
    """Records of a DICOM folder with optional JSON sidecars and mask PNGs."""
    records = []
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        lesions: list[Lesion] = []
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            for item in json.loads(sidecar.read_text()).get("masses", []):
                sev = str(item.get("severity", ""))
                if "box" in item:
                    x0, y0, x1, y1 = (float(v) for v in item["box"])
                    lesions.append(Lesion(x=(x0 + x1) / 2, y=(y0 + y1) / 2,
                                          radius=max(x1 - x0, y1 - y0) / 2, severity=sev,
                                          box=(x0, y0, x1, y1)))
                else:
                    lesions.append(Lesion(x=float(item["x"]), y=float(item["y"]),
                                          radius=float(item["radius"]), severity=sev))
        mask_path = path.with_name(path.stem + "_mask.png")
        records.append(Record(key=str(ds.SOPInstanceUID), path=path,
                              woman=str(ds.get("PatientID", path.stem)), lesions=tuple(lesions),
                              mask_path=mask_path if mask_path.is_file() else None,
                              view=view_of(ds)))
    return records


def load_records(folder: Path) -> list[Record]:
    """mini-MIAS when ``annotations.csv`` is present, else the DICOM layout."""
    if (folder / "annotations.csv").is_file():
        records = load_mias(folder)
    else:
        records = load_dicom_folder(folder)
    if not records:
        raise FileNotFoundError(f"no training images found in {folder}")
    return records


def split_by_woman(records: list[Record], val_fraction: float, seed: int
                   ) -> tuple[list[Record], list[Record]]:
    """Split so no woman is in both parts; women with masses are spread proportionally."""
    women: dict[str, list[Record]] = {}
    for rec in records:
        women.setdefault(rec.woman, []).append(rec)
    with_mass = sorted(w for w, recs in women.items() if any(r.is_mass for r in recs))
    without = sorted(w for w in women if w not in set(with_mass))
    rng = random.Random(seed)
    rng.shuffle(with_mass)
    rng.shuffle(without)
    val = set(with_mass[:round(len(with_mass) * val_fraction)])
    val |= set(without[:round(len(without) * val_fraction)])
    train = [r for r in records if r.woman not in val]
    held = [r for r in records if r.woman in val]
    return train, held


def read_source(rec: Record) -> np.ndarray:
    """The raw source pixels of a MIAS PNG (uint8/uint16)."""
    img = cv2.imread(str(rec.path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {rec.path}")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return np.asarray(img)


def lesion_source_masks(rec: Record, shape: tuple[int, int]) -> np.ndarray:
    """(N, rows, cols) uint8 truth masks in source pixels: filled circles or boxes."""
    out = np.zeros((len(rec.lesions),) + shape, dtype=np.uint8)
    for i, les in enumerate(rec.lesions):
        if les.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in les.box)
            out[i, max(y0, 0):y1, max(x0, 0):x1] = 1
        else:
            cv2.circle(out[i], (int(round(les.x)), int(round(les.y))), int(round(les.radius)), 1,
                       thickness=-1)
    if rec.mask_path is not None and len(rec.lesions) == 1:
        out[0] = _read_mask(rec.mask_path).astype(np.uint8)
    return out


def _read_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise OSError(f"cannot read mask {path}")
    return np.asarray(m) > 0


def truth_mask(rec: Record, shape: tuple[int, int]) -> np.ndarray:
    """Boolean union of the lesion masks in source pixels."""
    masks = lesion_source_masks(rec, shape)
    if rec.mask_path is not None:
        return _read_mask(rec.mask_path)
    if len(masks):
        return np.asarray(masks.any(axis=0))
    return np.zeros(shape, dtype=np.bool_)


def make_sample(rec: Record, model_spacing_mm: float, pad_multiple: int = 32,
                look_rng: np.random.Generator | None = None) -> Sample:
    """Preprocess one record and carry its truth into model space. ``look_rng``: render a
    film record as a digital mammogram first (:func:`mammo_scp.training.looks.digital_look`,
    settings drawn from it), then preprocess that as the node would."""
    if look_rng is not None and rec.spacing_mm is None:
        raise ValueError(f"{rec.key}: only film records (PNG) can be rendered in another look")
    if rec.spacing_mm is not None:
        src = read_source(rec)
        if look_rng is not None:
            from mammo_scp.training.looks import digital_look

            src = digital_look(src, rec.spacing_mm, look_rng)
        pre = preprocess_array(src, rec.spacing_mm, model_spacing_mm=model_spacing_mm,
                               laterality=rec.laterality, pad_multiple=pad_multiple)
    else:
        ds = pydicom.dcmread(rec.path)
        src = ds.pixel_array
        pre = preprocess_dataset(ds, model_spacing_mm=model_spacing_mm, pad_multiple=pad_multiple)
    masks = lesion_source_masks(rec, src.shape[:2])
    lesion_masks = np.stack([pre.transform.mask_from_source(m) for m in masks]) if len(masks) \
        else np.zeros((0,) + pre.image.shape, dtype=np.float32)
    return Sample(record=rec, pre=pre, source=src, lesion_masks=lesion_masks)


def load_samples(records: list[Record], model_spacing_mm: float, pad_multiple: int = 32
                 ) -> list[Sample]:
    return [make_sample(r, model_spacing_mm, pad_multiple) for r in records]
