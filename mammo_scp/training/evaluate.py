"""Evaluation: FROC, per-image malignancy AUC, Dice and IoU against the truth circles.

A lesion is found when a detection's box centre lies inside its truth circle; extra boxes on
an already-found lesion are neither hits nor false positives. A box whose centre lies inside
two overlapping circles finds both lesions: the lesion-by-lesion rule of issue #3 ("a hit is a
predicted box whose centre lies inside the truth circle") and of the LUNA16 reference FROC
script, which loops over the lesions and credits every one that a mark lies in.

Everything is measured end to end in source pixels through
:class:`mammo_scp.models.analyzer.Analyzer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)
#: The project's floors on the validation split (issue #3).
FLOORS = {"sensitivity_at_1fp": 0.70, "dice_mass_images": 0.50}
Circle = tuple[float, float, float]
ImageDetections = tuple[np.ndarray, np.ndarray, Sequence[Circle]]


def froc_curve(per_image: Sequence[ImageDetections]) -> tuple[np.ndarray, np.ndarray]:
    """(FP per image, sensitivity) at every score threshold, thresholds descending."""
    n_images = len(per_image)
    n_lesions = sum(len(c) for _, _, c in per_image)
    events: list[tuple[float, list[int]]] = []  # (score, lesions hit; none: a false positive)
    lesion_id = 0
    for boxes, scores, circles in per_image:
        ids = list(range(lesion_id, lesion_id + len(circles)))
        lesion_id += len(circles)
        flat_boxes = np.asarray(boxes).reshape(-1, 4)
        for box, score in zip(flat_boxes, np.asarray(scores).reshape(-1), strict=True):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            hit = [i for i, (x, y, r) in zip(ids, circles, strict=True)
                   if (cx - x) ** 2 + (cy - y) ** 2 <= r * r]
            events.append((float(score), hit))
    events.sort(key=lambda e: -e[0])
    found: set[int] = set()
    fps = 0
    xs, ys = [0.0], [0.0]
    i = 0
    while i < len(events):
        score = events[i][0]
        while i < len(events) and events[i][0] == score:
            if not events[i][1]:
                fps += 1
            else:
                found.update(events[i][1])
            i += 1
        xs.append(fps / max(n_images, 1))
        ys.append(len(found) / max(n_lesions, 1))
    return np.array(xs), np.array(ys)


def operating_point(per_image: Sequence[ImageDetections], threshold: float
                    ) -> dict[str, float]:
    """Sensitivity and false positives per image of the findings scoring >= ``threshold``."""
    kept = [(b[s >= threshold], s[s >= threshold], c) for b, s, c in per_image]
    fp, sens = froc_curve(kept)
    return {"score_threshold": threshold, "sensitivity": float(sens[-1]),
            "fp_per_image": float(fp[-1])}


def threshold_for_rate(per_image: Sequence[ImageDetections], rate: float) -> float:
    """The lowest finding score that keeps the false positives per image at or below
    ``rate``: how the default operating point is chosen on the validation split."""
    scores = sorted({float(v) for _, s, _ in per_image for v in s}, reverse=True)
    best = float(scores[0]) + 1e-6 if scores else 1.0
    for t in scores:
        if operating_point(per_image, t)["fp_per_image"] > rate:
            break
        best = t
    return best


def froc_points(per_image: Sequence[ImageDetections], rates: Sequence[float] = FP_RATES
                ) -> list[float]:
    """Best sensitivity reachable with at most each rate of false positives per image."""
    fp, sens = froc_curve(per_image)
    return [float(sens[fp <= r].max()) if (fp <= r).any() else 0.0 for r in rates]


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Mann-Whitney AUC; None when one class is absent."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def woman_draws(women: Sequence[str], rounds: int, seed: int) -> Iterator[list[int]]:
    """``rounds`` resamples of whole women with replacement (a woman's images stay together),
    each as the indices of the images drawn."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, woman in enumerate(women):
        groups.setdefault(woman, []).append(i)
    members = list(groups.values())
    for _ in range(rounds):
        yield [i for g in rng.integers(len(members), size=len(members)) for i in members[g]]


def bootstrap_by_woman(per_image: Sequence[ImageDetections], dices: Sequence[float | None],
                       women: Sequence[str], rounds: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict[str, Any]:
    """How far the two floor figures could move on another draw of the same kind of women.

    Resamples whole women with replacement (a woman's images stay together), ``rounds``
    times, and recomputes the sensitivity at 1 FP/image and the mean Dice of the mass images
    (``dices``: one per image, None for an image without a mass). Gives the percentile
    interval at ``level`` and the share of rounds at or above each floor.
    """
    figures: dict[str, list[float]] = {"sensitivity_at_1fp": [], "dice_mass_images": []}
    for idx in woman_draws(women, rounds, seed):
        sample = [per_image[i] for i in idx]
        if any(len(circles) for _, _, circles in sample):
            figures["sensitivity_at_1fp"].append(froc_points(sample, (1.0,))[0])
        drawn = [d for d in (dices[i] for i in idx) if d is not None]
        if drawn:
            figures["dice_mass_images"].append(float(np.mean(drawn)))
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, Any] = {"by": "woman", "women": len(set(women)), "rounds": rounds,
                           "seed": seed, "level": level}
    for key, values in figures.items():
        arr = np.asarray(values)
        out[key] = {"interval": [float(np.percentile(arr, tail)),
                                 float(np.percentile(arr, 100.0 - tail))] if len(arr) else None,
                    "share_at_or_above_floor": float((arr >= FLOORS[key] - 1e-12).mean())
                    if len(arr) else None}
    return out


def paired_bootstrap(first: Sequence[ImageDetections], second: Sequence[ImageDetections],
                     women: Sequence[str], rates: Sequence[float] = (0.25, 1.0),
                     rounds: int = 2000, seed: int = 0, level: float = 0.95
                     ) -> dict[str, Any]:
    """Whether ``second`` detects better than ``first`` on the same images, beyond the luck
    of which women were drawn.

    Resamples whole women with replacement, the same draw for both, and recomputes the
    difference in sensitivity (second minus first) at each of ``rates`` false positives
    per image. Gives, per rate, the observed difference, its percentile interval at
    ``level`` and the shares of rounds in which ``second`` is higher and lower.
    """
    if not len(first) == len(second) == len(women):
        raise ValueError("both detectors' images and the women must match one for one")
    diffs: list[np.ndarray] = []
    for idx in woman_draws(women, rounds, seed):
        if not any(len(first[i][2]) for i in idx):
            continue  # no mass drawn: no sensitivity to compare
        diffs.append(np.subtract(froc_points([second[i] for i in idx], rates),
                                 froc_points([first[i] for i in idx], rates)))
    observed = np.subtract(froc_points(second, rates), froc_points(first, rates))
    arr = np.asarray(diffs).reshape(-1, len(rates))
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, Any] = {"by": "woman", "women": len(set(women)), "rounds": len(arr),
                           "seed": seed, "level": level, "rates": {}}
    for k, rate in enumerate(rates):
        col = arr[:, k]
        out["rates"][str(rate)] = {
            "difference": float(observed[k]),
            "interval": [float(np.percentile(col, tail)), float(np.percentile(col, 100.0 - tail))]
            if len(col) else None,
            "share_second_higher": float((col > 1e-12).mean()) if len(col) else None,
            "share_second_lower": float((col < -1e-12).mean()) if len(col) else None}
    return out


def image_detections(result: Any, rec: Any) -> ImageDetections:
    """An analysis's findings (source pixels) with the record's truth circles, as the FROC
    functions take them."""
    boxes = np.array([[f.box.x0, f.box.y0, f.box.x1, f.box.y1] for f in result.findings])
    scores = np.array([f.score for f in result.findings])
    return boxes.reshape(-1, 4), scores, [(les.x, les.y, les.radius) for les in rec.lesions]


def compare(records: Sequence[Any], first: Any, second: Any, rates: Sequence[float] = (0.25, 1.0),
            rounds: int = 2000) -> dict[str, Any]:
    """Both analyzers on every record (film, every finding kept): each one's FROC and the
    paired bootstrap of the difference (:func:`paired_bootstrap`)."""
    from mammo_scp.training.data import read_source

    per: list[list[ImageDetections]] = [[], []]
    for rec in records:
        src = read_source(rec)
        for k, analyzer in enumerate((first, second)):
            result = analyzer.analyze_array(src, rec.spacing_mm, rec.laterality, rec.key,
                                            score_threshold=0.0, view=rec.view)
            per[k].append(image_detections(result, rec))
    return {"froc": [dict(zip(map(str, FP_RATES), froc_points(p), strict=True)) for p in per],
            "paired_bootstrap": paired_bootstrap(per[0], per[1], [r.woman for r in records],
                                                 rates, rounds)}


def dice_iou(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    t, p = truth.astype(bool), pred.astype(bool)
    inter = float((t & p).sum())
    total = float(t.sum() + p.sum())
    union = float((t | p).sum())
    return (2 * inter / total if total else 1.0, inter / union if union else 1.0)


@dataclass(frozen=True)
class EvalResult:
    """All figures of one evaluation run."""

    n_images: int
    n_mass_images: int
    n_lesions: int
    froc: dict[str, float]
    malignancy_auc: float | None
    mass_auc: float | None
    dice: float
    iou: float
    ms_per_image: float
    operating_point: dict[str, float] | None = None
    dice_per_image: dict[str, float] = field(default_factory=dict)  # mass images, by key
    normal_images_with_mask: int = 0  # images without a mass on which a mask was drawn
    n_normal_images: int = 0
    # at the default operating point: images without a mass that get any mark (a mask or a
    # finding), and findings reported per image
    normal_images_marked: int = 0
    findings_per_image: float = 0.0
    threshold_at_half_fp: float | None = None  # lowest score giving <= 0.5 FP per image
    bootstrap: dict[str, Any] | None = None  # bootstrap_by_woman of the floor figures
    # per image: its key, woman, laterality, truth and the detector's scores, for choosing
    # breast- and exam-level thresholds (mammo_scp.assessment)
    images: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "n_mass_images": self.n_mass_images,
                "n_lesions": self.n_lesions, "froc_sensitivity": self.froc,
                "malignancy_auc": self.malignancy_auc, "mass_auc": self.mass_auc,
                "dice_mass_images": self.dice, "iou_mass_images": self.iou,
                "ms_per_image": self.ms_per_image, "operating_point": self.operating_point,
                "dice_per_image": self.dice_per_image,
                "normal_images_with_mask": self.normal_images_with_mask,
                "n_normal_images": self.n_normal_images,
                "normal_images_marked": self.normal_images_marked,
                "findings_per_image": self.findings_per_image,
                "threshold_at_half_fp": self.threshold_at_half_fp,
                "bootstrap": self.bootstrap, "images": self.images}


def plot_froc(fp: np.ndarray, sens: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(fp, sens, where="post")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, max(4.5, float(fp.max()) if len(fp) else 4.5))
    ax.set_ylim(0, 1.02)
    for r in FP_RATES:
        ax.axvline(r, color="0.85", lw=0.8)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def choose_mask_confidence(records: Sequence[Any], analyzer: Any, max_normal: int = 2
                           ) -> dict[str, Any]:
    """The peak probability from which the U-Net's largest region is shown on its own (mask
    mode ``finding_or_confident``): the lowest of the largest regions' peaks at which at
    most ``max_normal`` of the images without a mass and without a reported finding get a
    mask. Also returns each image's peak and whether a finding was reported on it.
    """
    from mammo_scp.models.analyzer import PAD_MULTIPLE, mask_regions
    from mammo_scp.preprocess import FlipMode, preprocess_array
    from mammo_scp.training.data import read_source

    if analyzer.detector_spacing_mm != analyzer.spacing_mm:
        raise ValueError("choose_mask_confidence needs both models at one spacing")
    rows = []
    min_area_px = analyzer.mask_min_area_mm2 / analyzer.spacing_mm ** 2
    for rec in records:
        pre = preprocess_array(read_source(rec), rec.spacing_mm,
                               model_spacing_mm=analyzer.spacing_mm, laterality=rec.laterality,
                               flip=FlipMode.AUTO, pad_multiple=PAD_MULTIPLE)
        det = analyzer.detect(pre.image)
        _, peaks = mask_regions(analyzer.segment(pre.image), analyzer.mask_threshold,
                                min_area_px)
        rows.append({"key": rec.key, "mass": bool(rec.is_mass),
                     "finding": bool((det.scores >= analyzer.score_threshold).any()),
                     "largest_peak": peaks[0][1] if peaks else 0.0})
    alone = sorted((r["largest_peak"] for r in rows
                    if not r["mass"] and not r["finding"] and r["largest_peak"] > 0),
                   reverse=True)
    # shown where peak >= c: the lowest peak that lets at most max_normal of them through
    # (just above the highest where none may pass; the mask threshold where none has a region)
    confident = next((c for c in sorted(set(alone)) if sum(p >= c for p in alone) <= max_normal),
                     float(np.nextafter(alone[0], 2.0)) if alone else analyzer.mask_threshold)
    return {"mask_confident": confident, "max_normal": max_normal,
            "normal_without_finding_masked": sum(p >= confident for p in alone),
            "normal_without_finding": sum(not r["mass"] and not r["finding"] for r in rows),
            "images": rows}


def evaluate(records: Sequence[Any], analyzer: Any, out: Path | None = None,
             title: str = "FROC", look: str = "film") -> EvalResult:
    """Run the analyzer on every record (mini-MIAS layout) and compute all figures.

    ``look="digital"``: each image rendered as a full-field digital mammogram first
    (:func:`mammo_scp.training.looks.digital_look`, its settings drawn with the seed of the
    image's place in ``records``), the same truth.
    """
    import time

    from mammo_scp.training.data import read_source, truth_mask
    from mammo_scp.training.looks import digital_look

    if look not in ("film", "digital"):
        raise ValueError(f"look must be 'film' or 'digital', got {look!r}")

    per_image: list[ImageDetections] = []
    mal_labels, mal_scores, mass_labels, mass_scores = [], [], [], []
    dices, ious = [], []
    dice_per_image: dict[str, float] = {}
    images: list[dict[str, Any]] = []
    image_dices: list[float | None] = []
    normal_with_mask = normal_marked = reported = 0
    default = float(getattr(analyzer, "score_threshold", 0.5))
    elapsed = 0.0
    for index, rec in enumerate(records):
        src = read_source(rec)
        if look == "digital":
            src = digital_look(src, rec.spacing_mm, np.random.default_rng(index))
        t0 = time.perf_counter()
        result = analyzer.analyze_array(src, rec.spacing_mm, rec.laterality, rec.key,
                                        score_threshold=0.0, view=rec.view)
        elapsed += time.perf_counter() - t0
        per_image.append(image_detections(result, rec))
        mal_labels.append(int(rec.is_malignant))
        mal_scores.append(max([f.score * f.p_malignant for f in result.findings], default=0.0))
        mass_labels.append(int(rec.is_mass))
        mass_scores.append(max([f.score for f in result.findings], default=0.0))
        shown = sum(f.score >= default for f in result.findings)
        images.append({"key": rec.key, "woman": rec.woman, "laterality": rec.laterality,
                       "mass": bool(rec.is_mass), "malignant": bool(rec.is_malignant),
                       "mass_score": mass_scores[-1], "malignancy_score": mal_scores[-1],
                       "findings": shown, "mask": bool(result.mask.any())})
        reported += shown
        if rec.is_mass:
            d, j = dice_iou(truth_mask(rec, src.shape[:2]), result.mask)
            dices.append(d)
            ious.append(j)
            dice_per_image[rec.key] = d
            image_dices.append(d)
        else:
            image_dices.append(None)
            normal_with_mask += int(result.mask.any())
            normal_marked += int(result.mask.any() or shown > 0)
    fp, sens = froc_curve(per_image)
    rates = froc_points(per_image)
    res = EvalResult(
        n_images=len(records), n_mass_images=sum(r.is_mass for r in records),
        n_lesions=sum(len(r.lesions) for r in records),
        froc={str(r): s for r, s in zip(FP_RATES, rates, strict=True)},
        malignancy_auc=roc_auc(mal_labels, mal_scores), mass_auc=roc_auc(mass_labels, mass_scores),
        dice=float(np.mean(dices)) if dices else 0.0, iou=float(np.mean(ious)) if ious else 0.0,
        ms_per_image=1000.0 * elapsed / max(len(records), 1),
        operating_point=operating_point(per_image, default),
        dice_per_image=dice_per_image, normal_images_with_mask=normal_with_mask,
        n_normal_images=sum(not r.is_mass for r in records), normal_images_marked=normal_marked,
        findings_per_image=reported / max(len(records), 1),
        threshold_at_half_fp=threshold_for_rate(per_image, 0.5),
        bootstrap=bootstrap_by_woman(per_image, image_dices, [r.woman for r in records]),
        images=images)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(res.to_dict(), indent=2))
        plot_froc(fp, sens, out / "froc.png", title)
        logger.info("evaluation written to %s", out)
    return res
