"""Batch normalisation folded into the convolutions: same outputs, no BatchNormalization left."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from mammo_scp.models.fold import fold_batch_norm
from mammo_scp.models.frcnn import FasterRCNN
from mammo_scp.models.unet import UNetConfig, build_unet
from tests.unit.models.test_frcnn import TINY


def _trained_statistics(model: keras.Model, seed: int) -> None:
    """Give every BatchNormalization the kind of statistics training leaves (not 0 and 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = int(layer.gamma.shape[0])
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.2, 2.0, n)])


def _batch_norms(model: keras.Model) -> int:
    return sum(isinstance(layer, layers.BatchNormalization) for layer in model.layers)


def test_a_folded_unet_gives_the_trained_unets_output() -> None:
    cfg = UNetConfig(depth=3, width=8)
    trained = build_unet(cfg)
    _trained_statistics(trained, 1)
    folded = build_unet(cfg, fold_bn=True)
    fold_batch_norm(trained, folded)
    assert _batch_norms(trained) == 2 * (cfg.depth * 2 + 1) and _batch_norms(folded) == 0
    x = tf.constant(np.random.default_rng(2).random((1, 96, 64, 1), np.float32))
    expected = trained(x, training=False).numpy()
    assert expected.std() > 1e-3  # the check below compares something
    np.testing.assert_allclose(folded(x, training=False).numpy(), expected, atol=2e-5)


def test_a_folded_detector_gives_the_trained_detectors_features_and_findings() -> None:
    trained = FasterRCNN(TINY)
    _trained_statistics(trained.backbone, 3)
    folded = trained.for_inference()
    assert _batch_norms(trained.backbone) > 0 and _batch_norms(folded.backbone) == 0
    x = tf.constant(np.random.default_rng(4).random((1, 128, 96, 1), np.float32))
    for got, want in zip(folded.backbone(x, training=False), trained.backbone(x, training=False),
                         strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    boxes, scores, _ = folded.detect_one(x)
    want_boxes, want_scores, _ = trained.detect_one(x)
    np.testing.assert_allclose(scores.numpy(), want_scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes.numpy(), want_boxes.numpy(), atol=1e-2)


def test_folding_needs_the_inference_form() -> None:
    trained = build_unet(UNetConfig(depth=2, width=4))
    with pytest.raises(ValueError, match="still has BatchNormalization"):
        fold_batch_norm(trained, build_unet(UNetConfig(depth=2, width=4)))
