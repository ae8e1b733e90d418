"""Prometheus metrics of this process, named once.

Counters and histograms move as the process works; the job and delivery gauges
are read from the database at each scrape, so every process reports the
whole site's queue.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from mammo_scp.assessment import Category, StudyAssessment

REGISTRY = CollectorRegistry(auto_describe=True)
#: Read by prometheus_client when it is imported: a process started with it set (the
#: worker child of ``serve``) counts into files there instead of its own memory.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_children_dir: Path | None = None

INSTANCES_RECEIVED = Counter(
    "mammo_instances_received", "C-STORE requests answered, by returned status",
    ["status"], registry=REGISTRY)
ASSOCIATIONS = Counter(
    "mammo_associations", "Associations requested of the SCP, by outcome",
    ["outcome"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "mammo_stage_duration_seconds", "Duration of each pipeline stage",
    ["stage"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
MODEL_SECONDS = Histogram(
    "mammo_model_inference_seconds", "Inference time per image and model",
    ["model"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8))
DELIVERIES = Counter(
    "mammo_delivery_attempts", "Delivery attempts, by outcome (delivered, failed, dead)",
    ["outcome"], registry=REGISTRY)
ASSESSMENTS = Counter(
    "mammo_assessments", "Processed jobs' assessments, by scope (exam, breast) and category "
    "(low, intermediate, elevated)", ["scope", "category"], registry=REGISTRY)
EXAM_SCORE = Histogram(
    "mammo_exam_score", "Processed jobs' exam scores (the detector's highest mass score)",
    registry=REGISTRY, buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0))


for _scope in ("exam", "breast"):  # every series present from the start, at 0
    for _category in Category:
        ASSESSMENTS.labels(scope=_scope, category=_category.value)


def count_assessment(assessment: StudyAssessment) -> None:
    """Count a processed job's exam and breast categories and observe its exam score."""
    ASSESSMENTS.labels(scope="exam", category=assessment.exam.category.value).inc()
    for _, breast in assessment.breasts():
        ASSESSMENTS.labels(scope="breast", category=breast.category.value).inc()
    EXAM_SCORE.observe(assessment.exam.score)


def share_metrics_with_children() -> Path:
    """Make the child processes this process starts from now on count into a directory
    that :func:`exposition` reads; the same directory for every child (restarts included)."""
    global _children_dir
    if _children_dir is None:
        _children_dir = Path(tempfile.mkdtemp(prefix="mammo-scp-metrics-"))
        os.environ[MULTIPROCESS_ENV] = str(_children_dir)
    return _children_dir


def exposition() -> bytes:
    """This process's metrics in the Prometheus text format, with its children's merged in."""
    if _children_dir is None:
        return generate_latest(REGISTRY)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Merged(_children_dir))
    return generate_latest(merged)


class _Merged:
    """This process's families plus the children's, one family per name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        children = MultiProcessCollector(  # type: ignore[no-untyped-call]
            None, path=str(self.path)).collect()
        for family in [*REGISTRY.collect(), *children]:
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family
        return families.values()


def forget_children_metrics() -> None:
    """Remove the children's metric files (when this process stops)."""
    global _children_dir
    if _children_dir is not None:
        shutil.rmtree(_children_dir, ignore_errors=True)
        os.environ.pop(MULTIPROCESS_ENV, None)
        _children_dir = None
