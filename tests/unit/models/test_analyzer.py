"""Analyzer pieces that do not need the shipped weights: mask post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_scp.models.analyzer import postprocess_mask


def _two_blobs() -> np.ndarray:
    prob = np.zeros((40, 40), np.float32)
    prob[5:15, 5:15] = 0.9  # 100 px
    prob[25:29, 25:29] = 0.8  # 16 px
    return prob


def test_modes_keep_what_they_say():
    prob = _two_blobs()
    assert postprocess_mask(prob, 0.5, "all", 0, np.zeros((0, 4))).sum() == 116
    assert postprocess_mask(prob, 0.5, "all", 20, np.zeros((0, 4))).sum() == 100
    assert postprocess_mask(prob, 0.5, "largest", 0, np.zeros((0, 4))).sum() == 100
    near_small = np.array([[24.0, 24.0, 30.0, 30.0]])
    assert postprocess_mask(prob, 0.5, "with_finding", 0, near_small).sum() == 16
    assert postprocess_mask(prob, 0.5, "with_finding", 0, np.zeros((0, 4))).sum() == 0
    with pytest.raises(ValueError, match="mask mode"):
        postprocess_mask(prob, 0.5, "biggest", 0, near_small)
