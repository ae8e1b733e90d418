"""A film rendered as a digital mammogram: 12-bit, black background, seeded, wide contrast."""

from __future__ import annotations

import cv2
import numpy as np

from mammo_scp.training.looks import breast_mask, digital_look


def test_a_mias_film_rendered_digital(mias_dir):
    film = cv2.imread(str(mias_dir / "mdb005.png"), cv2.IMREAD_GRAYSCALE)
    out = digital_look(film, 0.2, np.random.default_rng(0))
    assert out.dtype == np.uint16 and out.shape == film.shape and out.max() <= 4095
    breast = breast_mask(film.astype(np.float32) / 255, 0.2) > 0
    assert 0.2 < breast.mean() < 0.8  # the breast, not the frame or the label
    assert not out[~breast].any()  # the film's scanner background and label are gone
    lo, hi = np.percentile(out[breast], [5, 95])
    assert hi - lo > 1500  # the breast spans most of the 12 bits
    np.testing.assert_array_equal(out, digital_look(film, 0.2, np.random.default_rng(0)))
    assert not np.array_equal(out, digital_look(film, 0.2, np.random.default_rng(1)))
