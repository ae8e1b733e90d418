"""Fixtures of the model tests: the repository's models folder, mini-MIAS, synthetic masses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[3]
MIAS_DIR = (REPO_ROOT.parent / "shared" / "data" / "mias-train").resolve()
MODELS_DIR = REPO_ROOT / "models"


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    assert (MIAS_DIR / "annotations.csv").is_file(), f"mini-MIAS folder expected at {MIAS_DIR}"
    return MIAS_DIR


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS_DIR


def synthetic_batch(rng: np.random.Generator, n: int, size: int, radius: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured backgrounds with one bright soft disk each: images, masks, boxes (x0,y0,x1,y1)."""
    import cv2

    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        bg = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.0)
        r = int(rng.integers(radius[0], radius[1] + 1))
        cy, cx = rng.integers(r + 2, size - r - 2, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        images[i] = np.clip(0.35 + 0.3 * bg + 0.45 * np.exp(-d2 / (2 * (r / 1.3) ** 2)), 0, 1)
        masks[i] = (d2 <= r * r).astype(np.float32)
        boxes[i] = [cx - r, cy - r, cx + r + 1, cy + r + 1]
    return images, masks, boxes


def train_detector_steps(net: Any, steps: int, lr: float, rng: np.random.Generator,
                         size: int = 96, batch: int = 4) -> list[float]:
    """Train ``net`` (a FasterRCNN) on synthetic masses; the RPN loss of every step."""
    import keras
    import tensorflow as tf

    from mammo_scp.models.frcnn import make_anchors, rpn_targets

    cfg = net.cfg
    anchors = make_anchors(cfg, size // cfg.stride, size // cfg.stride)
    opt = keras.optimizers.Adam(lr)

    @tf.function  # type: ignore[untyped-decorator]
    def step(images: Any, rpn_l: Any, rpn_d: Any, gt_b: Any, gt_l: Any, gt_v: Any) -> Any:
        with tf.GradientTape() as tape:
            parts = net.losses(images, rpn_l, rpn_d, gt_b, gt_l, gt_v)
            total = tf.add_n(list(parts.values()))
        grads = tape.gradient(total, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        return parts["rpn_cls"] + parts["rpn_box"]

    losses = []
    for _ in range(steps):
        x, _, boxes = synthetic_batch(rng, batch, size, (7, 10))
        rpn = [rpn_targets(cfg, anchors, boxes[i:i + 1], rng) for i in range(batch)]
        gt_b = np.zeros((batch, 2, 4), np.float32)
        gt_b[:, 0] = boxes
        gt_l = np.zeros((batch, 2), np.int32)
        gt_l[:, 0] = 2
        gt_v = np.zeros((batch, 2), bool)
        gt_v[:, 0] = True
        losses.append(float(step(x[..., None], np.stack([r[0] for r in rpn]),
                                 np.stack([r[1] for r in rpn]), gt_b, gt_l, gt_v)))
    return losses
