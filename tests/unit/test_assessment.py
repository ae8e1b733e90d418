"""The breast- and exam-level assessment: categories at their thresholds, the rule that
chooses assessment_low on the validation split, the table of shares, and where the node
takes its thresholds from."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mammo_scp.assessment import (
    Assessment,
    Category,
    StudyAssessment,
    Thresholds,
    assess,
    choose_low_threshold,
    detector_thresholds,
    render_table,
    tabulate,
)
from mammo_scp.config import Settings
from mammo_scp.node import StartupError, assessment_thresholds

THRESHOLDS = Thresholds(low=0.1, elevated=0.3)


def _image(woman: str, laterality: str, score: float, mass: bool = False) -> dict[str, Any]:
    """An entry of evaluation.json's "images"."""
    return {"key": f"{woman}{laterality}", "woman": woman, "laterality": laterality,
            "mass": mass, "malignant": False, "mass_score": score, "malignancy_score": 0.0,
            "findings": int(score >= 0.3), "mask": False}


@pytest.mark.parametrize("score,category", [
    (0.0, Category.LOW), (0.0999, Category.LOW), (0.1, Category.INTERMEDIATE),
    (0.2999, Category.INTERMEDIATE), (0.3, Category.ELEVATED), (1.0, Category.ELEVATED)])
def test_category_boundaries(score: float, category: Category) -> None:
    """Elevated from the finding threshold on (a box reaching it is a finding), low below
    assessment_low."""
    assert THRESHOLDS.category(score) is category


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="low must lie in"):
        Thresholds(low=0.4, elevated=0.3)
    with pytest.raises(ValueError, match="elevated must lie in"):
        Thresholds(low=0.1, elevated=1.5)


def test_a_breast_scores_its_highest_view_and_the_exam_its_highest_breast() -> None:
    study = assess([("R", 0.05), ("R", 0.22), ("L", 0.02), ("L", 0.31)], THRESHOLDS)
    assert study.right == Assessment(0.22, Category.INTERMEDIATE)
    assert study.left == Assessment(0.31, Category.ELEVATED)
    assert study.exam == Assessment(0.31, Category.ELEVATED)
    assert study.summary() == "exam elevated (31%); right intermediate (22%), left elevated (31%)"


def test_a_breast_without_an_image_has_no_assessment() -> None:
    study = assess([("L", 0.02), ("L", 0.04)], THRESHOLDS)
    assert study.right is None and study.left == Assessment(0.04, Category.LOW)
    assert study.exam == study.left
    assert [side.value for side, _ in study.breasts()] == ["L"]


@pytest.mark.parametrize("images,message", [([], "images is empty"),
                                            ([("B", 0.2)], "laterality must be R or L"),
                                            ([("R", 1.2)], "mass score must lie in")])
def test_assess_refuses_what_it_cannot_assess(images: list[tuple[str, float]],
                                              message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assess(images, THRESHOLDS)


def test_json_round_trip() -> None:
    study = assess([("R", 0.125), ("L", 0.5)], THRESHOLDS)
    data = study.to_json()
    assert data == {"exam": {"score": 0.5, "category": "elevated"},
                    "right": {"score": 0.125, "category": "intermediate"},
                    "left": {"score": 0.5, "category": "elevated"},
                    "thresholds": {"low": 0.1, "elevated": 0.3}}
    assert StudyAssessment.from_json(data) == study


def test_the_low_threshold_keeps_nine_mass_breasts_in_ten_above_it() -> None:
    """Ten mass breasts scoring 0.1 ... 1.0: at least 90 % at or above the 9th highest."""
    images = [_image(f"w{k}", "L", k / 10, mass=True) for k in range(1, 11)]
    images += [_image(f"w{k}", "R", 0.95) for k in range(1, 11)]  # normal breasts: ignored
    assert choose_low_threshold(images) == pytest.approx(0.2)
    assert choose_low_threshold(images, sensitivity=1.0) == pytest.approx(0.1)
    assert choose_low_threshold(images, sensitivity=0.5) == pytest.approx(0.6)


def test_eleven_mass_breasts_need_ten_above() -> None:
    """ceil(0.9 * 11) = 10: one mass breast in eleven may score below."""
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.09]
    images = [_image(f"w{k}", "R", s, mass=True) for k, s in enumerate(scores)]
    low = choose_low_threshold(images)
    assert low == 0.25
    above = sum(s >= low for s in scores)
    assert above >= 0.9 * len(scores) and above - 1 < 0.9 * len(scores)


def test_a_breast_is_a_woman_and_a_laterality_scoring_its_highest_image() -> None:
    """Two views of one mass breast count once, at their higher score."""
    images = [_image("a", "R", 0.05, mass=True), _image("a", "R", 0.6, mass=True),
              _image("b", "R", 0.4, mass=True)]
    assert choose_low_threshold(images, sensitivity=1.0) == 0.4


def test_no_mass_breast_no_threshold() -> None:
    with pytest.raises(ValueError, match="no mass breast"):
        choose_low_threshold([_image("a", "R", 0.5)])
    with pytest.raises(ValueError, match="sensitivity"):
        choose_low_threshold([_image("a", "R", 0.5, mass=True)], sensitivity=0.0)


def test_table_counts_breasts_and_exams_per_category() -> None:
    images = [
        _image("a", "R", 0.05), _image("a", "L", 0.2),             # normal exam, intermediate
        _image("b", "R", 0.5, mass=True), _image("b", "L", 0.01),  # mass exam, elevated
        _image("c", "R", 0.15, mass=True), _image("c", "L", 0.02),  # mass exam, intermediate
        _image("d", "R", 0.01), _image("d", "L", 0.03),            # normal exam, low
    ]
    rows = {row.group: row for row in tabulate(images, THRESHOLDS)}
    assert list(rows) == ["normal breasts", "mass breasts", "normal exams", "mass exams"]

    def counts(group: str) -> tuple[int, int, int]:
        row = rows[group]
        return (row.counts[Category.LOW], row.counts[Category.INTERMEDIATE],
                row.counts[Category.ELEVATED])

    assert counts("normal breasts") == (5, 1, 0)
    assert counts("mass breasts") == (0, 1, 1)
    assert counts("normal exams") == (1, 1, 0)
    assert counts("mass exams") == (0, 1, 1)
    assert rows["normal breasts"].share(Category.LOW) == pytest.approx(5 / 6)
    table = render_table(list(rows.values()))
    assert "| normal breasts | 6 | 5 (83 %) | 1 (17 %) | 0 (0 %) |" in table


def test_thresholds_come_from_the_setting_then_the_manifest_then_the_default() -> None:
    assert detector_thresholds(0.3, {"assessment_low": 0.12}, 0.2) == Thresholds(0.2, 0.3)
    assert detector_thresholds(0.3, {"assessment_low": 0.12}) == Thresholds(0.12, 0.3)
    assert detector_thresholds(0.3, {}) == Thresholds(0.15, 0.3)
    # a site that lowers its finding threshold below the manifest's assessment_low
    assert detector_thresholds(0.1, {"assessment_low": 0.12}) == Thresholds(0.1, 0.1)
    with pytest.raises(ValueError, match="assessment_low is 0.4"):
        detector_thresholds(0.3, {}, 0.4)


def test_the_node_refuses_to_start_with_assessment_low_above_the_finding_threshold() -> None:
    analyzer = SimpleNamespace(score_threshold=0.298,
                               frcnn_bundle=SimpleNamespace(thresholds={"finding_score": 0.298}))
    assert assessment_thresholds(analyzer, Settings()) == Thresholds(0.149, 0.298)  # type: ignore[arg-type]
    assert assessment_thresholds(analyzer, Settings(assessment_low=0.05)) == Thresholds(  # type: ignore[arg-type]
        0.05, 0.298)
    with pytest.raises(StartupError, match="assessment_low is 0.5.*finding threshold 0.298"):
        assessment_thresholds(analyzer, Settings(assessment_low=0.5))  # type: ignore[arg-type]
    assert assessment_thresholds(None, Settings()) is None
