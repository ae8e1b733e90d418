"""Evaluation figures on hand-made cases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mammo_scp.training.data import load_records, truth_mask
from mammo_scp.training.evaluate import (
    bootstrap_by_woman,
    choose_mask_confidence,
    dice_iou,
    evaluate,
    froc_curve,
    froc_points,
    paired_bootstrap,
    plot_froc,
    roc_auc,
    threshold_for_rate,
)


def test_froc_counts_centres_inside_circles():
    circles = [(50.0, 50.0, 10.0)]
    img1 = (np.array([[45, 45, 55, 55], [0, 0, 10, 10]], float), np.array([0.9, 0.8]), circles)
    img2 = (np.array([[80, 80, 90, 90], [48, 48, 52, 52]], float), np.array([0.95, 0.3]),
            [(50.0, 50.0, 5.0)])
    img3 = (np.zeros((0, 4)), np.zeros(0), [])
    # thresholds: 0.95 -> FP; 0.9 -> hit 1; 0.8 -> FP; 0.3 -> hit 2
    assert froc_points([img1, img2, img3], (0.25, 0.5, 1.0)) == [0.0, 0.5, 1.0]
    fp, sens = froc_curve([img1, img2, img3])
    assert sens[-1] == 1.0 and abs(fp[-1] - 2 / 3) < 1e-9


def test_a_box_inside_two_overlapping_circles_finds_both_lesions():
    # mini-MIAS mdb005: two masses 42 px apart, radii 30 and 26; one box lies in both circles
    circles = [(477.0, 891.0, 30.0), (500.0, 856.0, 26.0)]
    box = np.array([[438.0, 817.0, 542.0, 924.0]])
    assert froc_points([(box, np.array([0.7]), circles)], (0.0,)) == [1.0]
    # a second box on them is neither a hit nor a false positive
    boxes = np.array([[438.0, 817.0, 542.0, 924.0], [470.0, 850.0, 530.0, 880.0]])
    fp, sens = froc_curve([(boxes, np.array([0.7, 0.6]), circles)])
    assert fp.tolist() == [0.0, 0.0, 0.0] and sens.tolist() == [0.0, 1.0, 1.0]


def test_the_bootstrap_resamples_women_and_says_how_often_the_floors_hold():
    hit = (np.array([[45.0, 45.0, 55.0, 55.0]]), np.array([0.9]), [(50.0, 50.0, 10.0)])
    miss = (np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([0.9]), [(50.0, 50.0, 10.0)])
    normal = (np.zeros((0, 4)), np.zeros(0), [])
    # every woman alike: no spread, and the floors hold in every round
    same = bootstrap_by_woman([hit, normal] * 3, [0.8, None] * 3, ["a", "a", "b", "b", "c", "c"],
                              rounds=200)
    assert same["women"] == 3 and same["rounds"] == 200
    assert same["sensitivity_at_1fp"] == {"interval": [1.0, 1.0], "share_at_or_above_floor": 1.0}
    assert same["dice_mass_images"]["interval"] == pytest.approx([0.8, 0.8])
    # one woman whose mass is found (Dice 0.9), one whose mass is missed (Dice 0.1)
    mixed = bootstrap_by_woman([hit, normal, miss, normal], [0.9, None, 0.1, None],
                               ["a", "a", "b", "b"], rounds=2000, seed=1)
    low, high = mixed["sensitivity_at_1fp"]["interval"]
    assert low == 0.0 and high == 1.0
    # the floor (0.70) holds only when both draws are woman a: a quarter of the rounds
    assert abs(mixed["sensitivity_at_1fp"]["share_at_or_above_floor"] - 0.25) < 0.04
    assert abs(mixed["dice_mass_images"]["share_at_or_above_floor"] - 0.75) < 0.04
    # the same seed, the same figures
    assert mixed == bootstrap_by_woman([hit, normal, miss, normal], [0.9, None, 0.1, None],
                                       ["a", "a", "b", "b"], rounds=2000, seed=1)


def test_the_paired_bootstrap_draws_the_same_women_for_both_detectors():
    hit = (np.array([[45.0, 45.0, 55.0, 55.0]]), np.array([0.9]), [(50.0, 50.0, 10.0)])
    miss = (np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([0.9]), [(50.0, 50.0, 10.0)])
    normal = (np.zeros((0, 4)), np.zeros(0), [])
    women = ["a", "a", "b", "b"]
    # a detector against itself: no difference in any round
    same = paired_bootstrap([hit, normal, miss, normal], [hit, normal, miss, normal], women,
                            rates=(1.0,), rounds=300)
    assert same["rates"]["1.0"] == {"difference": 0.0, "interval": [0.0, 0.0],
                                    "share_second_higher": 0.0, "share_second_lower": 0.0}
    # the second finds woman b's mass too: never worse, better whenever b is drawn
    better = paired_bootstrap([hit, normal, miss, normal], [hit, normal, hit, normal], women,
                              rates=(1.0,), rounds=2000, seed=3)["rates"]["1.0"]
    assert better["difference"] == 0.5 and better["share_second_lower"] == 0.0
    assert abs(better["share_second_higher"] - 0.75) < 0.04  # rounds that draw b at least once
    assert better["interval"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="one for one"):
        paired_bootstrap([hit], [hit, normal], ["a"])


def test_a_box_whose_centre_is_outside_is_a_false_positive():
    per = [(np.array([[30, 30, 41, 41]], float), np.array([0.9]), [(50.0, 50.0, 10.0)])]
    assert froc_points(per, (4.0,)) == [0.0]


def test_auc_and_overlap(tmp_path):
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 0], [0.1, 0.2]) is None
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice_iou(a, b) == (0.5, 1 / 3)
    plot_froc(np.array([0, 0.5, 2]), np.array([0, 0.5, 1]), tmp_path / "f.png", "t")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_evaluation_gives_each_mass_images_dice(mias_dir):
    """An analyzer whose mask is the truth on one mass image and the upper half of it on
    another: Dice 1 and 2/3 by key, their mean overall; normal images have no Dice, and one
    of the two normal images gets a mask."""
    records = load_records(mias_dir)
    masses = [r for r in records if r.is_mass][:2]
    normal, marked = [r for r in records if not r.is_mass][:2]
    by_key = {r.key: r for r in records}

    class Truthful:
        score_threshold = 0.5

        def analyze_array(self, src, spacing_mm, laterality, key, score_threshold, view):
            assert view == "MLO"  # every mini-MIAS image is an oblique view
            mask = truth_mask(by_key[key], src.shape[:2])
            if key == marked.key:
                mask[100:120, 100:120] = True
            if key == masses[1].key:
                rows = np.nonzero(mask.any(axis=1))[0]
                mask[(rows[0] + rows[-1]) // 2 + 1:] = False
            return SimpleNamespace(findings=[], mask=mask)

    res = evaluate([masses[0], normal, masses[1], marked], Truthful())
    assert set(res.dice_per_image) == {masses[0].key, masses[1].key}
    assert res.dice_per_image[masses[0].key] == 1.0
    assert abs(res.dice_per_image[masses[1].key] - 2 / 3) < 0.02  # half a circle, to a row
    assert res.dice == np.mean(list(res.dice_per_image.values()))
    assert abs(res.iou - (1.0 + 0.5) / 2) < 0.02  # the mass images' IoU: 1 and 1/2
    assert res.to_dict()["dice_per_image"] == res.dice_per_image
    assert res.normal_images_with_mask == 1 and res.to_dict()["normal_images_with_mask"] == 1


def test_the_threshold_for_half_a_false_positive_per_image():
    circle = [(50.0, 50.0, 10.0)]
    hit = np.array([[45.0, 45.0, 55.0, 55.0]])
    miss = np.array([[0.0, 0.0, 5.0, 5.0]])
    # four images: false positives scoring 0.9, 0.6, 0.4 and 0.2; one mass found at 0.5
    per_image = [(np.vstack([hit, miss]), np.array([0.5, 0.9]), circle),
                 (miss, np.array([0.6]), []), (miss, np.array([0.4]), []),
                 (miss, np.array([0.2]), [])]
    # at 0.6: two FPs in four images (0.5 per image); at 0.5 still two; at 0.4 three
    assert threshold_for_rate(per_image, 0.5) == 0.5
    assert threshold_for_rate(per_image, 0.25) == 0.9
    assert threshold_for_rate(per_image, 1.0) == 0.2


def test_normal_images_with_a_mark_and_findings_per_image_at_the_default_threshold(mias_dir):
    records = load_records(mias_dir)
    normals = [r for r in records if not r.is_mass][:3]

    class Marks:
        score_threshold = 0.5

        def analyze_array(self, src, spacing_mm, laterality, key, score_threshold, view):
            mask = np.zeros(src.shape[:2], bool)
            box = SimpleNamespace(x0=1.0, y0=1.0, x1=9.0, y1=9.0)
            findings = {normals[0].key: [SimpleNamespace(box=box, score=0.7, p_malignant=0.1),
                                         SimpleNamespace(box=box, score=0.3, p_malignant=0.1)],
                        normals[1].key: [SimpleNamespace(box=box, score=0.2, p_malignant=0.1)]}
            if key == normals[2].key:
                mask[5:9, 5:9] = True
            return SimpleNamespace(findings=findings.get(key, []), mask=mask)

    res = evaluate(normals, Marks())
    # image 0: a finding above 0.5; image 1: only one below; image 2: a mask
    assert res.normal_images_marked == 2 and res.n_normal_images == 3
    assert res.findings_per_image == 1 / 3
    assert res.to_dict()["normal_images_marked"] == 2
    images = res.to_dict()["images"]
    assert [i["key"] for i in images] == [r.key for r in normals]
    assert [i["mass_score"] for i in images] == [0.7, 0.2, 0.0]
    assert [i["findings"] for i in images] == [1, 0, 0]
    assert [i["mask"] for i in images] == [False, False, True]
    assert images[0]["woman"] == normals[0].woman and images[0]["mass"] is False


def test_the_confidence_lets_at_most_so_many_normal_images_without_a_finding_through(mias_dir):
    records = load_records(mias_dir)
    normals = [r for r in records if not r.is_mass][:5]
    mass = next(r for r in records if r.is_mass)
    # peaks per image (one region each), in record order; the fourth normal has a finding
    peaks = [0.9, 0.6, 0.75, 0.95, 0.4, 0.5]

    class Maps:
        mask_threshold, score_threshold = 0.3, 0.5
        mask_min_area_mm2, spacing_mm, detector_spacing_mm = 0.0, 0.4, 0.4

        def __init__(self):
            self.calls = 0

        def detect(self, image):
            found = self.calls == 3  # segment() follows detect(): the fourth image
            return SimpleNamespace(scores=np.array([0.8 if found else 0.1]))

        def segment(self, image):
            prob = np.zeros(image.shape, np.float32)
            prob[10:20, 10:20] = peaks[self.calls]
            self.calls += 1
            return prob

    chosen = choose_mask_confidence([*normals, mass], Maps(), max_normal=2)
    # normal images without a finding peak at 0.9, 0.6, 0.75, 0.4: two get through from 0.75
    assert chosen["mask_confident"] == pytest.approx(0.75)
    assert chosen["normal_without_finding"] == 4
    assert chosen["normal_without_finding_masked"] == 2
    assert [r["finding"] for r in chosen["images"]] == [False, False, False, True, False, False]
    none = choose_mask_confidence([*normals, mass], Maps(), max_normal=0)
    assert none["mask_confident"] > float(np.float32(0.9))
    assert none["normal_without_finding_masked"] == 0
