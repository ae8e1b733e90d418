"""U-Net: shapes, dropout on every level, and a tiny network that learns a synthetic mass."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammo_scp.models.unet import (
    UNetConfig,
    build_unet,
    dice_coefficient,
    distillation_loss,
    iou_coefficient,
    segmentation_loss,
)
from tests.unit.models.conftest import synthetic_batch


def test_shapes_follow_the_input_and_head_is_sigmoid():
    model = build_unet(UNetConfig(depth=3, width=4))
    out = model(np.zeros((2, 64, 96, 1), np.float32))
    assert tuple(out.shape) == (2, 64, 96, 1)
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    assert model.get_layer("head").kernel_size == (1, 1)


def test_every_level_has_dropout_in_range_and_3x3_convs():
    cfg = UNetConfig(depth=4, width=4, dropout_min=0.1, dropout_max=0.5)
    model = build_unet(cfg)
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(drops) == 2 * cfg.depth + 1  # encoder levels, bottom, decoder levels
    assert all(0.1 <= d.rate <= 0.5 for d in drops)
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D]
    assert all(c.kernel_size == (3, 3) for c in convs if c.name != "head")


def test_dice_and_iou_metrics():
    a = np.zeros((1, 8, 8, 1), np.float32)
    a[0, :4] = 1
    b = np.zeros_like(a)
    b[0, 2:6] = 1
    assert float(dice_coefficient(a, a)) == 1.0
    assert abs(float(dice_coefficient(a, b, smooth=0.0)) - 0.5) < 1e-6
    assert abs(float(iou_coefficient(a, b, smooth=0.0)) - 1.0 / 3.0) < 1e-6


def test_tiny_unet_learns_a_synthetic_mass():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_unet(UNetConfig(depth=2, width=8, dropout_min=0.1, dropout_max=0.1,
                                  batch_norm=False, head_bias=0.0))
    opt = keras.optimizers.Adam(3e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = segmentation_loss(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    losses = []
    for _ in range(60):
        x, y, _ = synthetic_batch(rng, 8, 48, (5, 8))
        losses.append(float(step(x[..., None], y[..., None])))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    x, y, _ = synthetic_batch(np.random.default_rng(99), 4, 48, (6, 8))
    pred = model(x[..., None], training=False).numpy()[..., 0] >= 0.5
    dice = 2 * (pred & (y > 0)).sum() / (pred.sum() + (y > 0).sum())
    assert dice > 0.6


def test_the_distillation_term_is_least_where_the_network_says_what_the_teacher_says():
    teacher = np.array([0.0, 0.2, 0.7, 1.0], np.float32).reshape(1, 2, 2, 1)
    at_teacher = float(distillation_loss(teacher, np.clip(teacher, 1e-6, 1 - 1e-6)))
    for shift in (-0.1, 0.1):
        other = np.clip(teacher + shift, 0.01, 0.99).astype(np.float32)
        assert float(distillation_loss(teacher, other)) > at_teacher
    # a hard teacher is the cross-entropy of the truth
    assert float(distillation_loss(np.ones((1, 1, 1, 1), np.float32),
                                   np.full((1, 1, 1, 1), 0.5, np.float32))) == \
        pytest.approx(np.log(2.0), rel=1e-5)
