"""The pectoral muscle of an oblique view, found as a straight edge, so that nothing in it is
reported: the muscle and the axilla above it are where a mass detector's classic false marks
sit (muscle edges, lymph nodes), and a mass is not looked for inside the muscle.

On a mediolateral-oblique view with the chest wall on the left (as the preprocessing turns
every image), the muscle is the bright triangle in the top-left corner, its edge running from
the top row down and to the left until it meets the chest wall. The edge is taken as the
straight line, of all lines from a point of the top row to a point of the left column, across
which the image darkens most: the mean of samples just inside it (towards the corner) minus
the mean of samples just outside, both on the breast only (Kwok et al. 2004, IEEE TMI 23(9),
approximate the muscle by a straight line first, too). The search runs on a copy reduced to
:data:`SEARCH_SPACING_MM`, before CLAHE (which flattens the muscle's brightness).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Views (View Position terms, or what :func:`mammo_scp.dicom.view_of` makes of a View Code
#: Sequence) that show the pectoral muscle as a triangle at the top of the chest wall:
#: mediolateral oblique, mediolateral, lateromedial, lateromedial oblique. A cranio-caudal
#: view shows at most a sliver at the chest wall, and is left alone.
OBLIQUE_VIEWS = frozenset({"MLO", "ML", "LM", "LMO"})

SEARCH_SPACING_MM = 2.0
#: Distances (mm) from a candidate edge at which it is sampled, on each side.
SAMPLE_OFFSETS_MM = (2.0, 4.0, 6.0)
#: Points sampled along a candidate edge.
SAMPLES_ALONG = 32
#: The edge meets the top row and the chest wall at least this far (mm) from the corner.
MIN_LEG_MM = 10.0
#: ... and meets the top row no further than this share of the breast's width from the wall.
MAX_TOP_SHARE = 0.8
#: Share of the inner samples that must lie on the breast: an edge whose triangle reaches
#: past the breast's outline (the top of a view cut by the detector's edge) is no muscle.
MIN_ON_BREAST = 0.8
#: Least contrast (on the [0, 1] presentation scale) across an edge taken as the muscle
#: (chosen by eye on the training split's images: the muscles found there give 0.07-0.31;
#: an edge found at 0.03-0.05 lay along no muscle).
MIN_CONTRAST = 0.06


def is_oblique(view: str | None) -> bool:
    """Whether a view (``MLO``, ``CC``, ...) shows the muscle."""
    return view is not None and view.strip().upper() in OBLIQUE_VIEWS


@dataclass(frozen=True)
class PectoralEdge:
    """The muscle's edge in model pixels (chest wall at column 0): the line from
    (``top_col``, 0) to (0, ``wall_row``); the muscle is the triangle it cuts off the corner."""

    top_col: float
    wall_row: float
    contrast: float

    def depth(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Signed distance (pixels) of points (x = column, y = row) from the edge: positive
        inside the muscle."""
        a, b = 1.0 / self.top_col, 1.0 / self.wall_row
        return np.asarray((1.0 - a * np.asarray(x) - b * np.asarray(y)) / np.hypot(a, b))


def find_pectoral(image01: np.ndarray, spacing_mm: float) -> PectoralEdge | None:
    """The muscle's edge on a breast image (chest wall on the left, outside the breast 0,
    ``spacing_mm`` a pixel), in its pixels; None where no edge darkens by
    :data:`MIN_CONTRAST` (no muscle in view, or too faint to tell)."""
    factor = spacing_mm / SEARCH_SPACING_MM
    rows, cols = image01.shape
    small_rows, small_cols = max(1, round(rows * factor)), max(1, round(cols * factor))
    small = cv2.resize(image01.astype(np.float32), (small_cols, small_rows),
                       interpolation=cv2.INTER_AREA)
    on_breast = small > 0
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    leg = MIN_LEG_MM / SEARCH_SPACING_MM
    tops = np.arange(leg, max(leg, MAX_TOP_SHARE * small_cols), 1.0)
    walls = np.arange(leg, small_rows, 1.0)
    if not len(tops) or not len(walls):
        return None
    top, wall = (g.ravel() for g in np.meshgrid(tops, walls))
    steep = wall >= top  # the muscle's edge is closer to the chest wall's line than to the top's
    top, wall = top[steep], wall[steep]
    if not len(top):
        return None
    t = (np.arange(SAMPLES_ALONG) + 0.5) / SAMPLES_ALONG
    along_x = top[:, None] * (1.0 - t)  # (candidates, samples): from the top row ...
    along_y = wall[:, None] * t  # ... to the chest wall
    length = np.hypot(top, wall)
    normal_x, normal_y = (wall / length)[:, None, None], (top / length)[:, None, None]
    offsets = np.array(SAMPLE_OFFSETS_MM) / SEARCH_SPACING_MM

    def sample(sign: float) -> tuple[np.ndarray, np.ndarray]:
        """Image values and on-breast flags at the offsets (sign -1: into the muscle)."""
        x = along_x[:, :, None] + sign * offsets * normal_x
        y = along_y[:, :, None] + sign * offsets * normal_y
        c = np.clip(np.floor(x).astype(int), 0, small_cols - 1)
        r = np.clip(np.floor(y).astype(int), 0, small_rows - 1)
        inside_image = (x >= 0) & (y >= 0) & (x < small_cols) & (y < small_rows)
        return small[r, c], on_breast[r, c] & inside_image

    inner, inner_ok = sample(-1.0)
    outer, outer_ok = sample(+1.0)
    n_in, n_out = inner_ok.sum(axis=(1, 2)), outer_ok.sum(axis=(1, 2))
    contrast = ((inner * inner_ok).sum(axis=(1, 2)) / np.maximum(n_in, 1)
                - (outer * outer_ok).sum(axis=(1, 2)) / np.maximum(n_out, 1))
    valid = (n_in >= MIN_ON_BREAST * inner_ok[0].size) & (n_out > 0)
    contrast = np.where(valid, contrast, -np.inf)
    best = int(np.argmax(contrast))
    if not np.isfinite(contrast[best]) or contrast[best] < MIN_CONTRAST:
        return None
    scale = 1.0 / factor
    return PectoralEdge(top_col=float(top[best] * scale), wall_row=float(wall[best] * scale),
                        contrast=float(contrast[best]))


__all__ = ["OBLIQUE_VIEWS", "PectoralEdge", "find_pectoral", "is_oblique"]
