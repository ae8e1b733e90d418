"""Real mini-MIAS mammograms (../shared/data/mias-train, research licence) as MG datasets.

The PNGs are read from beside the repository, never copied into it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.mg import Patient, make_mg

MIAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mias-train"
MIAS_SPACING_MM = 0.2
DEFAULT_PATIENT = Patient()


@dataclass(frozen=True)
class Lesion:
    """A truth circle in image pixels (row from the top)."""

    x: float
    row: float
    radius: float
    malignant: bool


def mias_pixels(ref: str) -> np.ndarray:
    path = MIAS / f"{ref}.png"
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise FileNotFoundError(f"mini-MIAS image {path} not found (expected beside the repo)")
    return pixels


def mias_laterality(ref: str) -> str:
    """Even numbers are left breasts, odd numbers right (the data set's README)."""
    return "L" if int(ref[3:]) % 2 == 0 else "R"


def mias_masses(ref: str) -> list[Lesion]:
    with open(MIAS / "annotations.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["refnum"] == ref and r["is_mass"] == "1"]
    return [Lesion(float(r["x"]), float(r["row_from_top"]), float(r["radius"]),
                   r["severity"] == "M") for r in rows if r["x"]]


def mias_dataset(ref: str, view: str, *, study_uid: str, patient: Patient = DEFAULT_PATIENT,
                 instance_number: int = 1, pixels: np.ndarray | None = None) -> Dataset:
    """A MIAS image as an 8-bit MG For Presentation dataset at 0.2 mm."""
    data = mias_pixels(ref) if pixels is None else pixels
    return make_mg(mias_laterality(ref), view, study_uid=study_uid, patient=patient,
                   pixels=data.astype(np.uint8), spacing_mm=MIAS_SPACING_MM, bits_stored=8,
                   instance_number=instance_number)


#: Four views in which the shipped models find the masses of the left breast (mdb010 and
#: mdb012) and nothing on the right: a study that gets SEGs and a Measurement Report.
MASS_STUDY = {("R", "CC"): "mdb009", ("L", "CC"): "mdb010", ("R", "MLO"): "mdb011",
              ("L", "MLO"): "mdb012"}


def mias_mass_study(directory: Path) -> tuple[str, list[Path]]:
    """Write :data:`MASS_STUDY` as a new study into ``directory``; return UID and files."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = str(generate_uid())
    paths = []
    for number, ((laterality, view), ref) in enumerate(MASS_STUDY.items(), start=1):
        path = directory / f"{laterality}{view}.dcm"
        mias_dataset(ref, view, study_uid=study_uid, instance_number=number).save_as(
            path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths
