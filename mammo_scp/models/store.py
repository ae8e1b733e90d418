"""Shipped models: ``models/<name>/<version>/`` with ``weights.npz`` and ``manifest.json``.

Weights are the Keras weight list in order, stored as float16 (``np.savez_compressed``).
A model may be an ensemble of several networks of the same architecture, trained apart: the
first member's arrays are ``w0000, w0001, ...`` and member *k*'s ``m<k>_w0000, ...`` in the
same file; the manifest's ``weights.members`` says how many. The manifest records the
architecture, input spacing, thresholds, the weights' sha256, the training data and split,
validation metrics and the intended use. Loading verifies the hash and refuses a missing or
corrupt model with an error that names the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
INTENDED_USE = "research use only: trained on mini-MIAS"
MODEL_NAMES = ("unet", "frcnn")


class ModelStoreError(RuntimeError):
    """A shipped model is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class ModelBundle:
    """A verified shipped model: its manifest and each member's weights as float32 arrays."""

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    members: tuple[list[np.ndarray], ...]

    @property
    def weights(self) -> list[np.ndarray]:
        """The first (for a single network, the only) member's weights."""
        return self.members[0]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest["architecture"]["config"])

    @property
    def spacing_mm(self) -> float:
        return float(self.manifest["input"]["pixel_spacing_mm"])

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest.get("thresholds", {}))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version_key(version: str) -> tuple[Any, ...]:
    parts = version.lstrip("v").split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def latest_version(models_dir: Path, name: str) -> str:
    """The highest version folder of ``models_dir/name``."""
    folder = models_dir / name
    if not folder.is_dir():
        raise ModelStoreError(f"model folder {folder} is missing: ship the {name} model there")
    versions = [p.name for p in folder.iterdir() if p.is_dir()]
    if not versions:
        raise ModelStoreError(f"no version folder under {folder}")
    return max(versions, key=_version_key)


def _member_prefix(member: int) -> str:
    return "" if member == 0 else f"m{member}_"


def save_model(models_dir: Path, name: str, version: str,
               weights: list[np.ndarray] | list[list[np.ndarray]],
               manifest: dict[str, Any], dtype: str = "float16") -> Path:
    """Write weights and manifest; the manifest gets the file name, dtype, size and sha256.

    ``weights`` is one network's weight list, or a list of such lists (an ensemble).
    """
    members = weights if weights and isinstance(weights[0], list) else [weights]
    folder = models_dir / name / version
    folder.mkdir(parents=True, exist_ok=True)
    arrays, wide = {}, []
    for k, member in enumerate(members):
        for i, w in enumerate(member):
            a, key = np.asarray(w), f"{_member_prefix(k)}w{i:04d}"
            if a.dtype.kind == "f" and a.size and np.abs(a).max() > np.finfo(dtype).max:
                # past the range of ``dtype`` (an ImageNet stem's batch-norm variance reaches
                # 8e4, float16 ends at 65504): kept in float32, not written as infinity
                arrays[key] = a.astype(np.float32)
                wide.append(key)
            else:
                arrays[key] = a.astype(dtype) if a.dtype.kind == "f" else a
    path = folder / WEIGHTS
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    full = dict(manifest)
    full.update({"name": name, "version": version, "intended_use": INTENDED_USE})
    full["weights"] = {"file": WEIGHTS, "sha256": sha256_of(path), "dtype": dtype,
                       "bytes": path.stat().st_size, "arrays": len(arrays),
                       "members": len(members)}
    if wide:
        full["weights"]["float32_arrays"] = wide
    (folder / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    logger.info("saved %s %s (%d bytes)", name, version, path.stat().st_size)
    return folder


def update_manifest(folder: Path, updates: dict[str, Any]) -> None:
    """Merge top-level keys into an existing manifest (the weights' hash is unchanged)."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(updates)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def load_model_folder(folder: Path) -> ModelBundle:
    """:func:`load_model` for one version folder given by its path (``models/frcnn/1.0.0``)."""
    folder = folder.resolve()
    return load_model(folder.parent.parent, folder.parent.name, folder.name)


def load_model(models_dir: Path, name: str, version: str | None = None) -> ModelBundle:
    """Read and verify one shipped model; raise :class:`ModelStoreError` naming the bad file."""
    version = version or latest_version(models_dir, name)
    folder = models_dir / name / version
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelStoreError(f"model manifest {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = str(manifest["weights"]["sha256"])
        weights_path = folder / str(manifest["weights"]["file"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(f"model manifest {manifest_path} is unreadable: {exc}") from exc
    if not weights_path.is_file():
        raise ModelStoreError(f"model weights file {weights_path} is missing")
    actual = sha256_of(weights_path)
    if actual != expected:
        raise ModelStoreError(
            f"model weights file {weights_path} is corrupt: sha256 {actual} does not match "
            f"{expected} in {manifest_path}; restore the file from the release")
    n_members = int(manifest["weights"].get("members", 1))
    try:
        members = []
        with np.load(weights_path) as z:
            per_member = len(z.files) // n_members
            for k in range(n_members):
                raw = [z[f"{_member_prefix(k)}w{i:04d}"] for i in range(per_member)]
                members.append([a.astype(np.float32) if a.dtype.kind == "f" else a
                                for a in raw])
    except Exception as exc:  # a hash collision is not expected; a truncated zip is
        raise ModelStoreError(f"model weights file {weights_path} cannot be read: {exc}") from exc
    return ModelBundle(name=name, version=version, path=folder, manifest=manifest,
                       members=tuple(members))
