"""U-Net for mass segmentation (seed 004): 3x3 conv + ReLU, dropout on every level, 1x1 sigmoid.

Depth and width are configurable. The thesis used seven levels at 1024 px; at our 0.8 mm input
(~256 x 160 px for a mini-MIAS breast) four poolings already give a 16 x 10 bottleneck whose
receptive field covers the largest masses, and a base width of 16 keeps it trainable on 2 CPU
cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import keras
from keras import layers, ops


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; ``depth`` poolings, ``width`` filters at the first level."""

    depth: int = 4
    width: int = 16
    dropout_min: float = 0.1
    dropout_max: float = 0.3
    batch_norm: bool = True
    head_bias: float = -4.0  # initial logit of the head: a mass pixel is rare (~2 %)
    # "own": the U-Net above. "detector": only its decoder, reading the detector's backbone
    # at strides 2, 4, 8 and 16 (channels ``encoder_channels``), so that one ResNet50 pass
    # serves both models (:func:`build_decoder`)
    encoder: str = "own"
    encoder_channels: tuple[int, ...] = ()
    # "resnet50": the decoder on a ResNet50 of its own (stem to stage 4, the detector's
    # layout and layer names, set by this FRCNNConfig dict; only its backbone settings count),
    # initialised from ImageNet and trained with the decoder
    encoder_config: dict[str, Any] = field(default_factory=dict)

    def dropout(self, level: int) -> float:
        """Dropout rising from ``dropout_min`` at the top level to ``dropout_max`` at the bottom."""
        if self.depth == 0:
            return self.dropout_max
        return self.dropout_min + (self.dropout_max - self.dropout_min) * level / self.depth

    @property
    def stride(self) -> int:
        return int(2 ** self.depth)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        d = dict(d)
        if "encoder_channels" in d:
            d["encoder_channels"] = tuple(int(v) for v in d["encoder_channels"])
        return cls(**d)


def _block(x: Any, filters: int, dropout: float, cfg: UNetConfig, name: str,
           dtype: Any, fold_bn: bool) -> Any:
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=fold_bn or not cfg.batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}", dtype=dtype)(x)
        if cfg.batch_norm and not fold_bn:
            x = layers.BatchNormalization(name=f"{name}_bn{i}", dtype=dtype)(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}", dtype=dtype)(x)
        if i == 1:
            x = layers.Dropout(dropout, name=f"{name}_drop", dtype=dtype)(x)
    return x


def build_unet(cfg: UNetConfig, dtype: Any = None, fold_bn: bool = False) -> keras.Model:
    """The U-Net for single-channel inputs of any size divisible by ``cfg.stride``.

    ``fold_bn``: the inference form, without BatchNormalization layers; load it with
    :func:`mammo_scp.models.fold.fold_batch_norm` from the trained form.
    """
    inputs = keras.Input((None, None, 1), name="image")
    if cfg.encoder == "resnet50":
        from mammo_scp.models.frcnn import FRCNNConfig, resnet_taps

        taps = resnet_taps(inputs, FRCNNConfig.from_dict(cfg.encoder_config), dtype, fold_bn)
        return keras.Model(inputs, _decode(taps, cfg, dtype, fold_bn), name="resnet_unet")
    if cfg.encoder != "own":
        raise ValueError(f"build_unet builds encoders 'own' and 'resnet50', got {cfg.encoder!r}")
    x = inputs
    skips = []
    for level in range(cfg.depth):
        x = _block(x, cfg.width * 2 ** level, cfg.dropout(level), cfg, f"down{level}", dtype,
                   fold_bn)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}", dtype=dtype)(x)
    x = _block(x, cfg.width * 2 ** cfg.depth, cfg.dropout(cfg.depth), cfg, "bottom", dtype,
               fold_bn)
    for level in reversed(range(cfg.depth)):
        x = layers.Conv2DTranspose(cfg.width * 2 ** level, 2, strides=2, padding="same",
                                   name=f"up{level}_tconv", dtype=dtype)(x)
        x = layers.Concatenate(name=f"up{level}_cat", dtype=dtype)([x, skips[level]])
        x = _block(x, cfg.width * 2 ** level, cfg.dropout(level), cfg, f"up{level}", dtype,
                   fold_bn)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="head", dtype="float32",
                            bias_initializer=keras.initializers.Constant(cfg.head_bias))(x)
    return keras.Model(inputs, outputs, name="unet")


def build_decoder(cfg: UNetConfig, dtype: Any = None, fold_bn: bool = False) -> keras.Model:
    """Seed 004's decoder on a shared encoder: the detector's feature maps at strides 2, 4, 8
    and 16 in, the mass probability at the image's size out.

    From stride 16 up to stride 2, each level doubles the map (transposed convolution),
    joins it with the encoder's map of that stride brought to the level's width (1x1
    convolution) and runs the U-Net block (two 3x3 convolutions with ReLU, dropout). The 1x1
    sigmoid head gives stride 2; a bilinear doubling gives the image's size.
    """
    if cfg.encoder != "detector" or len(cfg.encoder_channels) != 4:
        raise ValueError("build_decoder needs encoder 'detector' and the four encoder channel "
                         f"counts, got {cfg.encoder!r} {cfg.encoder_channels}")
    taps = [keras.Input((None, None, c), name=f"tap{k}")
            for k, c in enumerate(cfg.encoder_channels, start=1)]
    return keras.Model(taps, _decode(taps, cfg, dtype, fold_bn), name="decoder")


def _decode(taps: list[Any], cfg: UNetConfig, dtype: Any, fold_bn: bool) -> Any:
    """Seed 004's decoder from the maps at strides 2, 4, 8 and 16 to the probability map."""
    x = taps[3]
    for level in (3, 2, 1):  # stride 2 ** level
        filters = cfg.width * 2 ** (level - 1)
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                   name=f"dec{level}_tconv", dtype=dtype)(x)
        skip = layers.Conv2D(filters, 1, activation="relu", name=f"dec{level}_skip",
                             dtype=dtype)(taps[level - 1])
        x = layers.Concatenate(name=f"dec{level}_cat", dtype=dtype)([x, skip])
        x = _block(x, filters, cfg.dropout(level - 1), cfg, f"dec{level}", dtype, fold_bn)
    x = layers.Conv2D(1, 1, activation="sigmoid", name="head", dtype="float32",
                      bias_initializer=keras.initializers.Constant(cfg.head_bias))(x)
    return Upsample2x(name="to_image", dtype="float32")(x)


class Upsample2x(layers.Layer):  # type: ignore[misc]
    """Bilinear doubling of the map, as ``UpSampling2D(2, interpolation="bilinear")`` (the
    same values), on maps whose size is known only when called: Keras' layer cannot be
    traced for a ``(None, None, None, C)`` input signature, which the node uses so that
    images of every size share one graph."""

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        return tf.image.resize(x, 2 * tf.shape(x)[1:3], method="bilinear")

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


def dice_coefficient(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Soft Dice per image, averaged over the batch."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    inter = ops.sum(y_true * y_pred, axis=[1, 2, 3])
    total = ops.sum(y_true, axis=[1, 2, 3]) + ops.sum(y_pred, axis=[1, 2, 3])
    return ops.mean((2.0 * inter + smooth) / (total + smooth))


def iou_coefficient(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Soft IoU (Jaccard) per image, averaged over the batch."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    inter = ops.sum(y_true * y_pred, axis=[1, 2, 3])
    union = ops.sum(y_true + y_pred, axis=[1, 2, 3]) - inter
    return ops.mean((inter + smooth) / (union + smooth))


def segmentation_loss(y_true: Any, y_pred: Any) -> Any:
    """Batch Dice loss plus weighted binary cross-entropy.

    Dice is computed over the whole batch (not per image) so that normal images, whose truth is
    empty, only teach through the cross-entropy term and do not dominate with a 0/0 Dice.
    Written in ``keras.ops``, so it trains on any Keras backend (see ``fit_unet``).
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    inter = ops.sum(y_true * y_pred)
    dice = (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return (1.0 - dice) + ops.mean(_cross_entropy(y_true, y_pred, positive_weight=2.0))


def distillation_loss(teacher: Any, y_pred: Any) -> Any:
    """Binary cross-entropy against a teacher's probabilities (soft targets), per pixel."""
    return ops.mean(_cross_entropy(ops.cast(teacher, "float32"), ops.cast(y_pred, "float32")))


def _cross_entropy(target: Any, y_pred: Any, positive_weight: float = 1.0) -> Any:
    """Per-pixel binary cross-entropy of ``y_pred`` against ``target`` (0..1), the positive
    term weighted by ``positive_weight``."""
    eps = 1e-6
    p = ops.clip(y_pred, eps, 1.0 - eps)
    return -(positive_weight * target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
