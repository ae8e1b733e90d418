"""Training data: mini-MIAS truth (origin bottom-left), women, the split, the DICOM layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.uid import generate_uid

from mammo_scp.training.data import (
    BENIGN,
    MALIGNANT,
    load_mias,
    load_records,
    make_sample,
    split_by_woman,
)
from tests.support.mg import Patient, add_mass, breast_phantom, make_mg


def test_mias_truth_uses_row_from_top_and_pairs_women(mias_dir):
    records = {r.key: r for r in load_mias(mias_dir)}
    mdb005 = records["mdb005"]
    assert [(les.x, les.y, les.radius) for les in mdb005.lesions] == [
        (477.0, 1024 - 133.0, 30.0), (500.0, 1024 - 168.0, 26.0)]
    assert mdb005.lesions[0].label == BENIGN
    assert records["mdb005"].woman == records["mdb006"].woman != records["mdb004"].woman
    assert records["mdb005"].laterality == "R" and records["mdb006"].laterality == "L"
    assert "mdb059" not in records  # its mass has no coordinates
    assert any(les.label == MALIGNANT for r in records.values() for les in r.lesions)


def test_split_is_by_woman_deterministic_and_keeps_masses_in_both(mias_dir):
    records = load_mias(mias_dir)
    train, val = split_by_woman(records, 0.25, seed=0)
    assert {r.woman for r in train}.isdisjoint({r.woman for r in val})
    assert len(train) + len(val) == len(records)
    assert sum(r.is_mass for r in val) >= 5 and sum(r.is_mass for r in train) >= 20
    again, _ = split_by_woman(records, 0.25, seed=0)
    other, _ = split_by_woman(records, 0.25, seed=1)
    assert [r.key for r in again] == [r.key for r in train]
    assert [r.key for r in other] != [r.key for r in train]


def test_mias_sample_carries_the_circle_into_model_space(mias_dir):
    rec = next(r for r in load_mias(mias_dir) if r.key == "mdb010")
    sample = make_sample(rec, 0.8)
    assert sample.lesion_masks.shape == (1,) + sample.image.shape
    ys, xs = np.nonzero(sample.lesion_masks[0] >= 0.5)
    centre = sample.transform.to_source(np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]))[0]
    les = rec.lesions[0]
    assert abs(centre[0] - les.x) < 4 and abs(centre[1] - les.y) < 4


def test_a_film_rendered_digital_keeps_its_mass_where_it_was(mias_dir):
    rec = next(r for r in load_mias(mias_dir) if r.key == "mdb010")
    film = make_sample(rec, 0.8)
    digital = make_sample(rec, 0.8, look_rng=np.random.default_rng(3))
    again = make_sample(rec, 0.8, look_rng=np.random.default_rng(3))
    assert np.array_equal(digital.image, again.image)
    assert digital.source.dtype == np.uint16 and digital.source.max() > 255  # 12-bit
    assert not np.allclose(digital.image[:film.image.shape[0], :film.image.shape[1]],
                           film.image[:digital.image.shape[0], :digital.image.shape[1]],
                           atol=0.05)
    for sample in (film, digital):
        ys, xs = np.nonzero(sample.lesion_masks[0] >= 0.5)
        centre = sample.transform.to_source(np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]))[0]
        assert abs(centre[0] - rec.lesions[0].x) < 4 and abs(centre[1] - rec.lesions[0].y) < 4


def test_only_film_records_take_another_look(tmp_path):
    study = generate_uid()
    ds = make_mg("R", "CC", study_uid=study, pixels=breast_phantom(256, 208, "R", seed=4),
                 patient=Patient(patient_id="W1"))
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    rec = load_records(tmp_path)[0]
    with pytest.raises(ValueError, match="only film records"):
        make_sample(rec, 0.8, look_rng=np.random.default_rng(0))


def test_dicom_folder_layout_with_sidecars(tmp_path):
    study = generate_uid()
    pixels = add_mass(breast_phantom(256, 208, "R", seed=4), (120, 60), 12)
    ds = make_mg("R", "CC", study_uid=study, pixels=pixels, patient=Patient(patient_id="W1"))
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    (tmp_path / "a.json").write_text(json.dumps(
        {"masses": [{"x": 60.5, "y": 120.5, "radius": 12, "severity": "M"}]}))
    ds2 = make_mg("L", "CC", study_uid=study, patient=Patient(patient_id="W1"))
    ds2.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    records = load_records(tmp_path)
    assert len(records) == 2 and {r.woman for r in records} == {"W1"}
    mass = next(r for r in records if r.is_mass)
    assert mass.is_malignant and mass.spacing_mm is None
    sample = make_sample(mass, 0.8)
    assert sample.lesion_masks.shape[0] == 1 and sample.lesion_masks.max() > 0.5


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training images"):
        load_records(tmp_path)
