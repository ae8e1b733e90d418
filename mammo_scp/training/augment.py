"""Training augmentation in model space: geometry, intensity, elastic, and mass insertion.

Every geometric step is applied to the image and to each lesion mask alike; boxes are
re-derived from the warped lesion masks, so they stay exact whatever the warp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from mammo_scp.training.data import UNKNOWN


@dataclass(frozen=True)
class Example:
    """One augmented training example: image (H, W), union mask (H, W), boxes (N, 4), labels,
    the boxes of its hard negatives (tissue a detector took for a mass; not truth), and a
    teacher's probability map (H, W) when one was given."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    hard_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    soft: np.ndarray | None = None


@dataclass(frozen=True)
class MassPatch:
    """A real mass cut from a training image: pixels, soft alpha and its severity label."""

    pixels: np.ndarray
    alpha: np.ndarray
    label: int

#: The zoom range of :func:`augment` unless a recipe says otherwise.
DEFAULT_SCALE = (0.85, 1.15)


def fit(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad the last two axes to ``shape`` (top-left anchored)."""
    out = np.zeros(arr.shape[:-2] + shape, dtype=arr.dtype)
    r, c = min(shape[0], arr.shape[-2]), min(shape[1], arr.shape[-1])
    out[..., :r, :c] = arr[..., :r, :c]
    return out


def boxes_from_masks(masks: np.ndarray, min_size: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(x0, y0, x1, y1) edge boxes of each mask >= 0.5; indices of the non-empty ones."""
    boxes, keep = [], []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m >= 0.5)
        if len(xs) == 0:
            continue
        box = [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
        if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
            boxes.append(box)
            keep.append(i)
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(keep, dtype=np.int64)


def cut_mass_patches(image: np.ndarray, lesion_masks: np.ndarray, labels: list[int]
                     ) -> list[MassPatch]:
    """Cut each lesion with a margin; the alpha is a soft version of its disk."""
    patches = []
    for mask, label in zip(lesion_masks, labels, strict=True):
        ys, xs = np.nonzero(mask >= 0.5)
        if len(xs) < 4:
            continue
        r0, r1, c0, c1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        pad = max(2, (r1 - r0) // 4)
        r0, c0 = max(0, r0 - pad), max(0, c0 - pad)
        r1, c1 = min(image.shape[0], r1 + pad), min(image.shape[1], c1 + pad)
        alpha = cv2.GaussianBlur(mask[r0:r1, c0:c1].astype(np.float32), (0, 0),
                                 sigmaX=max(1.0, pad / 2))
        patches.append(MassPatch(image[r0:r1, c0:c1].copy(), alpha, label))
    return patches


def _place(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
           avoid: np.ndarray) -> tuple[int, int] | None:
    """A top-left corner where a patch of ``size`` lies on breast tissue away from lesions."""
    h, w = size
    if image.shape[0] <= h or image.shape[1] <= w:
        return None
    for _ in range(20):
        r = int(rng.integers(0, image.shape[0] - h))
        c = int(rng.integers(0, image.shape[1] - w))
        region = image[r:r + h, c:c + w]
        if (region > 0.05).mean() > 0.98 and avoid[r:r + h, c:c + w].max() < 0.5:
            return r, c
    return None


def insert_real_mass(image: np.ndarray, masks: np.ndarray, labels: list[int],
                     patch: MassPatch, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paste a real mass's excess over its surrounding tissue into normal tissue."""
    scale = float(rng.uniform(0.8, 1.25))
    pix = cv2.resize(patch.pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(patch.alpha, (pix.shape[1], pix.shape[0]), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        pix, alpha = pix[::-1], alpha[::-1]
    avoid = masks.max(axis=0) if len(masks) else np.zeros_like(image)
    where = _place(image, pix.shape, rng, avoid)
    if where is None:
        return image, masks, labels
    r, c = where
    ring = (alpha > 0.05) & (alpha < 0.3)
    base = float(pix[ring].mean()) if ring.any() else float(pix.min())
    excess = np.clip(pix - base, 0.0, None)
    out = image.copy()
    h, w = pix.shape
    out[r:r + h, c:c + w] = np.clip(out[r:r + h, c:c + w] + alpha * excess, 0.0, 1.0)
    new_mask = np.zeros((1,) + image.shape, dtype=np.float32)
    new_mask[0, r:r + h, c:c + w] = (alpha >= 0.5).astype(np.float32)
    return out, np.concatenate([masks, new_mask]), labels + [patch.label]


def insert_synthetic_mass(image: np.ndarray, masks: np.ndarray, labels: list[int],
                          rng: np.random.Generator, spacing_mm: float
                          ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Add a soft, lobulated bright blob (3-20 mm radius) of unknown severity."""
    radius = float(rng.uniform(3.0, 20.0)) / spacing_mm
    size = int(2 * radius * 1.6) + 3
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2.0
    angle = np.arctan2(yy, xx)
    wobble = 1.0 + sum(float(rng.uniform(0, 0.12)) * np.cos(k * angle + float(rng.uniform(0, 6.3)))
                       for k in (2, 3, 5))
    ratio = float(rng.uniform(0.7, 1.0))
    dist = np.sqrt(xx ** 2 + (yy / ratio) ** 2) / (radius * wobble)
    shape = np.clip(1.0 - dist, 0.0, 1.0) ** float(rng.uniform(0.3, 0.8))
    texture = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.5)
    blob = shape * float(rng.uniform(0.12, 0.35)) * (1.0 + 0.25 * texture)
    avoid = masks.max(axis=0) if len(masks) else np.zeros_like(image)
    where = _place(image, (size, size), rng, avoid)
    if where is None:
        return image, masks, labels
    r, c = where
    out = image.copy()
    out[r:r + size, c:c + size] = np.clip(out[r:r + size, c:c + size] + blob, 0.0, 1.0)
    new_mask = np.zeros((1,) + image.shape, dtype=np.float32)
    new_mask[0, r:r + size, c:c + size] = (dist <= 1.0).astype(np.float32)
    return out, np.concatenate([masks, new_mask]), labels + [UNKNOWN]


def _elastic(shape: tuple[int, int], rng: np.random.Generator, alpha: float, sigma: float
             ) -> tuple[np.ndarray, np.ndarray]:
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, shape).astype(np.float32), (0, 0), sigma) * alpha
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, shape).astype(np.float32), (0, 0), sigma) * alpha
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return xx + dx, yy + dy


def augment(image: np.ndarray, lesion_masks: np.ndarray, labels: list[int],
            out_shape: tuple[int, int], rng: np.random.Generator, *,
            patches: list[MassPatch] | None = None, spacing_mm: float = 0.8,
            insert_prob: float = 0.5, elastic: bool = True,
            scale: tuple[float, float] = DEFAULT_SCALE,
            hard_regions: np.ndarray | None = None, soft: np.ndarray | None = None) -> Example:
    """A random training view of one sample at the fixed ``out_shape``, zoomed by a factor
    drawn from ``scale``.

    ``hard_regions`` (M, H, W): masks of hard negatives, warped like the lesions (no random
    numbers drawn for them) and returned as ``hard_boxes``. ``soft`` (H, W): a teacher's
    probability map of the image, warped like it (no random numbers drawn for it either; a
    mass inserted here is not on it) and returned as ``soft``.
    """
    img = image.astype(np.float32)
    masks = lesion_masks.astype(np.float32)
    labs = list(labels)
    if not labs and rng.random() < insert_prob:
        if patches and rng.random() < 0.6:
            patch = patches[int(rng.integers(len(patches)))]
            img, masks, labs = insert_real_mass(img, masks, labs, patch, rng)
        else:
            img, masks, labs = insert_synthetic_mass(img, masks, labs, rng, spacing_mm)
    h, w = img.shape
    centre = (w / 2.0, h / 2.0)
    m = cv2.getRotationMatrix2D(centre, float(rng.uniform(-12, 12)), float(rng.uniform(*scale)))
    m[:, 2] += rng.uniform(-0.06, 0.06, 2) * np.array([w, h])
    def warp(a: np.ndarray) -> np.ndarray:
        return np.asarray(cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0))

    img = warp(img)
    hard = np.zeros((0, h, w), np.float32) if hard_regions is None \
        else hard_regions.astype(np.float32)
    if len(masks):
        masks = np.stack([warp(mk) for mk in masks])
    if len(hard):
        hard = np.stack([warp(mk) for mk in hard])
    teacher = None if soft is None else warp(soft.astype(np.float32))
    if elastic and rng.random() < 0.5:
        mx, my = _elastic((h, w), rng, alpha=float(rng.uniform(2, 5)), sigma=8.0)
        img = np.asarray(cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderValue=0.0))
        if len(masks):
            masks = np.stack([cv2.remap(mk, mx, my, cv2.INTER_LINEAR, borderValue=0.0)
                              for mk in masks])
        if len(hard):
            hard = np.stack([cv2.remap(mk, mx, my, cv2.INTER_LINEAR, borderValue=0.0)
                             for mk in hard])
        if teacher is not None:
            teacher = np.asarray(cv2.remap(teacher, mx, my, cv2.INTER_LINEAR, borderValue=0.0))
    if rng.random() < 0.5:  # up/down: MLO views differ in how far the breast is pulled
        img = img[::-1]
        masks = masks[:, ::-1]
        hard = hard[:, ::-1]
        teacher = None if teacher is None else teacher[::-1]
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    img = np.clip(img, 0.0, 1.0) ** gamma
    img = np.clip(img * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.08, 0.08)), 0, 1)
    img = fit(np.ascontiguousarray(img), out_shape)
    masks = fit(np.ascontiguousarray(masks), out_shape)
    boxes, keep = boxes_from_masks(masks)
    union = masks.max(axis=0) if len(masks) else np.zeros(out_shape, dtype=np.float32)
    hard_boxes = boxes_from_masks(fit(np.ascontiguousarray(hard), out_shape))[0]
    return Example(image=img.astype(np.float32), mask=(union >= 0.5).astype(np.float32),
                   boxes=boxes, labels=np.array(labs, dtype=np.int64)[keep] if len(keep)
                   else np.zeros((0,), dtype=np.int64), hard_boxes=hard_boxes,
                   soft=None if teacher is None
                   else fit(np.ascontiguousarray(teacher), out_shape).astype(np.float32))


def random_crop(example: Example, size: tuple[int, int], rng: np.random.Generator,
                lesion_prob: float = 0.7, hard_prob: float = 0.0) -> Example:
    """A ``size`` window: around a lesion with ``lesion_prob`` (when there is one), else around
    a hard negative with ``hard_prob`` (when there is one), else on tissue.

    Segmentation trains faster on such windows: a mass fills a larger share of the pixels. A
    detector learns from windows on the tissue it took for a mass (hard-negative mining).
    """
    h, w = example.image.shape
    ch, cw = min(size[0], h), min(size[1], w)
    if len(example.boxes) and rng.random() < lesion_prob:
        x0, y0, x1, y1 = example.boxes[int(rng.integers(len(example.boxes)))]
        cy = (y0 + y1) / 2 + rng.uniform(-0.3, 0.3) * ch
        cx = (x0 + x1) / 2 + rng.uniform(-0.3, 0.3) * cw
    elif hard_prob > 0 and len(example.hard_boxes) and rng.random() < hard_prob:
        x0, y0, x1, y1 = example.hard_boxes[int(rng.integers(len(example.hard_boxes)))]
        cy = (y0 + y1) / 2 + rng.uniform(-0.3, 0.3) * ch
        cx = (x0 + x1) / 2 + rng.uniform(-0.3, 0.3) * cw
    else:
        ys, xs = np.nonzero(example.image > 0.05)
        if len(xs):
            k = int(rng.integers(len(xs)))
            cy, cx = float(ys[k]), float(xs[k])
        else:
            cy, cx = h / 2, w / 2
    r0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
    c0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
    image = example.image[r0:r0 + ch, c0:c0 + cw]
    mask = example.mask[r0:r0 + ch, c0:c0 + cw]
    boxes = example.boxes.copy()
    if len(boxes):
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] - c0, 0, cw)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] - r0, 0, ch)
        keep = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        boxes, labels = boxes[keep], example.labels[keep]
    else:
        labels = example.labels
    soft = None if example.soft is None \
        else np.ascontiguousarray(fit(example.soft[r0:r0 + ch, c0:c0 + cw], size))
    return Example(image=np.ascontiguousarray(fit(image, size)),
                   mask=np.ascontiguousarray(fit(mask, size)), boxes=boxes, labels=labels,
                   soft=soft)
