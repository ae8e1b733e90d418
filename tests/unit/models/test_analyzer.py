"""Analyzer pieces that do not need the shipped weights: mask post-processing, precision,
the fusion of an ensemble's detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammo_scp.models.analyzer import (
    Detections,
    cpu_flags,
    finding_windows,
    fuse_detections,
    postprocess_mask,
    resolve_precision,
)


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
    # near_candidates: the largest region of a map made around candidates, finding or not
    assert postprocess_mask(prob, 0.5, "near_candidates", 0, np.zeros((0, 4))).sum() == 100
    with pytest.raises(ValueError, match="mask mode"):
        postprocess_mask(prob, 0.5, "biggest", 0, near_small)
    # finding_or_confident: the regions on a finding, and the largest if confident enough
    assert postprocess_mask(prob, 0.5, "finding_or_confident", 0, near_small, 0.95).sum() == 16
    assert postprocess_mask(prob, 0.5, "finding_or_confident", 0, near_small, 0.89).sum() == 116
    assert postprocess_mask(prob, 0.5, "finding_or_confident", 0, np.zeros((0, 4)),
                            0.89).sum() == 100


def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively() -> None:
    amx = {"fpu", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}
    avx512_bf16 = {"fpu", "avx512f", "avx512_bf16"}
    plain = {"fpu", "avx2", "avx512f"}
    assert resolve_precision("auto", amx) == ("bf16",
                                               "auto: the CPU has amx_bf16 and avx512_bf16")
    assert resolve_precision("auto", avx512_bf16)[0] == "bf16"
    assert resolve_precision("auto", plain) == (
        "fp32", "auto: the CPU has neither AMX nor AVX512_BF16")
    assert resolve_precision("fp32", amx) == ("fp32", "as configured")
    assert resolve_precision("bf16", plain) == ("bf16", "as configured")
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", amx)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                       "flags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()  # not Linux: auto means fp32


def _found(*boxes_scores: tuple[list[float], float, float]) -> Detections:
    return Detections(np.array([b for b, _, _ in boxes_scores], np.float64).reshape(-1, 4),
                      np.array([s for _, s, _ in boxes_scores], np.float64),
                      np.array([p for _, _, p in boxes_scores], np.float64))


def test_a_mass_both_detectors_see_outranks_one_only_one_sees():
    first = _found(([10, 10, 30, 30], 0.8, 0.2), ([60, 60, 70, 70], 0.9, 0.5))
    second = _found(([12, 10, 32, 30], 0.6, 0.6))
    fused = fuse_detections([first, second], iou=0.3)
    assert len(fused.scores) == 2
    # seen by both: the mean of the two scores, box and malignancy weighted by score
    assert fused.scores[0] == pytest.approx((0.8 + 0.6) / 2)
    x0, x1 = (0.8 * 10 + 0.6 * 12) / 1.4, (0.8 * 30 + 0.6 * 32) / 1.4
    assert np.allclose(fused.boxes[0], [x0, 10, x1, 30])
    assert fused.p_malignant[0] == pytest.approx((0.8 * 0.2 + 0.6 * 0.6) / 1.4)
    # seen by one of two: half its score, its own box
    assert fused.scores[1] == pytest.approx(0.45)
    assert np.allclose(fused.boxes[1], [60, 60, 70, 70])


def test_one_detector_s_boxes_are_never_merged_and_apart_boxes_stay_apart():
    one = _found(([10, 10, 30, 30], 0.9, 0.1), ([14, 10, 34, 30], 0.5, 0.1))
    other = _found(([100, 100, 120, 120], 0.7, 0.1))
    fused = fuse_detections([one, other], iou=0.3)
    assert sorted(fused.scores.round(3)) == [0.25, 0.35, 0.45]
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert len(fuse_detections([empty, empty]).scores) == 0


def test_finding_windows_cover_each_box_with_its_margin_on_the_stride_grid():
    shape = (480, 288)
    (window,) = finding_windows(np.array([[100.0, 200.0, 140.0, 250.0]]), shape, margin=64)
    r0, c0, r1, c1 = window
    assert (r0, c0) == (128, 32) and (r1, c1) == (320, 224)  # 200-64 -> 128, 140+64 -> 224
    assert all(v % 32 == 0 for v in window)
    # cut at the image's edges, which are on the grid too (the image is padded to it)
    assert finding_windows(np.array([[0.0, 440.0, 20.0, 470.0]]), shape, margin=64) == [
        (352, 0, 480, 96)]


def test_overlapping_finding_windows_merge_and_apart_ones_stay_apart():
    shape = (512, 512)
    near = np.array([[100.0, 100.0, 120.0, 120.0], [150.0, 150.0, 170.0, 170.0]])
    assert finding_windows(near, shape, margin=32) == [(64, 64, 224, 224)]
    apart = np.array([[10.0, 10.0, 20.0, 20.0], [400.0, 400.0, 420.0, 420.0]])
    assert len(finding_windows(apart, shape, margin=32)) == 2
    assert finding_windows(np.zeros((0, 4)), shape) == []
