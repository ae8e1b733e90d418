"""A score and a category per breast and per exam, from the detector's mass scores.

A breast scores the detector's highest mass score over its views
(:attr:`~mammo_scp.results.ImageAnalysis.mass_score`), the exam the highest of its breasts.
The category follows from two thresholds: ``elevated`` from the detector's finding
threshold on (so exactly the breasts with a reported finding), ``low`` below
``assessment_low``, ``intermediate`` between. The rule that chooses ``assessment_low`` on the
validation split (:func:`choose_low_threshold`) and the table of shares per category
(:func:`tabulate`) are here too; ``docs/assessment.md`` says why.

Pure Python: the node, the CLI and the encoders use it without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: ``assessment_low`` of a detector whose manifest has none: this share of its finding threshold.
DEFAULT_LOW_SHARE = 0.5
#: Share of the validation split's mass breasts that must score ``assessment_low`` or more.
DEFAULT_SENSITIVITY = 0.9


class Category(StrEnum):
    """A breast's or an exam's category, in increasing order of concern."""

    LOW = "low"
    INTERMEDIATE = "intermediate"
    ELEVATED = "elevated"


class Side(StrEnum):
    """The breast of an image, as Image Laterality writes it."""

    RIGHT = "R"
    LEFT = "L"


@dataclass(frozen=True)
class Thresholds:
    """``low`` <= ``elevated``: below ``low`` a score is low, from ``elevated`` on elevated."""

    low: float
    elevated: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.elevated <= 1.0:
            raise ValueError(f"elevated must lie in [0, 1], got {self.elevated}")
        if not 0.0 <= self.low <= self.elevated:
            raise ValueError(f"low must lie in [0, elevated = {self.elevated}], got {self.low}")

    def category(self, score: float) -> Category:
        if score >= self.elevated:
            return Category.ELEVATED
        if score >= self.low:
            return Category.INTERMEDIATE
        return Category.LOW

    @property
    def key(self) -> str:
        """The thresholds in one string (part of the derivation of the reports' UIDs)."""
        return f"assessment_low={self.low!r};elevated={self.elevated!r}"


def detector_thresholds(finding_score: float, manifest: Mapping[str, Any],
                        low: float | None = None) -> Thresholds:
    """The node's thresholds: ``elevated`` is the finding threshold the detector runs with;
    ``low`` is ``low`` when given (the node's ``assessment_low`` setting), else the
    manifest thresholds' ``assessment_low``, else :data:`DEFAULT_LOW_SHARE` of the finding
    threshold. A manifest's value above the finding threshold (a site that lowered it) is
    taken down to it: no breast is then intermediate.

    Raises
    ------
    ValueError
        If ``low`` is given and above the finding threshold.
    """
    if low is not None:
        if not 0.0 <= low <= finding_score:
            raise ValueError(f"assessment_low is {low}: it must lie between 0 and the "
                             f"detector's finding threshold {finding_score}")
    elif "assessment_low" in manifest:
        low = min(float(manifest["assessment_low"]), finding_score)
    else:
        low = DEFAULT_LOW_SHARE * finding_score
    return Thresholds(low=low, elevated=finding_score)


@dataclass(frozen=True)
class Assessment:
    """One breast's or the exam's score and category."""

    score: float
    category: Category

    def to_json(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "category": self.category.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assessment:
        return cls(float(data["score"]), Category(data["category"]))


@dataclass(frozen=True)
class StudyAssessment:
    """A study's exam and breast assessments; a breast without an analysed image is None."""

    exam: Assessment
    right: Assessment | None
    left: Assessment | None
    thresholds: Thresholds

    def breasts(self) -> list[tuple[Side, Assessment]]:
        """The assessed breasts, right first."""
        return [(side, found) for side, found in ((Side.RIGHT, self.right),
                                                  (Side.LEFT, self.left)) if found is not None]

    def to_json(self) -> dict[str, Any]:
        return {"exam": self.exam.to_json(),
                "right": self.right.to_json() if self.right else None,
                "left": self.left.to_json() if self.left else None,
                "thresholds": {"low": self.thresholds.low,
                               "elevated": self.thresholds.elevated}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StudyAssessment:
        """Inverse of :meth:`to_json` (scores as rounded there)."""
        right, left = data.get("right"), data.get("left")
        return cls(exam=Assessment.from_json(data["exam"]),
                   right=Assessment.from_json(right) if right else None,
                   left=Assessment.from_json(left) if left else None,
                   thresholds=Thresholds(low=float(data["thresholds"]["low"]),
                                         elevated=float(data["thresholds"]["elevated"])))

    def summary(self) -> str:
        """In one line: 'exam elevated (41%); right elevated (41%), left low (3%)'."""
        breasts = ", ".join(f"{'right' if side is Side.RIGHT else 'left'} "
                            f"{found.category.value} ({percent(found.score)})"
                            for side, found in self.breasts())
        return f"exam {self.exam.category.value} ({percent(self.exam.score)}); {breasts}"


def percent(score: float) -> str:
    return f"{100.0 * score:.0f}%"


def describe_thresholds(thresholds: Thresholds) -> str:
    """'low < 12.0% <= intermediate < 29.8% <= elevated'."""
    return (f"low < {100.0 * thresholds.low:.1f}% <= intermediate < "
            f"{100.0 * thresholds.elevated:.1f}% <= elevated")


def assess(images: Iterable[tuple[str, float]], thresholds: Thresholds) -> StudyAssessment:
    """The study's assessment from its images' (laterality "R"/"L", mass score).

    Raises
    ------
    ValueError
        If there is no image, a laterality is not R or L, or a score is outside [0, 1].
    """
    best: dict[Side, float] = {}
    for laterality, score in images:
        try:
            side = Side(laterality)
        except ValueError:
            raise ValueError(f"laterality must be R or L, got {laterality!r}") from None
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"mass score must lie in [0, 1], got {score}")
        best[side] = max(best.get(side, 0.0), float(score))
    if not best:
        raise ValueError("images is empty: a study assessment needs at least one image")

    def of(side: Side) -> Assessment | None:
        score = best.get(side)
        return None if score is None else Assessment(score, thresholds.category(score))

    exam = max(best.values())
    return StudyAssessment(exam=Assessment(exam, thresholds.category(exam)),
                           right=of(Side.RIGHT), left=of(Side.LEFT), thresholds=thresholds)


# --- choosing assessment_low on the validation split (evaluation.json "images") -----------

@dataclass(frozen=True)
class Scored:
    """A breast or an exam of the validation split: its score and whether it holds a mass."""

    score: float
    mass: bool


def _grouped(images: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> list[Scored]:
    """One entry per value of the images' ``keys``: the highest ``mass_score`` of its images,
    holding a mass when one of them does."""
    grouped: dict[tuple[str, ...], Scored] = {}
    for image in images:
        key = tuple(str(image[k]) for k in keys)
        seen = grouped.get(key, Scored(0.0, False))
        grouped[key] = Scored(max(seen.score, float(image["mass_score"])),
                              seen.mass or bool(image["mass"]))
    return list(grouped.values())


def breasts_of(images: Sequence[Mapping[str, Any]]) -> list[Scored]:
    """One entry per woman and laterality (a breast)."""
    return _grouped(images, ("woman", "laterality"))


def exams_of(images: Sequence[Mapping[str, Any]]) -> list[Scored]:
    """One entry per woman (an exam)."""
    return _grouped(images, ("woman",))


def choose_low_threshold(images: Sequence[Mapping[str, Any]],
                         sensitivity: float = DEFAULT_SENSITIVITY) -> float:
    """The highest score such that at least ``sensitivity`` of the mass breasts score at or
    above it: with *n* mass breasts, the ceil(``sensitivity`` * *n*)-th highest of their scores.

    Raises
    ------
    ValueError
        If ``sensitivity`` is not in (0, 1] or no breast holds a mass.
    """
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"sensitivity must lie in (0, 1], got {sensitivity}")
    scores = sorted((b.score for b in breasts_of(images) if b.mass), reverse=True)
    if not scores:
        raise ValueError("images hold no mass breast: assessment_low cannot be chosen")
    # the smallest whole number of breasts that is at least the share (0.9 * 10 is 9, not 10)
    needed = max(1, math.ceil(round(sensitivity * len(scores), 9)))
    return scores[needed - 1]


@dataclass(frozen=True)
class Row:
    """How many of a group (normal breasts, mass exams, ...) fall in each category."""

    group: str
    counts: Mapping[Category, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share(self, category: Category) -> float:
        return self.counts[category] / self.total if self.total else 0.0


def tabulate(images: Sequence[Mapping[str, Any]], thresholds: Thresholds) -> list[Row]:
    """Normal and mass breasts, then normal and mass exams, counted per category."""
    rows = []
    for unit, scored in (("breasts", breasts_of(images)), ("exams", exams_of(images))):
        for mass in (False, True):
            counts = dict.fromkeys(Category, 0)
            for item in scored:
                if item.mass == mass:
                    counts[thresholds.category(item.score)] += 1
            rows.append(Row(f"{'mass' if mass else 'normal'} {unit}", counts))
    return rows


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: count and share of each category."""
    lines = ["| | n | " + " | ".join(c.value for c in Category) + " |",
             "|---|---|" + "---|" * len(Category)]
    for row in rows:
        cells = [f"{row.counts[c]} ({100.0 * row.share(c):.0f} %)" for c in Category]
        lines.append(f"| {row.group} | {row.total} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
