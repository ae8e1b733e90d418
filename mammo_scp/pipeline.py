"""One job: load -> (preprocess, infer, encode: stages from the models and encoders) -> results.

A pipeline is an ordered list of named stages. Each stage reads and adds to a
:class:`JobContext`; the worker times every stage and writes it into the
job's timeline. Result objects are written to the spool and handed to
delivery by the worker once all stages have succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from mammo_scp.dicom import SopClass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceRecord:
    """A received instance as the job sees it."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    laterality: str | None
    view: str | None


@dataclass(frozen=True)
class ResultObject:
    """A DICOM object produced for the job (SEG, SR, ...)."""

    kind: str
    dataset: Dataset


@dataclass
class JobContext:
    """What the stages of one job share."""

    job_id: int
    study_uid: str
    instances: tuple[InstanceRecord, ...]
    datasets: dict[str, Dataset] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    results: list[ResultObject] = field(default_factory=list)

    def skip(self, sop_uid: str, reason: str) -> None:
        """Leave an instance out of processing, recording why."""
        self.datasets.pop(sop_uid, None)
        self.skipped[sop_uid] = reason
        logger.info("job %d: instance %s skipped: %s", self.job_id, sop_uid, reason)


@dataclass(frozen=True)
class Stage:
    """A named step; ``run`` returns a short note for the job's timeline."""

    name: str
    run: Callable[[JobContext], str]


_NOT_PROCESSED = {
    SopClass.MG_FOR_PROCESSING.value:
        "For Processing image: only For Presentation 2D mammograms are processed",
    SopClass.BREAST_TOMOSYNTHESIS.value:
        "breast tomosynthesis: only For Presentation 2D mammograms are processed",
}


def load(ctx: JobContext) -> str:
    """Read every processable instance; record the others as skipped with the reason."""
    for record in ctx.instances:
        reason = _NOT_PROCESSED.get(record.sop_class_uid)
        if reason is None and record.laterality is None:
            reason = "no laterality (ImageLaterality or Laterality R/L)"
        if reason is None and record.view is None:
            reason = "no view (ViewCodeSequence or ViewPosition)"
        if reason is not None:
            ctx.skip(record.sop_instance_uid, reason)
            continue
        ds = dcmread(record.path)
        intent = str(ds.get("PresentationIntentType", "") or "").upper()
        if intent == "FOR PROCESSING":
            ctx.skip(record.sop_instance_uid, "PresentationIntentType is FOR PROCESSING")
            continue
        ctx.datasets[record.sop_instance_uid] = ds
    return f"{len(ctx.datasets)} to process, {len(ctx.skipped)} skipped"


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]


def default_pipeline() -> Pipeline:
    """The stages the node runs for every job."""
    return Pipeline(stages=(Stage("load", load),))
