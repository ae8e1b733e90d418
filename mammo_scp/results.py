"""What the models found on one image, in the source image's own pixel grid.

This is the contract between inference (``mammo_scp.models``) and the DICOM
encoders (``mammo_scp.encode``): everything here is already mapped back through
crop, resampling and flips, so an encoder never needs to know the preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in source pixels: x is the column, y the row, both 0-based.

    ``x1``/``y1`` are exclusive edges, so a box covering a single pixel (r, c)
    is ``Box(c, r, c + 1, r + 1)``.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"box must have positive size, got {self}")

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the box centre."""
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)


@dataclass(frozen=True)
class Finding:
    """One detected mass.

    ``score`` is the detector's confidence that this is a mass at all;
    ``p_malignant`` the probability that the mass is malignant (benign vs
    malignant head of the detector), both in [0, 1].
    """

    box: Box
    score: float
    p_malignant: float

    def __post_init__(self) -> None:
        for name in ("score", "p_malignant"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class ModelInfo:
    """Name and version of a shipped model, as written into DICOM AlgorithmIdentification."""

    name: str
    version: str


@dataclass(frozen=True)
class ImageAnalysis:
    """The models' output for one source image.

    ``mask`` is a boolean array of shape (Rows, Columns) of the source image:
    True where the U-Net segments a mass.
    """

    sop_instance_uid: str
    mask: np.ndarray
    findings: tuple[Finding, ...]
    segmenter: ModelInfo
    detector: ModelInfo
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: the detector's highest mass score on the breast, whatever the finding threshold
    #: (0 where it saw nothing): what the image's breast- and exam-level scores build on
    mass_score: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mass_score <= 1.0:
            raise ValueError(f"mass_score must lie in [0, 1], got {self.mass_score}")
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(
                f"mask must be a 2-D boolean array, got {self.mask.dtype} {self.mask.shape}"
            )
