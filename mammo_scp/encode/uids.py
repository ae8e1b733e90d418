"""Deterministic UIDs, series numbers and instance numbers for the result objects.

A re-run on the same input with the same models must produce objects with the
same UIDs, so that a PACS replaces (deduplicates) instead of doubling them. A
new model version must produce new UIDs, because the content changes.

UIDs are ``2.25.<decimal>`` UUID-derived UIDs (PS3.5 B.2): the decimal is the
first 128 bits of a SHA-256 over the inputs, which keeps them at most 44
characters long.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import Enum, IntEnum

from pydicom.uid import UID

UUID_DERIVED_ROOT = "2.25."


class ObjectKind(Enum):
    """Which result object (or part of one) a UID identifies."""

    SEG_SERIES = "seg-series"
    SEG_INSTANCE = "seg-instance"
    SEG_DIMENSION_ORGANIZATION = "seg-dimension-organization"
    SR_SERIES = "measurement-report-series"
    SR_INSTANCE = "measurement-report-instance"
    CAD_SR_SERIES = "cad-sr-series"
    CAD_SR_INSTANCE = "cad-sr-instance"
    GSPS_SERIES = "gsps-series"
    GSPS_INSTANCE = "gsps-instance"
    NO_FINDINGS_SERIES = "no-findings-series"
    NO_FINDINGS_INSTANCE = "no-findings-instance"
    SEGMENT_TRACKING = "segment-tracking"
    FINDING_TRACKING = "finding-tracking"
    DEVICE_OBSERVER = "device-observer"


class SeriesNumber(IntEnum):
    """Fixed series numbers of the result series, high enough to sort after the modality's."""

    SEG = 9001
    MEASUREMENT_REPORT = 9002
    CAD_SR = 9003
    GSPS = 9004
    NO_FINDINGS = 9005


def derive_uid(kind: ObjectKind, *parts: str) -> UID:
    """A UID that depends only on ``kind`` and ``parts`` (e.g. source UID and model version).

    Raises
    ------
    ValueError
        If no part is given or a part is empty: such a UID would collide across inputs.
    """
    if not parts or any(not part for part in parts):
        raise ValueError(f"parts must be non-empty strings, got {parts!r}")
    digest = hashlib.sha256("\x1f".join((kind.value, *parts)).encode("utf-8")).digest()
    return UID(UUID_DERIVED_ROOT + str(int.from_bytes(digest[:16], "big")))


def model_key(versions: Iterable[tuple[str, str]]) -> str:
    """One string naming the models (name and version) that shaped an object."""
    return ";".join(f"{name}={version}" for name, version in versions)
