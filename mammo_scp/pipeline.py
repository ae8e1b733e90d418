"""One job: load -> (preprocess, infer, encode: stages from the models and encoders) -> results.

A pipeline is an ordered list of named stages. Each stage reads and adds to a
:class:`JobContext`; the worker times every stage and writes it into the
job's timeline. Result objects are written to the spool and handed to
delivery by the worker once all stages have succeeded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from mammo_scp.dicom import SopClass
from mammo_scp.metrics import MODEL_SECONDS
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo

if TYPE_CHECKING:
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.prefetch import Prefetcher

logger = logging.getLogger(__name__)

#: The job's findings as JSON beside its result objects (not delivered): for `preview`.
FINDINGS_FILE = "findings.json"


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
    analyses: dict[str, ImageAnalysis] = field(default_factory=dict)
    results: list[ResultObject] = field(default_factory=list)
    #: Files kept beside the results but not delivered (name -> content).
    artifacts: dict[str, bytes] = field(default_factory=dict)

    def skip(self, sop_uid: str, reason: str) -> None:
        """Leave an instance out of processing, recording why."""
        self.datasets.pop(sop_uid, None)
        self.analyses.pop(sop_uid, None)
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
        problem = image_problem(ds)
        if problem is not None:
            ctx.skip(record.sop_instance_uid, problem)
            continue
        ctx.datasets[record.sop_instance_uid] = ds
    return f"{len(ctx.datasets)} to process, {len(ctx.skipped)} skipped"


def analyze_stage(analyzer: Analyzer, prefetcher: Prefetcher | None = None) -> Stage:
    """Preprocess and run both models on every loaded image.

    An image already analysed on arrival (:mod:`mammo_scp.prefetch`) is taken from there.
    An image that cannot be analysed (undecodable or truncated pixel data, an image the
    preprocessing cannot find a breast in, ...) is skipped with the reason; the rest of the
    study is still processed.
    """

    def analyze(ctx: JobContext) -> str:
        paths = {record.sop_instance_uid: record.path for record in ctx.instances}
        ahead = 0
        for uid, ds in list(ctx.datasets.items()):
            analysis = prefetcher.take(uid, paths[uid]) if prefetcher is not None else None
            if analysis is not None:
                ahead += 1
            else:
                try:
                    analysis = analyzer.analyze(ds)
                except Exception as exc:  # one bad image must not sink the study
                    logger.warning("job %d: instance %s cannot be analysed: %s: %s",
                                   ctx.job_id, uid, type(exc).__name__, exc)
                    ctx.skip(uid, f"cannot be analysed: {type(exc).__name__}: {exc}")
                    continue
            ctx.analyses[uid] = analysis
            for model in ("unet", "frcnn"):
                if model in analysis.timings_ms:
                    MODEL_SECONDS.labels(model=model).observe(analysis.timings_ms[model] / 1e3)
        if prefetcher is not None:
            prefetcher.forget_taken(set(paths))
        findings = sum(len(a.findings) for a in ctx.analyses.values())
        model_ms = sum(a.timings_ms.get("total", 0.0) for a in ctx.analyses.values())
        on_arrival = f" ({ahead} analysed on arrival)" if ahead else ""
        return (f"{len(ctx.analyses)} image(s){on_arrival}, {findings} finding(s), "
                f"{model_ms:.0f} ms")

    return Stage("analyze", analyze)


def encode_stage(*, cad_sr: bool) -> Stage:
    """One SEG per image with a mass, one Measurement Report per study, optionally a CAD SR."""

    def encode(ctx: JobContext) -> str:
        from mammo_scp.encode import (
            build_cad_sr,
            build_measurement_report,
            build_seg,
            has_findings,
        )

        if not ctx.analyses:
            return "nothing to encode"
        uids = list(ctx.analyses)
        sources = [ctx.datasets[uid] for uid in uids]
        analyses = [ctx.analyses[uid] for uid in uids]
        segs = []
        for source, analysis in zip(sources, analyses, strict=True):
            seg = build_seg(source, analysis)
            if seg is not None:
                segs.append(seg)
                ctx.results.append(ResultObject("SEG", seg))
        # No Measurement Report without findings: OHIF (3.13) fails to open one. The CAD SR,
        # when on, still says "succeeded without findings".
        reports = 0
        if has_findings(analyses):
            ctx.results.append(ResultObject("SR", build_measurement_report(sources, analyses,
                                                                            segs)))
            reports = 1
        if cad_sr:
            ctx.results.append(ResultObject("CAD_SR", build_cad_sr(sources, analyses)))
        ctx.artifacts[FINDINGS_FILE] = json.dumps(
            [analysis_to_json(a) for a in analyses], indent=1).encode()
        return f"{len(segs)} SEG, {reports} SR" + (", 1 CAD SR" if cad_sr else "")

    return Stage("encode", encode)


def analysis_to_json(analysis: ImageAnalysis) -> dict[str, Any]:
    """Findings of one image as plain JSON (the mask travels in the SEG)."""
    return {
        "sop_instance_uid": analysis.sop_instance_uid,
        "segmenter": [analysis.segmenter.name, analysis.segmenter.version],
        "detector": [analysis.detector.name, analysis.detector.version],
        "mask_pixels": int(np.count_nonzero(analysis.mask)),
        "findings": [{"box": [f.box.x0, f.box.y0, f.box.x1, f.box.y1], "score": f.score,
                      "p_malignant": f.p_malignant} for f in analysis.findings],
        "timings_ms": analysis.timings_ms,
    }


def analysis_from_json(data: dict[str, Any], mask: Any) -> ImageAnalysis:
    """Inverse of :func:`analysis_to_json`, given the mask (from the SEG, or empty)."""
    return ImageAnalysis(
        sop_instance_uid=data["sop_instance_uid"], mask=mask,
        findings=tuple(Finding(Box(*f["box"]), f["score"], f["p_malignant"])
                       for f in data["findings"]),
        segmenter=ModelInfo(*data["segmenter"]), detector=ModelInfo(*data["detector"]),
        timings_ms=data.get("timings_ms", {}),
    )


def image_problem(ds: Dataset) -> str | None:
    """Why a stored instance cannot be processed as a 2D mammogram, or None if it can.

    Pixel data are checked against Rows, Columns, Samples per Pixel and Bits Allocated
    for the uncompressed transfer syntaxes; compressed data is checked by decoding in
    the analyze stage.
    """
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    if intent == "FOR PROCESSING":
        return "PresentationIntentType is FOR PROCESSING"
    modality = str(ds.get("Modality", "") or "")
    if modality != "MG":
        return f"Modality is {modality or 'missing'}, not MG"
    if "PixelData" not in ds:
        return "no pixel data"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"colour image ({photometric or '?'}, {samples} samples): mammograms are grey"
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = rows * columns * frames * ((int(ds.get("BitsAllocated", 16) or 16) + 7) // 8)
        actual = len(ds.PixelData)
        if actual < expected:
            return f"pixel data truncated: {actual} bytes for {rows} x {columns} ({expected})"
        if actual > expected + 1:  # one byte of padding to an even length is allowed
            return f"pixel data longer than {rows} x {columns} implies: {actual} > {expected}"
    return None


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]


def default_pipeline(analyzer: Analyzer | None = None, *, cad_sr: bool = False,
                     prefetcher: Prefetcher | None = None) -> Pipeline:
    """The stages the node runs for every job: load, and with models analyze and encode."""
    stages = [Stage("load", load)]
    if analyzer is not None:
        stages += [analyze_stage(analyzer, prefetcher), encode_stage(cad_sr=cad_sr)]
    return Pipeline(stages=tuple(stages))
