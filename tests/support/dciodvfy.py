"""Run David Clunie's ``dciodvfy`` (Debian dicom3tools) on an object and judge the result.

A test calls :func:`assert_dciodvfy_clean`: it writes the dataset to a file,
runs the validator, prints every warning (so ``pytest -s`` or a failure shows
them) and fails on any ``Error`` line.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

DCIODVFY = "dciodvfy"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Verdict:
    """What dciodvfy said about one file."""

    path: Path
    iod: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


def parse_output(path: Path, output: str) -> Verdict:
    """Split dciodvfy output into the IOD name it recognised, Error lines and Warning lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = tuple(line for line in lines if line.startswith("Error"))
    warnings = tuple(line for line in lines if line.startswith("Warning"))
    others = [line for line in lines if not line.startswith(("Error", "Warning"))]
    return Verdict(path=path, iod=others[0] if others else "", errors=errors, warnings=warnings)


def run_dciodvfy(path: Path) -> Verdict:
    """Validate the DICOM file at ``path`` (skips the test when dciodvfy is not installed)."""
    if shutil.which(DCIODVFY) is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    completed = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    return parse_output(path, completed.stdout + completed.stderr)


def assert_dciodvfy_clean(dataset: Dataset, directory: Path, name: str = "object.dcm") -> Verdict:
    """Write ``dataset`` into ``directory`` and fail the test on any dciodvfy Error line."""
    path = directory / name
    dataset.save_as(path, enforce_file_format=True)
    verdict = run_dciodvfy(path)
    for warning in verdict.warnings:
        print(f"dciodvfy {name}: {warning}")
    if verdict.errors:
        pytest.fail(f"dciodvfy found {len(verdict.errors)} error(s) in {name} "
                    f"({verdict.iod}):\n" + "\n".join(verdict.errors + verdict.warnings))
    return verdict
