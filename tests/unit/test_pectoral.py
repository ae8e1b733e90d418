"""The pectoral muscle of oblique views: found as a straight edge, and nothing in it reported."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from mammo_scp.dicom import view_of
from mammo_scp.models.analyzer import Detections, postprocess_mask
from mammo_scp.pectoral import PectoralEdge, find_pectoral, is_oblique
from mammo_scp.preprocess import preprocess_array

SPACING = 0.4  # mm a pixel, the models' spacing


def oblique_phantom(rows: int, cols: int, top_col: float, wall_row: float,
                    muscle: float = 0.25, seed: int = 0) -> np.ndarray:
    """A breast along the whole left edge (an oblique view, chest wall on the left), tissue
    0.45 with noise, outside 0, and a muscle ``muscle`` brighter in the corner triangle from
    (``top_col``, 0) to (0, ``wall_row``)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
    breast = (cc / (0.7 * cols)) ** 2 + ((rr - 0.45 * rows) / (0.6 * rows)) ** 2 <= 1.0
    img = np.where(breast, 0.45 + 0.05 * rng.standard_normal((rows, cols)), 0.0)
    img[breast & ((cc + 0.5) / top_col + (rr + 0.5) / wall_row < 1.0)] += muscle
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def test_the_edge_is_found_where_the_muscle_ends() -> None:
    edge = find_pectoral(oblique_phantom(500, 400, 120, 300), SPACING)
    assert edge is not None
    # within two search pixels (4 mm = 10 px) where it meets the top row and the wall
    assert abs(edge.top_col - 120) <= 10 and abs(edge.wall_row - 300) <= 10
    assert edge.contrast == pytest.approx(0.25, abs=0.05)


def test_no_edge_on_a_breast_without_a_muscle() -> None:
    assert find_pectoral(oblique_phantom(500, 400, 120, 300, muscle=0.0), SPACING) is None
    assert find_pectoral(np.zeros((500, 400), np.float32), SPACING) is None
    assert find_pectoral(np.zeros((3, 3), np.float32), SPACING) is None  # too small to hold one


def test_a_shallow_edge_is_no_muscle() -> None:
    """A bright band across the top (an edge that meets the wall above where it meets the
    top row) is not taken for the muscle, whose edge runs steeply down to the wall."""
    edge = find_pectoral(oblique_phantom(500, 400, 300, 100), SPACING)
    assert edge is None or edge.wall_row >= edge.top_col


def test_depth() -> None:
    edge = PectoralEdge(top_col=100.0, wall_row=200.0, contrast=0.2)
    assert edge.depth(0.0, 0.0) > 0 > edge.depth(100.0, 200.0)
    assert edge.depth(50.0, 100.0) == pytest.approx(0.0, abs=1e-9)
    rows, cols = np.mgrid[0:300, 0:200]
    mask = edge.depth(cols + 0.5, rows + 0.5) > 0  # the muscle: the corner's triangle
    assert mask[0, 0] and mask[150, 20] and not mask[0, 120] and not mask[250, 0]
    assert mask.sum() == pytest.approx(100 * 200 / 2, rel=0.02)


def test_which_views_show_the_muscle() -> None:
    assert is_oblique("MLO") and is_oblique("ml ") and is_oblique("LMO")
    assert not is_oblique("CC") and not is_oblique(None) and not is_oblique("")
    ds = Dataset()
    assert not is_oblique(view_of(ds))
    ds.ViewPosition = "CC"
    assert not is_oblique(view_of(ds))
    code = Dataset()
    code.CodeValue = "399368009"  # medio-lateral oblique
    ds.ViewCodeSequence = [code]
    assert is_oblique(view_of(ds))  # the code first


@pytest.mark.parametrize("laterality", ["R", "L"])
def test_preprocessing_looks_for_it_on_oblique_views_only(laterality: str) -> None:
    """In model space (chest wall on the left whatever the side), at the model's spacing."""
    image = oblique_phantom(1000, 800, 240, 600)  # 0.2 mm a pixel: 48 x 120 mm muscle
    if laterality == "L":
        image = image[:, ::-1]  # a left breast: chest wall on the right, as displayed
    pre = preprocess_array(image, 0.2, model_spacing_mm=SPACING, laterality=laterality,
                           view="MLO")
    assert pre.pectoral is not None
    assert pre.transform.flipped == (laterality == "L")
    assert abs(pre.pectoral.top_col - 120) <= 10 and abs(pre.pectoral.wall_row - 300) <= 10
    for view in ("CC", None):
        assert preprocess_array(image, 0.2, model_spacing_mm=SPACING, laterality=laterality,
                                view=view).pectoral is None


def test_nothing_centred_in_the_muscle_is_kept() -> None:
    edge = PectoralEdge(top_col=40.0, wall_row=80.0, contrast=0.2)
    det = Detections(boxes=np.array([[0.0, 0.0, 10.0, 10.0], [30.0, 60.0, 50.0, 80.0],
                                     [20.0, 20.0, 50.0, 50.0]]),
                     scores=np.array([0.9, 0.5, 0.3]), p_malignant=np.array([0.1, 0.2, 0.3]))
    kept = det.outside(edge)
    # (5, 5) lies in the muscle; (40, 70) and (35, 35) outside (the last box reaches in)
    assert kept.scores.tolist() == [0.5, 0.3] and kept.p_malignant.tolist() == [0.2, 0.3]
    assert det.outside(None) is det
    prob = np.zeros((100, 100), np.float32)
    prob[2:14, 2:14] = 0.9  # 144 px, in the muscle
    prob[60:70, 60:70] = 0.8  # 100 px, outside it
    none = np.zeros((0, 4))
    assert postprocess_mask(prob, 0.5, "largest", 0, none).sum() == 144
    largest_outside = postprocess_mask(prob, 0.5, "largest", 0, none, pectoral=edge)
    assert largest_outside.sum() == 100 and largest_outside[65, 65] == 1
    assert postprocess_mask(prob, 0.5, "all", 0, none, pectoral=edge).sum() == 100
