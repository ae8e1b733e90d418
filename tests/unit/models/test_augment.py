"""Augmentation keeps image, masks and boxes together; insertion adds positives."""

from __future__ import annotations

import numpy as np

from mammo_scp.models.augment import augment, boxes_from_masks, cut_mass_patches
from mammo_scp.models.data import BENIGN, UNKNOWN


def _scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = np.clip(0.4 + 0.05 * rng.standard_normal((128, 96)), 0, 1).astype(np.float32)
    yy, xx = np.mgrid[0:128, 0:96]
    disk = ((yy - 60) ** 2 + (xx - 40) ** 2 <= 100).astype(np.float32)
    img = np.clip(img + 0.4 * disk, 0, 1)
    return img, disk[None]


def test_boxes_follow_the_warped_masks():
    img, masks = _scene()
    for seed in range(5):
        ex = augment(img, masks, [BENIGN], (128, 96), np.random.default_rng(seed))
        assert ex.image.shape == ex.mask.shape == (128, 96)
        assert ex.boxes.shape == (1, 4) and list(ex.labels) == [BENIGN]
        ys, xs = np.nonzero(ex.mask)
        assert abs(ex.boxes[0, 0] - xs.min()) <= 1 and abs(ex.boxes[0, 3] - (ys.max() + 1)) <= 1
        # the bright lesion moved with its mask
        assert ex.image[ex.mask > 0].mean() > ex.image[(ex.mask == 0) & (ex.image > 0)].mean()


def test_insertion_adds_a_positive_to_normal_tissue():
    img, masks = _scene()
    patches = cut_mass_patches(img, masks, [BENIGN])
    normal = np.full((128, 96), 0.4, np.float32)
    labels = set()
    for seed in range(12):
        ex = augment(normal, np.zeros((0, 128, 96), np.float32), [], (128, 96),
                     np.random.default_rng(seed), patches=patches, insert_prob=1.0)
        assert len(ex.boxes) == len(ex.labels) <= 1
        labels |= set(ex.labels.tolist())
    assert labels == {BENIGN, UNKNOWN}


def test_boxes_from_masks_skips_empty():
    m = np.zeros((2, 10, 10), np.float32)
    m[1, 2:5, 3:8] = 1
    boxes, keep = boxes_from_masks(m)
    assert keep.tolist() == [1] and boxes.tolist() == [[3, 2, 8, 5]]
