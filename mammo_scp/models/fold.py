"""Batch normalisation folded into the convolutions before it, for inference.

At inference a BatchNormalization layer is a fixed per-channel affine map,
``y = gamma * (x - mean) / sqrt(var + eps) + beta``. After a convolution it can be
folded into that convolution's kernel and bias, so the network skips one pass over
every feature map and TensorFlow fuses each convolution with its bias and ReLU. Measured
on 2 cores (2026-12-02): 1.1-1.3x faster in fp32 and 1.4-1.7x in bf16; in fp32 the U-Net's
probabilities differ by under 1e-9 and the detector's features by under 1e-5.

Both networks are built twice from the same code: the trained form (with
BatchNormalization, as trained and shipped) and the inference form (``fold_bn=True``:
the same layers and names, convolutions with a bias, no BatchNormalization).
:func:`fold_batch_norm` loads the second from the first.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers


def _conv_of(bn: layers.BatchNormalization) -> layers.Layer:
    """The layer whose output ``bn`` normalises."""
    source = bn.input._keras_history.operation
    if not isinstance(source, layers.Conv2D):
        raise ValueError(f"{bn.name} follows {source.name} ({type(source).__name__}), "
                         "not a convolution: it cannot be folded")
    return source


def folded_weights(conv: layers.Conv2D, bn: layers.BatchNormalization
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``conv`` followed by ``bn`` (inference statistics)."""
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    bias = (np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias
            else np.zeros(kernel.shape[-1]))
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(bias)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(bias)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return ((kernel * scale).astype(np.float32),
            ((bias - mean) * scale + beta).astype(np.float32))


def fold_batch_norm(trained: keras.Model, folded: keras.Model) -> None:
    """Load ``folded`` (the inference form) from ``trained``: each convolution followed by
    BatchNormalization gets the folded kernel and bias; every other layer with weights is
    copied by name."""
    norm_after: dict[str, layers.BatchNormalization] = {}
    for layer in trained.layers:
        if isinstance(layer, layers.BatchNormalization):
            if layer.axis not in (-1, len(layer.input.shape) - 1):
                raise ValueError(f"{layer.name} normalises axis {layer.axis}, not channels")
            norm_after[_conv_of(layer).name] = layer
    left = [layer.name for layer in folded.layers
            if isinstance(layer, layers.BatchNormalization)]
    if left:
        raise ValueError(f"{folded.name} still has BatchNormalization {left}: not the "
                         "inference form (fold_bn=True)")
    unused = set(norm_after)
    for layer in folded.layers:
        if not layer.weights:
            continue
        source = trained.get_layer(layer.name)
        if layer.name in norm_after:
            if not layer.use_bias:
                raise ValueError(f"{layer.name} has no bias to fold {norm_after[layer.name].name}"
                                 " into")
            layer.set_weights(list(folded_weights(source, norm_after[layer.name])))
            unused.discard(layer.name)
        else:
            layer.set_weights(source.get_weights())
    if unused:
        raise ValueError(f"{folded.name} lacks the convolutions {sorted(unused)}")


__all__ = ["fold_batch_norm", "folded_weights"]
