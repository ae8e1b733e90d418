"""Shipped-model store: float16 weights, manifest, sha256 verification, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mammo_scp.models.store import (
    INTENDED_USE,
    ModelStoreError,
    latest_version,
    load_model,
    save_model,
    sha256_of,
)


def _save(tmp_path: Path, version: str = "1.0.0") -> Path:
    weights = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.arange(3.0)]
    return save_model(tmp_path, "unet", version, weights,
                      {"architecture": {"kind": "unet", "config": {"depth": 2}},
                       "input": {"pixel_spacing_mm": 0.8}, "thresholds": {"mask": 0.5}})


def test_round_trip_in_float16_with_a_manifest(tmp_path):
    folder = _save(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights"]["sha256"] == sha256_of(folder / "weights.npz")
    assert manifest["weights"]["dtype"] == "float16"
    assert manifest["intended_use"] == INTENDED_USE
    bundle = load_model(tmp_path, "unet")
    assert bundle.version == "1.0.0" and bundle.spacing_mm == 0.8
    assert bundle.weights[0].dtype == np.float32
    assert np.allclose(bundle.weights[0], np.linspace(-1, 1, 12).reshape(3, 4), atol=1e-3)


def test_an_array_past_float16_s_range_is_kept_in_float32_not_as_infinity(tmp_path):
    variance = np.array([83614.7, 2.5, 0.001], np.float32)  # an ImageNet stem's BN variance
    folder = save_model(tmp_path, "unet", "1.0.0", [np.ones((2, 2), np.float32), variance],
                        {"architecture": {"kind": "unet", "config": {}},
                         "input": {"pixel_spacing_mm": 0.4}, "thresholds": {}})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights"]["dtype"] == "float16"
    assert manifest["weights"]["float32_arrays"] == ["w0001"]
    with np.load(folder / "weights.npz") as z:
        assert z["w0000"].dtype == np.float16 and z["w0001"].dtype == np.float32
    back = load_model(tmp_path, "unet").weights
    np.testing.assert_array_equal(back[1], variance)


def test_an_ensemble_keeps_each_member_s_weights_in_one_verified_file(tmp_path):
    members = [[np.full((2, 3), k, np.float32), np.arange(3.0) + k] for k in range(3)]
    folder = save_model(tmp_path, "frcnn", "2.0.0", members,
                        {"architecture": {"kind": "frcnn", "config": {}},
                         "input": {"pixel_spacing_mm": 0.4}})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights"]["members"] == 3 and manifest["weights"]["arrays"] == 6
    bundle = load_model(tmp_path, "frcnn")
    assert len(bundle.members) == 3
    for k, member in enumerate(bundle.members):
        assert np.array_equal(member[0], np.full((2, 3), k)) and np.array_equal(
            member[1], np.arange(3.0) + k)
    assert bundle.weights is bundle.members[0]


def test_latest_version_is_numeric_not_lexical(tmp_path):
    _save(tmp_path, "1.9.0")
    _save(tmp_path, "1.10.0")
    assert latest_version(tmp_path, "unet") == "1.10.0"


def test_corrupt_weights_are_refused_naming_the_file(tmp_path):
    folder = _save(tmp_path)
    data = bytearray((folder / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match=r"weights\.npz is corrupt: sha256"):
        load_model(tmp_path, "unet")


def test_missing_files_are_named(tmp_path):
    folder = _save(tmp_path)
    (folder / "weights.npz").unlink()
    with pytest.raises(ModelStoreError, match=r"weights file .*weights\.npz is missing"):
        load_model(tmp_path, "unet")
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(ModelStoreError, match=r"manifest .*manifest\.json is missing"):
        load_model(tmp_path, "unet")
    with pytest.raises(ModelStoreError, match="frcnn is missing"):
        load_model(tmp_path, "frcnn")
