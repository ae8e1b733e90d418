"""Faster R-CNN (seed 000) written for Keras 3 / TensorFlow: ResNet50 cut after stage 4.

Backbone: ResNet50 bottleneck topology (stem, stages of 3, 4 and 6 bottleneck blocks, total
stride 16), with a width multiplier. RPN: 3x3 conv, objectness logits and box deltas per anchor.
Proposals: decode, top-k, NMS. RoI Align: ``tf.image.crop_and_resize`` to 14x14 then 2x2 max
pool. Box head: two dense layers, class logits {background, benign mass, malignant mass} and
class-agnostic box refinement. Training samples anchors and RoIs per image.

Boxes are ``(x0, y0, x1, y1)`` in model-input pixel-edge coordinates throughout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from mammo_scp.models.fold import fold_batch_norm

BOX_STD = np.array([0.1, 0.1, 0.2, 0.2], dtype=np.float32)
NUM_CLASSES = 3  # background, benign mass, malignant mass
UNKNOWN_LABEL = 3  # training only: a mass whose severity is unknown (foreground, no B/M loss)


@dataclass(frozen=True)
class FRCNNConfig:
    """Architecture and sampling settings of the detector."""

    width: int = 16  # stem filters; ResNet50 uses 64 (stage widths scale with it)
    blocks: tuple[int, int, int] = (3, 4, 6)
    anchor_sizes: tuple[float, ...] = (12.0, 20.0, 32.0, 52.0, 84.0)
    anchor_ratios: tuple[float, ...] = (1.0,)
    stride: int = 16
    rpn_channels: int = 128
    head_hidden: int = 256
    roi_size: int = 7
    rpn_pre_nms: int = 300
    rpn_post_nms_train: int = 64
    rpn_post_nms_test: int = 100
    rpn_nms_iou: float = 0.7
    rpn_pos_iou: float = 0.5
    rpn_neg_iou: float = 0.3
    rpn_samples: int = 128
    roi_samples: int = 32
    roi_pos_fraction: float = 0.25
    roi_pos_iou: float = 0.5
    det_nms_iou: float = 0.3
    max_detections: int = 20
    bn_momentum: float = 0.99
    # the ImageNet ResNet50 layout (keras.applications, seed 000's "ResNet extractor"):
    # stride on each stage's first 1x1 convolution, input scaled to 0-255 (the ImageNet mean
    # is folded into the stem), see mammo_scp.training.backbone
    stride_in_1x1: bool = False
    input_scale: tuple[float, float] = (2.0, -1.0)  # [0, 1] -> x * scale + offset
    head_reduce: int = 0  # 1x1 convolution to this many channels before the box head (0: none)
    frozen_stages: int = 0  # training: 1 freezes the stem, 2 also stage 2, ...
    frozen_bn: bool = False  # training: batch normalisation keeps its statistics and affine
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FRCNNConfig:
        d = dict(d)
        for key in ("blocks", "anchor_sizes", "anchor_ratios", "input_scale"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# ----------------------------------------------------------------------------- anchors and boxes

def make_anchors(cfg: FRCNNConfig, feat_h: int, feat_w: int) -> np.ndarray:
    """(feat_h * feat_w * A, 4) anchors, ordered (row, column, anchor) like the RPN outputs."""
    base = []
    for size in cfg.anchor_sizes:
        for ratio in cfg.anchor_ratios:
            w = size / np.sqrt(ratio)
            h = size * np.sqrt(ratio)
            base.append([-w / 2, -h / 2, w / 2, h / 2])
    base_arr = np.array(base, dtype=np.float32)
    cy = (np.arange(feat_h, dtype=np.float32) + 0.5) * cfg.stride
    cx = (np.arange(feat_w, dtype=np.float32) + 0.5) * cfg.stride
    gx, gy = np.meshgrid(cx, cy)
    centres = np.stack([gx, gy, gx, gy], axis=-1).reshape(-1, 1, 4)
    return (centres + base_arr[None]).reshape(-1, 4)


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of edge boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6))


def encode_np(boxes: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Deltas (dx, dy, dw, dh) / BOX_STD of ``boxes`` relative to ``refs``."""
    rw, rh = refs[:, 2] - refs[:, 0], refs[:, 3] - refs[:, 1]
    rx, ry = refs[:, 0] + rw / 2, refs[:, 1] + rh / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    d = np.stack([(bx - rx) / rw, (by - ry) / rh, np.log(bw / rw), np.log(bh / rh)], axis=1)
    return (d / BOX_STD).astype(np.float32)


def box_iou_tf(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    x0 = tf.maximum(a[:, None, 0], b[None, :, 0])
    y0 = tf.maximum(a[:, None, 1], b[None, :, 1])
    x1 = tf.minimum(a[:, None, 2], b[None, :, 2])
    y1 = tf.minimum(a[:, None, 3], b[None, :, 3])
    inter = tf.nn.relu(x1 - x0) * tf.nn.relu(y1 - y0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / tf.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def encode_tf(boxes: tf.Tensor, refs: tf.Tensor) -> tf.Tensor:
    rw, rh = refs[:, 2] - refs[:, 0], refs[:, 3] - refs[:, 1]
    rx, ry = refs[:, 0] + rw / 2, refs[:, 1] + rh / 2
    bw = tf.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    bh = tf.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    d = tf.stack([(bx - rx) / rw, (by - ry) / rh, tf.math.log(bw / rw), tf.math.log(bh / rh)], 1)
    return d / BOX_STD


def decode_tf(deltas: tf.Tensor, refs: tf.Tensor) -> tf.Tensor:
    d = tf.cast(deltas, tf.float32) * BOX_STD
    rw, rh = refs[:, 2] - refs[:, 0], refs[:, 3] - refs[:, 1]
    rx, ry = refs[:, 0] + rw / 2, refs[:, 1] + rh / 2
    cx, cy = rx + d[:, 0] * rw, ry + d[:, 1] * rh
    clip = float(np.log(1000.0 / 16.0))
    w = rw * tf.exp(tf.minimum(d[:, 2], clip))
    h = rh * tf.exp(tf.minimum(d[:, 3], clip))
    return tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def rpn_targets(cfg: FRCNNConfig, anchors: np.ndarray, gt: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Sampled anchor labels (1 mass, 0 background, -1 ignored) and regression targets."""
    labels = np.full(len(anchors), -1, dtype=np.float32)
    deltas = np.zeros((len(anchors), 4), dtype=np.float32)
    if len(gt):
        iou = box_iou_np(anchors, gt)
        best = iou.max(axis=1)
        arg = iou.argmax(axis=1)
        labels[best < cfg.rpn_neg_iou] = 0
        labels[best >= cfg.rpn_pos_iou] = 1
        labels[iou.argmax(axis=0)] = 1  # every mass gets its best anchor
        deltas = encode_np(gt[arg], anchors)
    else:
        labels[:] = 0
    pos = np.flatnonzero(labels == 1)
    n_pos = min(len(pos), cfg.rpn_samples // 2)
    if len(pos) > n_pos:
        labels[rng.choice(pos, len(pos) - n_pos, replace=False)] = -1
    neg = np.flatnonzero(labels == 0)
    n_neg = cfg.rpn_samples - n_pos
    if len(neg) > n_neg:
        labels[rng.choice(neg, len(neg) - n_neg, replace=False)] = -1
    return labels, deltas


# ----------------------------------------------------------------------------------- networks

def _conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, bn_name: str,
             dtype: Any, momentum: float, fold_bn: bool, gamma: str = "ones",
             padding: str = "same") -> Any:
    """A convolution and its BatchNormalization; with ``fold_bn`` the convolution alone, with
    a bias (the inference form, see :mod:`mammo_scp.models.fold`)."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=fold_bn,
                      name=name, dtype=dtype)(x)
    if fold_bn:
        return x
    return layers.BatchNormalization(name=bn_name, gamma_initializer=gamma, momentum=momentum,
                                     dtype=dtype)(x)


def _bottleneck(x: Any, filters: int, stride: int, project: bool, name: str, dtype: Any,
                momentum: float, fold_bn: bool, stride_in_1x1: bool = False) -> Any:
    shortcut = x
    if project:
        shortcut = _conv_bn(x, 4 * filters, 1, stride, f"{name}_proj", f"{name}_proj_bn",
                            dtype, momentum, fold_bn)
    s1, s2 = (stride, 1) if stride_in_1x1 else (1, stride)
    y = _conv_bn(x, filters, 1, s1, f"{name}_c1", f"{name}_bn1", dtype, momentum, fold_bn)
    y = layers.Activation("relu", dtype=dtype)(y)
    y = _conv_bn(y, filters, 3, s2, f"{name}_c2", f"{name}_bn2", dtype, momentum, fold_bn)
    y = layers.Activation("relu", dtype=dtype)(y)
    y = _conv_bn(y, 4 * filters, 1, 1, f"{name}_c3", f"{name}_bn3", dtype, momentum, fold_bn,
                 gamma="zeros")
    y = layers.Add(dtype=dtype)([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out", dtype=dtype)(y)


def build_backbone_rpn(cfg: FRCNNConfig, dtype: Any = None, fold_bn: bool = False
                       ) -> keras.Model:
    """Image (B, H, W, 1) -> features (B, H/16, W/16, C), RPN logits (B, h, w, A), deltas.

    ``fold_bn``: the inference form, without BatchNormalization layers (see
    :mod:`mammo_scp.models.fold`).
    """
    inputs = keras.Input((None, None, 1), name="image")
    features = resnet_taps(inputs, cfg, dtype, fold_bn)[-1]
    r = layers.Conv2D(cfg.rpn_channels, 3, padding="same", activation="relu", name="rpn_conv",
                      dtype=dtype)(features)
    logits = layers.Conv2D(cfg.num_anchors, 1, name="rpn_logits", dtype="float32",
                           bias_initializer=keras.initializers.Constant(-4.0))(r)
    deltas = layers.Conv2D(4 * cfg.num_anchors, 1, name="rpn_deltas", dtype="float32",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))(r)
    return keras.Model(inputs, [features, logits, deltas], name="backbone_rpn")


def resnet_taps(inputs: Any, cfg: FRCNNConfig, dtype: Any = None, fold_bn: bool = False
                ) -> list[Any]:
    """The detector's ResNet (stem to stage 4) on ``inputs``: its maps at strides 2 (the
    stem's ReLU), 4, 8 and 16 (each stage's last block), the last being the detector's
    features. A segmenter with its own ResNet50 encoder builds the same layers, by the
    same names (:func:`mammo_scp.models.unet.build_unet`)."""
    x = layers.Rescaling(cfg.input_scale[0], offset=cfg.input_scale[1], dtype=dtype)(inputs)
    if cfg.stride_in_1x1:  # keras.applications' stem: symmetric padding, as ImageNet saw it
        x = layers.ZeroPadding2D(3, dtype=dtype)(x)
        x = _conv_bn(x, cfg.width, 7, 2, "stem", "stem_bn", dtype, cfg.bn_momentum, fold_bn,
                     padding="valid")
        x = layers.Activation("relu", name="stem_relu", dtype=dtype)(x)
        taps = [x]
        x = layers.ZeroPadding2D(1, dtype=dtype)(x)  # after a ReLU: zero is the minimum
        x = layers.MaxPooling2D(3, strides=2, padding="valid", dtype=dtype)(x)
    else:
        x = _conv_bn(x, cfg.width, 7, 2, "stem", "stem_bn", dtype, cfg.bn_momentum, fold_bn)
        x = layers.Activation("relu", name="stem_relu", dtype=dtype)(x)
        taps = [x]
        x = layers.MaxPooling2D(3, strides=2, padding="same", dtype=dtype)(x)
    for stage, (n_blocks, stride) in enumerate(zip(cfg.blocks, (1, 2, 2), strict=True), start=2):
        filters = cfg.width * 2 ** (stage - 2)
        for block in range(n_blocks):
            x = _bottleneck(x, filters, stride if block == 0 else 1, block == 0,
                            f"res{stage}_{block}", dtype, cfg.bn_momentum, fold_bn,
                            cfg.stride_in_1x1)
        taps.append(x)
    return taps


def build_head(cfg: FRCNNConfig, channels: int, dtype: Any = None) -> keras.Model:
    """RoI features (R, 7, 7, C) -> class logits (R, 3) and box deltas (R, 4)."""
    inputs = keras.Input((cfg.roi_size, cfg.roi_size, channels), name="roi_features")
    x = inputs
    if cfg.head_reduce:
        x = layers.Conv2D(cfg.head_reduce, 1, activation="relu", name="head_reduce",
                          dtype=dtype)(x)
    x = layers.Flatten(dtype=dtype)(x)
    x = layers.Dense(cfg.head_hidden, activation="relu", name="fc1", dtype=dtype)(x)
    x = layers.Dropout(0.2, dtype=dtype)(x)
    x = layers.Dense(cfg.head_hidden, activation="relu", name="fc2", dtype=dtype)(x)
    cls = layers.Dense(NUM_CLASSES, name="cls", dtype="float32")(x)
    box = layers.Dense(4, name="box", dtype="float32",
                       kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))(x)
    return keras.Model(inputs, [cls, box], name="box_head")


def freeze_resnet(model: keras.Model, cfg: FRCNNConfig) -> None:
    """Stop the ResNet layers of ``model`` (built by :func:`resnet_taps`) that ``cfg``
    freezes: the stem and stages to ``cfg.frozen_stages``, and with ``cfg.frozen_bn`` every
    batch normalisation in the ResNet."""
    frozen = ["stem"] + [f"res{stage}_" for stage in range(2, cfg.frozen_stages + 1)]
    for layer in model.layers:
        if not layer.weights:
            continue
        if cfg.frozen_stages >= 1 and any(layer.name.startswith(p) for p in frozen):
            layer.trainable = False
        if (cfg.frozen_bn and isinstance(layer, layers.BatchNormalization)
                and layer.name.startswith(("stem", "res"))):
            layer.trainable = False


class FasterRCNN:
    """The two Keras models and the graph code that ties them together."""

    def __init__(self, cfg: FRCNNConfig, dtype: Any = None, fold_bn: bool = False) -> None:
        self.cfg = cfg
        self.dtype = dtype
        self.backbone = build_backbone_rpn(cfg, dtype, fold_bn)
        channels = int(self.backbone.outputs[0].shape[-1])
        self.head = build_head(cfg, channels, dtype)
        self._anchor_cache: dict[tuple[int, int], np.ndarray] = {}

    def freeze(self) -> None:
        """Training: stop the stem and the first stages (``cfg.frozen_stages``) and, with
        ``cfg.frozen_bn``, every batch normalisation from learning (an ImageNet backbone
        fine-tuned on a few hundred images, batches of four: detectron2's FREEZE_AT and
        FrozenBatchNorm). The weights keep their order; only what trains changes."""
        freeze_resnet(self.backbone, self.cfg)

    def for_inference(self, dtype: Any = None) -> FasterRCNN:
        """The same network with batch normalisation folded into its convolutions (faster;
        inference only: :mod:`mammo_scp.models.fold`), in ``dtype`` (default: this one's)."""
        folded = FasterRCNN(self.cfg, dtype=self.dtype if dtype is None else dtype,
                            fold_bn=True)
        fold_batch_norm(self.backbone, folded.backbone)
        folded.head.set_weights(self.head.get_weights())
        return folded

    @property
    def weights(self) -> list[Any]:
        return list(self.backbone.weights) + list(self.head.weights)

    @property
    def variables(self) -> list[Any]:
        """Every variable, including BN statistics and dropout seed states (for checkpoints)."""
        return list(self.backbone.variables) + list(self.head.variables)

    @property
    def trainable_variables(self) -> list[Any]:
        return list(self.backbone.trainable_variables) + list(self.head.trainable_variables)

    def get_weights(self) -> list[np.ndarray]:
        return list(self.backbone.get_weights()) + list(self.head.get_weights())

    def set_weights(self, weights: list[np.ndarray]) -> None:
        n = len(self.backbone.weights)
        self.backbone.set_weights(weights[:n])
        self.head.set_weights(weights[n:])

    def tap_names(self) -> list[str]:
        """The backbone layers a segmentation decoder reads: strides 2, 4, 8 and 16."""
        last = [f"res{stage}_{n - 1}_out" for stage, n in enumerate(self.cfg.blocks, start=2)]
        return ["stem_relu", *last]

    def backbone_with_taps(self) -> keras.Model:
        """The backbone (same layers, same weights) returning its RPN outputs and then the
        feature maps of :meth:`tap_names`, so that one pass serves both heads."""
        taps = [self.backbone.get_layer(name).output for name in self.tap_names()]
        return keras.Model(self.backbone.input, [*self.backbone.outputs, *taps],
                           name="backbone_taps")

    def anchors(self, feat_h: int, feat_w: int) -> tf.Tensor:
        key = (feat_h, feat_w)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = make_anchors(self.cfg, feat_h, feat_w)
        return tf.constant(self._anchor_cache[key])

    # -- graph pieces -------------------------------------------------------------------------

    def proposals(self, logits: tf.Tensor, deltas: tf.Tensor, anchors: tf.Tensor,
                  image_hw: tf.Tensor, post_nms: int) -> list[tf.Tensor]:
        """Per image: (P, 4) proposals after top-k and NMS, clipped to the image."""
        batch = logits.shape[0]
        flat_logits = tf.reshape(logits, [batch, -1])
        flat_deltas = tf.reshape(deltas, [batch, -1, 4])
        h = tf.cast(image_hw[0], tf.float32)
        w = tf.cast(image_hw[1], tf.float32)
        out = []
        for b in range(batch):
            k = tf.minimum(self.cfg.rpn_pre_nms, tf.shape(flat_logits[b])[0])
            scores, idx = tf.math.top_k(flat_logits[b], k=k)
            boxes = decode_tf(tf.gather(flat_deltas[b], idx), tf.gather(anchors, idx))
            boxes = tf.stack([tf.clip_by_value(boxes[:, 0], 0.0, w),
                              tf.clip_by_value(boxes[:, 1], 0.0, h),
                              tf.clip_by_value(boxes[:, 2], 0.0, w),
                              tf.clip_by_value(boxes[:, 3], 0.0, h)], axis=1)
            ok = tf.logical_and(boxes[:, 2] - boxes[:, 0] >= 2.0, boxes[:, 3] - boxes[:, 1] >= 2.0)
            boxes = tf.boolean_mask(boxes, ok)
            scores = tf.boolean_mask(scores, ok)
            keep = tf.image.non_max_suppression(
                tf.gather(boxes, [1, 0, 3, 2], axis=1), scores, post_nms,
                iou_threshold=self.cfg.rpn_nms_iou)
            out.append(tf.gather(boxes, keep))
        return out

    def roi_align(self, features: tf.Tensor, rois: tf.Tensor, box_index: tf.Tensor) -> tf.Tensor:
        """Bilinear RoI Align: crop_and_resize on the stride-16 features, then 2x2 max pool."""
        fh = tf.cast(tf.shape(features)[1], tf.float32)
        fw = tf.cast(tf.shape(features)[2], tf.float32)
        s = float(self.cfg.stride)
        # edge coordinate x maps to feature-centre index x / s - 0.5; normalise by (size - 1)
        y0 = (rois[:, 1] / s - 0.5) / tf.maximum(fh - 1.0, 1.0)
        x0 = (rois[:, 0] / s - 0.5) / tf.maximum(fw - 1.0, 1.0)
        y1 = (rois[:, 3] / s - 0.5) / tf.maximum(fh - 1.0, 1.0)
        x1 = (rois[:, 2] / s - 0.5) / tf.maximum(fw - 1.0, 1.0)
        crops = tf.image.crop_and_resize(tf.cast(features, tf.float32),
                                         tf.stack([y0, x0, y1, x1], axis=1),
                                         box_index, [2 * self.cfg.roi_size] * 2)
        pooled = tf.nn.max_pool2d(crops, 2, 2, "VALID")
        return tf.cast(pooled, features.dtype)

    def anchors_tf(self, feat_h: tf.Tensor, feat_w: tf.Tensor) -> tf.Tensor:
        """:func:`make_anchors` for a feature size only known when the graph runs."""
        base = tf.constant(make_anchors(self.cfg, 1, 1) - self.cfg.stride / 2.0)  # (A, 4)
        cy = (tf.cast(tf.range(feat_h), tf.float32) + 0.5) * self.cfg.stride
        cx = (tf.cast(tf.range(feat_w), tf.float32) + 0.5) * self.cfg.stride
        gx, gy = tf.meshgrid(cx, cy)
        centres = tf.reshape(tf.stack([gx, gy, gx, gy], axis=-1), [-1, 1, 4])
        return tf.reshape(centres + base[None], [-1, 4])

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32)],
                 reduce_retracing=True)  # type: ignore[untyped-decorator]
    def detect_one(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Compiled inference for one image: boxes (D, 4), mass scores, p_malignant."""
        return self.detect(image)[0]

    def detect(self, images: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        """Inference: per image (boxes (D, 4), mass score (D,), p_malignant (D,))."""
        features, logits, deltas = self.backbone(images, training=False)
        return self.detect_from(features, logits, deltas, tf.shape(images)[1:3])

    def detect_from(self, features: tf.Tensor, logits: tf.Tensor, deltas: tf.Tensor,
                    hw: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        """:meth:`detect` from the backbone's outputs, for images of height and width ``hw``."""
        fh, fw = features.shape[1], features.shape[2]
        if fh is None or fw is None:
            anchors = self.anchors_tf(tf.shape(features)[1], tf.shape(features)[2])
        else:
            anchors = self.anchors(int(fh), int(fw))
        props = self.proposals(logits, deltas, anchors, hw, self.cfg.rpn_post_nms_test)
        results = []
        for b, p in enumerate(props):
            idx = tf.fill([tf.shape(p)[0]], b)
            roi_feats = self.roi_align(features, p, idx)
            cls, box = self.head(roi_feats, training=False)
            prob = tf.nn.softmax(tf.cast(cls, tf.float32), axis=-1)
            score = 1.0 - prob[:, 0]
            p_mal = prob[:, 2] / tf.maximum(prob[:, 1] + prob[:, 2], 1e-7)
            boxes = decode_tf(box, p)
            h = tf.cast(hw[0], tf.float32)
            w = tf.cast(hw[1], tf.float32)
            boxes = tf.stack([tf.clip_by_value(boxes[:, 0], 0.0, w),
                              tf.clip_by_value(boxes[:, 1], 0.0, h),
                              tf.clip_by_value(boxes[:, 2], 0.0, w),
                              tf.clip_by_value(boxes[:, 3], 0.0, h)], axis=1)
            keep = tf.image.non_max_suppression(
                tf.gather(boxes, [1, 0, 3, 2], axis=1), score, self.cfg.max_detections,
                iou_threshold=self.cfg.det_nms_iou)
            results.append((tf.gather(boxes, keep), tf.gather(score, keep),
                            tf.gather(p_mal, keep)))
        return results

    def sample_rois(self, proposals: tf.Tensor, gt_boxes: tf.Tensor, gt_labels: tf.Tensor,
                    gt_valid: tf.Tensor, seed: tf.Tensor | None = None
                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One image: sampled RoIs, their labels (0 = background) and regression targets."""
        gt = tf.boolean_mask(gt_boxes, gt_valid)
        gl = tf.boolean_mask(gt_labels, gt_valid)
        rois = tf.concat([tf.stop_gradient(proposals), gt], axis=0)
        n_gt = tf.shape(gt)[0]
        iou = box_iou_tf(rois, gt)
        best = tf.cond(n_gt > 0, lambda: tf.reduce_max(iou, axis=1),
                       lambda: tf.zeros([tf.shape(rois)[0]]))
        arg = tf.cond(n_gt > 0, lambda: tf.argmax(iou, axis=1, output_type=tf.int32),
                      lambda: tf.zeros([tf.shape(rois)[0]], tf.int32))
        pos = tf.where(best >= self.cfg.roi_pos_iou)[:, 0]
        neg = tf.where(best < self.cfg.roi_pos_iou)[:, 0]
        n_pos_max = int(self.cfg.roi_samples * self.cfg.roi_pos_fraction)
        if seed is None:
            pos = tf.random.shuffle(pos)
            neg = tf.random.shuffle(neg)
        else:  # stateless: the same seed gives the same sample, also after a resume
            pos = tf.random.experimental.stateless_shuffle(pos, seed=seed)
            neg = tf.random.experimental.stateless_shuffle(neg, seed=seed + 1)
        pos = pos[:n_pos_max]
        neg = neg[:self.cfg.roi_samples - tf.shape(pos)[0]]
        idx = tf.concat([pos, neg], axis=0)
        sel = tf.gather(rois, idx)
        n_pos = tf.shape(pos)[0]
        safe_gl = tf.concat([gl, tf.zeros([1], gl.dtype)], 0)
        safe_gt = tf.concat([gt, tf.constant([[0.0, 0.0, 1.0, 1.0]])], 0)
        matched = tf.gather(arg, idx)
        labels = tf.where(tf.range(tf.shape(idx)[0]) < n_pos, tf.gather(safe_gl, matched),
                          tf.zeros_like(matched, dtype=gl.dtype))
        targets = encode_tf(tf.gather(safe_gt, matched), sel)
        return sel, labels, targets

    def losses(self, images: tf.Tensor, rpn_labels: tf.Tensor, rpn_deltas: tf.Tensor,
               gt_boxes: tf.Tensor, gt_labels: tf.Tensor, gt_valid: tf.Tensor,
               training: bool = True, seed: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """All four Faster R-CNN losses for a batch (static batch size)."""
        features, logits, deltas = self.backbone(images, training=training)
        batch = images.shape[0]
        fh, fw = int(features.shape[1]), int(features.shape[2])
        anchors = self.anchors(fh, fw)
        flat_logits = tf.reshape(logits, [batch, -1])
        flat_deltas = tf.reshape(deltas, [batch, -1, 4])
        valid = tf.cast(rpn_labels >= 0, tf.float32)
        positive = tf.cast(rpn_labels > 0, tf.float32)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=flat_logits)
        rpn_cls = tf.reduce_sum(bce * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
        hub = _smooth_l1(rpn_deltas - flat_deltas)
        rpn_box = tf.reduce_sum(hub * positive) / tf.maximum(tf.reduce_sum(valid), 1.0) * 5.0

        props = self.proposals(tf.stop_gradient(logits), tf.stop_gradient(deltas), anchors,
                               tf.shape(images)[1:3], self.cfg.rpn_post_nms_train)
        rois, labels, targets, index = [], [], [], []
        for b in range(batch):
            image_seed = None if seed is None else seed + 7919 * b
            r, lab, t = self.sample_rois(props[b], gt_boxes[b], gt_labels[b], gt_valid[b],
                                         image_seed)
            rois.append(r)
            labels.append(lab)
            targets.append(t)
            index.append(tf.fill([tf.shape(r)[0]], b))
        rois_t = tf.concat(rois, 0)
        labels_t = tf.concat(labels, 0)
        targets_t = tf.concat(targets, 0)
        roi_feats = self.roi_align(features, rois_t, tf.concat(index, 0))
        cls, box = self.head(roi_feats, training=training)
        log_p = tf.nn.log_softmax(tf.cast(cls, tf.float32), axis=-1)
        known = tf.minimum(labels_t, 2)
        ce_known = -tf.reduce_sum(tf.one_hot(known, NUM_CLASSES) * log_p, axis=-1)
        ce_unknown = -tf.reduce_logsumexp(log_p[:, 1:], axis=-1)  # -log(p_benign + p_malignant)
        ce = tf.where(labels_t == UNKNOWN_LABEL, ce_unknown, ce_known)
        head_cls = tf.reduce_mean(ce)
        fg = tf.cast(labels_t > 0, tf.float32)
        head_box = tf.reduce_sum(_smooth_l1(targets_t - tf.cast(box, tf.float32)) * fg) / \
            tf.maximum(tf.cast(tf.shape(labels_t)[0], tf.float32), 1.0) * 2.0
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "head_cls": head_cls, "head_box": head_box}


def _smooth_l1(diff: tf.Tensor, beta: float = 1.0 / 9.0) -> tf.Tensor:
    a = tf.abs(diff)
    per = tf.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)
    return tf.reduce_sum(per, axis=-1)
