"""Augmentation keeps image, masks and boxes together; insertion adds positives."""

from __future__ import annotations

import numpy as np

from mammo_scp.training.augment import (
    Example,
    augment,
    boxes_from_masks,
    cut_mass_patches,
    random_crop,
)
from mammo_scp.training.data import BENIGN, UNKNOWN


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


def test_hard_negatives_move_with_the_image_and_change_nothing_else():
    img, disk = _scene()
    none = np.zeros((0, 128, 96), np.float32)
    for seed in range(5):
        plain = augment(img, none, [], (128, 96), np.random.default_rng(seed), insert_prob=0.0)
        hard = augment(img, none, [], (128, 96), np.random.default_rng(seed), insert_prob=0.0,
                       hard_regions=disk)
        both = augment(img, disk, [BENIGN], (128, 96), np.random.default_rng(seed),
                       insert_prob=0.0, hard_regions=disk)
        # the same view (no random number drawn for the regions), no truth added
        assert np.array_equal(plain.image, hard.image) and len(hard.boxes) == 0
        assert not hard.mask.any() and len(plain.hard_boxes) == 0
        # the region's box is where the same disk lands as a lesion
        assert len(hard.hard_boxes) == 1 and np.array_equal(both.hard_boxes, both.boxes)


def test_windows_centre_on_a_hard_negative_when_asked():
    image = np.full((256, 256), 0.5, np.float32)
    image[30, 210] = 1.0  # the centre of the hard negative
    box = np.array([[200, 20, 220, 40]], np.float32)
    ex = Example(image=image, mask=np.zeros_like(image), boxes=np.zeros((0, 4), np.float32),
                 labels=np.zeros((0,), np.int64), hard_boxes=box)
    for seed in range(10):
        window = random_crop(ex, (64, 64), np.random.default_rng(seed), 0.6, hard_prob=1.0)
        assert window.image.shape == (64, 64) and window.image.max() == 1.0
    seen = [random_crop(ex, (64, 64), np.random.default_rng(seed), 0.6, hard_prob=0.0)
            .image.max() for seed in range(10)]
    assert seen.count(1.0) < 5  # elsewhere on the tissue, mostly
    # with hard_prob 0 the draws are those of a plain window, number for number
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    plain = Example(image=image, mask=ex.mask, boxes=ex.boxes, labels=ex.labels)
    assert np.array_equal(random_crop(ex, (64, 64), a, 0.6, 0.0).image,
                          random_crop(plain, (64, 64), b, 0.6).image)
    assert a.random() == b.random()


def test_a_teachers_map_moves_with_the_image_and_changes_nothing_else():
    img, disk = _scene()
    for seed in range(5):
        plain = augment(img, disk, [BENIGN], (128, 96), np.random.default_rng(seed),
                        insert_prob=0.0)
        taught = augment(img, disk, [BENIGN], (128, 96), np.random.default_rng(seed),
                         insert_prob=0.0, soft=0.8 * disk[0])
        # the same view and truth (no random number drawn for the map)
        assert np.array_equal(plain.image, taught.image) and plain.soft is None
        assert np.array_equal(plain.mask, taught.mask)
        # the map lands where the lesion does, its values kept
        assert taught.soft is not None and taught.soft.shape == (128, 96)
        assert np.array_equal(taught.soft >= 0.4, taught.mask > 0)
        assert abs(float(taught.soft.max()) - 0.8) < 1e-5
        window = random_crop(taught, (64, 64), np.random.default_rng(seed), lesion_prob=1.0)
        assert window.soft is not None and np.array_equal(window.soft >= 0.4, window.mask > 0)
        assert window.mask.any()
