"""The training recipe both trainers share: epoch order, examples, weight files."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mammo_scp.training.data import BENIGN
from mammo_scp.training.recipe import (
    Looks,
    TrainConfig,
    epoch_order,
    load_npz,
    make_examples,
    save_npz,
)


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(kind="unet", data="d", out="o", **kw)  # type: ignore[arg-type]


def test_an_epoch_repeats_mass_images_and_keeps_whole_batches():
    cfg = _cfg(mass_repeat=3, batch=4)
    order = epoch_order([True, False, False, True, False], cfg, np.random.default_rng(1))
    # 3 + 1 + 1 + 3 + 1 = 9 entries, cut to 8 (two batches of 4)
    assert len(order) == 8
    counts = Counter(order)
    assert counts[0] >= 2 and counts[3] >= 2
    assert all(counts[i] <= 1 for i in (1, 2, 4))
    assert order != epoch_order([True, False, False, True, False], cfg,
                                np.random.default_rng(2))


def test_examples_are_cut_to_the_window_and_drawn_from_the_seed():
    rng = np.random.default_rng(0)
    image = rng.random((128, 96)).astype(np.float32)
    masks = np.zeros((1, 128, 96), np.float32)
    masks[0, 50:70, 30:50] = 1.0
    samples = [(image, masks, [BENIGN]), (image, np.zeros((0, 128, 96), np.float32), [])]
    cfg = _cfg(train_shape=(128, 96), crop=(64, 48), model_spacing_mm=0.4)
    first = make_examples(samples, [0, 1], cfg, np.random.default_rng(5), [])
    again = make_examples(samples, [0, 1], cfg, np.random.default_rng(5), [])
    assert [e.image.shape for e in first] == [(64, 48), (64, 48)]
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
               for a, b in zip(first, again, strict=True))
    whole = make_examples(samples, [0], _cfg(train_shape=(128, 96), model_spacing_mm=0.4),
                          np.random.default_rng(5), [])
    assert whole[0].image.shape == (128, 96)


def test_the_digital_look_takes_its_share_of_the_draws_and_nothing_without_it():
    rng = np.random.default_rng(0)
    film = rng.random((64, 48)).astype(np.float32) * 0.5  # film images in [0, 0.5)
    digital = 0.5 + rng.random((64, 48)).astype(np.float32) * 0.5  # variants in [0.5, 1)
    empty = np.zeros((0, 64, 48), np.float32)
    samples = [(film, empty, [])] * 2
    looks = Looks([[(digital, empty, [])]] * 2, [])
    cfg = _cfg(train_shape=(64, 48), model_spacing_mm=0.4, insert_prob=0.0, digital_look=0.5)

    def shown(cfg: TrainConfig, looks: Looks | None) -> list[bool]:
        out = make_examples(samples, [0, 1] * 100, cfg, np.random.default_rng(7), [],
                            looks=looks)
        return [float(e.image[e.image > 0].mean()) > 0.45 for e in out]

    digital_share = np.mean(shown(cfg, looks))
    assert 0.35 < digital_share < 0.65
    assert not any(shown(_cfg(train_shape=(64, 48), model_spacing_mm=0.4, insert_prob=0.0),
                         looks))
    assert not any(shown(cfg, None))


def test_weights_round_trip_and_no_temporary_file_is_left(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float16)]
    save_npz(tmp_path / "last.npz", arrays)
    back = load_npz(tmp_path / "last.npz")
    assert all(np.array_equal(a, b) and a.dtype == b.dtype
               for a, b in zip(arrays, back, strict=True))
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


def test_validation_runs_every_n_epochs_and_after_the_last():
    assert [e for e in range(1, 8) if _cfg(epochs=7, val_every=2).validates_after(e)] \
        == [2, 4, 6, 7]
    # 0: only after the last (it divided by zero before)
    assert [e for e in range(1, 8) if _cfg(epochs=7, val_every=0).validates_after(e)] == [7]
