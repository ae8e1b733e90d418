"""Faster R-CNN: anchors, box coding, sampling, shapes, and a tiny detector that learns."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mammo_scp.models.frcnn import (
    FasterRCNN,
    FRCNNConfig,
    box_iou_np,
    decode_tf,
    encode_np,
    make_anchors,
    rpn_targets,
)
from tests.unit.models.conftest import synthetic_batch, train_detector_steps

TINY = FRCNNConfig(width=8, blocks=(1, 1, 1), anchor_sizes=(12.0, 20.0, 32.0), rpn_channels=32,
                   head_hidden=64, rpn_pre_nms=100, rpn_post_nms_train=32, rpn_post_nms_test=32,
                   rpn_samples=64, roi_samples=16, bn_momentum=0.9)


def test_anchor_grid_order_and_centres():
    cfg = FRCNNConfig(anchor_sizes=(16.0, 32.0))
    anchors = make_anchors(cfg, 2, 3)
    assert anchors.shape == (2 * 3 * 2, 4)
    # (row 0, col 1, anchor 1): centre (24, 8), size 32
    a = anchors[(0 * 3 + 1) * 2 + 1]
    assert np.allclose(a, [8.0, -8.0, 40.0, 24.0])


def test_box_encoding_round_trips():
    rng = np.random.default_rng(1)
    refs = np.abs(rng.normal(50, 20, (20, 2))).astype(np.float32)
    refs = np.hstack([refs, refs + rng.uniform(5, 40, (20, 2)).astype(np.float32)])
    boxes = refs + rng.normal(0, 3, refs.shape).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    back = decode_tf(tf.constant(encode_np(boxes, refs)), tf.constant(refs)).numpy()
    assert np.abs(back - boxes).max() < 1e-3


def test_rpn_targets_give_every_mass_an_anchor_and_respect_the_sample_size():
    anchors = make_anchors(TINY, 8, 8)
    gt = np.array([[40.0, 40.0, 56.0, 56.0], [90.0, 20.0, 99.0, 29.0]], np.float32)
    labels, deltas = rpn_targets(TINY, anchors, gt, np.random.default_rng(0))
    assert (labels >= 0).sum() <= TINY.rpn_samples
    pos = np.flatnonzero(labels == 1)
    iou = box_iou_np(anchors[pos], gt)
    assert (iou.max(axis=0) > 0).all()  # both masses, even the small one, are covered
    assert deltas.shape == (len(anchors), 4)
    empty_labels, _ = rpn_targets(TINY, anchors, np.zeros((0, 4), np.float32),
                                  np.random.default_rng(0))
    assert (empty_labels == 1).sum() == 0 and (empty_labels == 0).sum() == TINY.rpn_samples


def test_backbone_is_resnet50_topology_with_stride_16():
    net = FasterRCNN(FRCNNConfig(width=8))
    names = [layer.name for layer in net.backbone.layers]
    for stage, blocks in zip((2, 3, 4), (3, 4, 6), strict=True):
        assert sum(n.startswith(f"res{stage}_") and n.endswith("_c3") for n in names) == blocks
    features, logits, deltas = net.backbone(np.zeros((1, 128, 96, 1), np.float32))
    assert tuple(features.shape[1:3]) == (8, 6) and features.shape[-1] == 8 * 4 * 4
    assert logits.shape[-1] == net.cfg.num_anchors and deltas.shape[-1] == 4 * net.cfg.num_anchors
    cls, box = net.head(np.zeros((5, 7, 7, features.shape[-1]), np.float32))
    assert tuple(cls.shape) == (5, 3) and tuple(box.shape) == (5, 4)


def test_tiny_detector_learns_an_obvious_mass():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    net = FasterRCNN(TINY)
    size = 96
    losses = train_detector_steps(net, 150, 2e-3, rng, size)
    # the RPN losses fall (the head's box loss rises at first: more proposals become positive)
    assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:5])
    x, _, boxes = synthetic_batch(np.random.default_rng(7), 6, size, (8, 10))
    hits = 0
    for i in range(len(x)):
        det_boxes, scores, p_mal = net.detect(tf.constant(x[i][None, :, :, None]))[0]
        assert det_boxes.shape[0] == scores.shape[0] == p_mal.shape[0]
        if det_boxes.shape[0] == 0:
            continue
        b = det_boxes.numpy()[int(np.argmax(scores.numpy()))]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        t = boxes[i]
        hits += int(t[0] <= cx <= t[2] and t[1] <= cy <= t[3])
    assert hits >= 5
