"""One job: load -> (preprocess, infer, encode: stages from the models and encoders) -> results.

A pipeline is an ordered list of named stages. Each stage reads and adds to a
:class:`JobContext`; the worker times every stage and writes it into the
job's timeline. Result objects are written to the spool and handed to
delivery by the worker once all stages have succeeded.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from mammo_scp.assessment import StudyAssessment, Thresholds, assess, detector_thresholds
from mammo_scp.decode import describe, is_fatal
from mammo_scp.dicom import SopClass
from mammo_scp.metrics import MODEL_SECONDS
from mammo_scp.preprocess import dataset_spacing
from mammo_scp.results import Box, Finding, ImageAnalysis, ModelInfo

if TYPE_CHECKING:
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.prefetch import Prefetcher

logger = logging.getLogger(__name__)

#: The job's findings as JSON beside its result objects (not delivered): for `preview`.
FINDINGS_FILE = "findings.json"
#: Result kind of the Enhanced SR a study without findings gets.
NO_FINDINGS_KIND = "NO_FINDINGS_SR"


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
    """A DICOM object produced for the job (SEG, SR, ...), and its file's bytes when the
    stage that made it wrote them already (so that a value that cannot be written fails
    that stage's image, not the job)."""

    kind: str
    dataset: Dataset
    data: bytes | None = None


def file_bytes(dataset: Dataset) -> bytes:
    """The DICOM file of a result object."""
    from mammo_scp.encode import save_result

    buffer = BytesIO()
    save_result(dataset, buffer)
    return buffer.getvalue()


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
    #: The breast and exam assessment of the analysed images, set by the encode stage.
    assessment: StudyAssessment | None = None

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
    """Read every processable instance; record the others as skipped with the reason.

    One image that cannot be read (a header pydicom cannot parse, an empty Pixel Data
    element, Rows as text or with two values, ...) is skipped with its reason; the rest
    of the study goes on.
    """
    for record in ctx.instances:
        reason = _NOT_PROCESSED.get(record.sop_class_uid)
        if reason is None and record.laterality is None:
            reason = "no laterality (ImageLaterality or Laterality R/L)"
        if reason is None and record.view is None:
            reason = "no view (ViewCodeSequence or ViewPosition)"
        if reason is not None:
            ctx.skip(record.sop_instance_uid, reason)
            continue
        try:
            ds = dcmread(record.path)
            problem = image_problem(ds)
        except BaseException as exc:  # noqa: BLE001 - one image's data must not sink the study
            if is_fatal(exc):
                raise
            problem = f"cannot be read: {describe(exc)}"
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
                except BaseException as exc:  # noqa: BLE001 - a native decoder's panic too
                    if is_fatal(exc):
                        raise
                    ctx.skip(uid, f"cannot be analysed: {describe(exc)}")
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


def encode_stage(*, cad_sr: bool, thresholds: Thresholds, gsps: bool = False) -> Stage:
    """One SEG per image with a mass, one Measurement Report per study with findings (an
    Enhanced SR saying "no finding" for a study without), optionally a CAD SR and
    (``gsps``: some destination wants them) one GSPS per image with findings. The study's
    breast and exam assessment at ``thresholds`` goes into each study object and into the
    job (:attr:`JobContext.assessment`).

    An image whose SEG or GSPS, or whose part of a study object, cannot be encoded (a
    header the encoders refuse) is skipped with the reason, and nothing derived from it is
    sent; the study's objects are made from the other images.
    """

    def encode(ctx: JobContext) -> str:
        from mammo_scp.encode import (
            build_cad_sr,
            build_gsps,
            build_measurement_report,
            build_no_findings_report,
            build_seg,
            has_findings,
        )
        from mammo_scp.encode.common import laterality_of, study_identity

        if not ctx.analyses:
            return "nothing to encode"
        segs: dict[str, ResultObject] = {}
        states: dict[str, ResultObject] = {}
        for uid in list(ctx.analyses):
            kind = "SEG"
            try:
                seg = build_seg(ctx.datasets[uid], ctx.analyses[uid])
                if seg is not None:  # written here: a value that cannot be is this image's
                    segs[uid] = ResultObject("SEG", seg, file_bytes(seg))
                kind = "GSPS"
                state = build_gsps(ctx.datasets[uid], ctx.analyses[uid]) if gsps else None
                if state is not None:
                    states[uid] = ResultObject("GSPS", state, file_bytes(state))
            except BaseException as exc:  # noqa: BLE001 - one image must not sink the study
                if is_fatal(exc):
                    raise
                segs.pop(uid, None)
                ctx.skip(uid, f"its {kind} cannot be encoded: {describe(exc)}")

        def assessment_of(uids: list[str]) -> StudyAssessment:
            return assess([(laterality_of(ctx.datasets[u]).value, ctx.analyses[u].mass_score)
                           for u in uids], thresholds)

        def report(uids: list[str]) -> ResultObject:
            sr = build_measurement_report([ctx.datasets[u] for u in uids],
                                          [ctx.analyses[u] for u in uids],
                                          [segs[u].dataset for u in uids if u in segs],
                                          assessment_of(uids))
            return ResultObject("SR", sr, file_bytes(sr))

        def no_findings(uids: list[str]) -> ResultObject:
            sr = build_no_findings_report([ctx.datasets[u] for u in uids],
                                          [ctx.analyses[u] for u in uids], assessment_of(uids))
            return ResultObject(NO_FINDINGS_KIND, sr, file_bytes(sr))

        def cad(uids: list[str]) -> ResultObject:
            sr = build_cad_sr([ctx.datasets[u] for u in uids], [ctx.analyses[u] for u in uids],
                              assessment_of(uids))
            return ResultObject("CAD_SR", sr, file_bytes(sr))

        # A study object is of one patient and study: images whose identity (as the results
        # would copy it) differs from most of the study's are left out of everything.
        identities = {uid: study_identity(ctx.datasets[uid]) for uid in ctx.analyses}
        usual = Counter(identities.values()).most_common(1)[0][0]
        for uid, identity in identities.items():
            if identity != usual:
                ctx.skip(uid, "its Study Instance UID, Patient ID or Patient Name differs from "
                              "the study's other images")
        # No Measurement Report without findings: OHIF (3.13) fails to open one. Such a study
        # gets an Enhanced SR saying "no finding" instead (and the CAD SR, when on, says
        # "succeeded without findings").
        built: list[ResultObject] = []
        analysed: set[str] = set()
        while set(ctx.analyses) != analysed:  # again if an image was skipped on the way
            analysed = set(ctx.analyses)
            built = []
            study_objects: list[tuple[str, Callable[[list[str]], ResultObject]]] = [
                ("SR", report) if has_findings(list(ctx.analyses.values()))
                else (NO_FINDINGS_KIND, no_findings)]
            if cad_sr:
                study_objects.append(("CAD_SR", cad))
            for kind, build in study_objects:
                made = _study_object(ctx, kind, build)
                if made is not None:
                    built.append(made)
        # SEGs of images skipped while the study objects were built are left out
        ctx.results.extend(seg for uid, seg in segs.items() if uid in ctx.analyses)
        ctx.results.extend(state for uid, state in states.items() if uid in ctx.analyses)
        ctx.results.extend(built)
        ctx.artifacts[FINDINGS_FILE] = json.dumps(
            [analysis_to_json(a) for a in ctx.analyses.values()], indent=1).encode()
        # that of the images the study objects were made of (all of them skipped: none)
        ctx.assessment = assessment_of(list(ctx.analyses)) if ctx.analyses else None
        kinds = [r.kind for r in ctx.results]
        return (f"{kinds.count('SEG')} SEG, {kinds.count('SR')} SR"
                + (f", {kinds.count(NO_FINDINGS_KIND)} no-findings SR" if NO_FINDINGS_KIND in kinds
                   else "")
                + (f", {kinds.count('CAD_SR')} CAD SR" if cad_sr else "")
                + (f", {kinds.count('GSPS')} GSPS" if gsps else "")
                + (f"; {ctx.assessment.summary()}" if ctx.assessment else ""))

    return Stage("encode", encode)


def _study_object(ctx: JobContext, kind: str,
                  build: Callable[[list[str]], ResultObject]) -> ResultObject | None:
    """A study-level object of every analysed image. When that fails, the images are added
    one by one (those with findings first) and each that makes it fail is skipped with the
    reason; the object is then that of the others (None when no image is left)."""
    uids = list(ctx.analyses)
    try:
        return build(uids)
    except BaseException as exc:  # noqa: BLE001 - a header the encoder refuses, found below
        if is_fatal(exc):
            raise
    kept: list[str] = []
    made: ResultObject | None = None
    for uid in sorted(uids, key=lambda u: not ctx.analyses[u].findings):
        if kind == "SR" and not any(ctx.analyses[u].findings for u in (*kept, uid)):
            continue  # a report needs a finding: left out, as a study without any has none
        try:
            made = build([*kept, uid])
        except BaseException as exc:  # noqa: BLE001
            if is_fatal(exc):
                raise
            ctx.skip(uid, f"its {kind} content cannot be encoded: {describe(exc)}")
            continue
        kept.append(uid)
    return made


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
        "mass_score": analysis.mass_score,
    }


def analysis_from_json(data: dict[str, Any], mask: Any) -> ImageAnalysis:
    """Inverse of :func:`analysis_to_json`, given the mask (from the SEG, or empty)."""
    return ImageAnalysis(
        sop_instance_uid=data["sop_instance_uid"], mask=mask,
        findings=tuple(Finding(Box(*f["box"]), f["score"], f["p_malignant"])
                       for f in data["findings"]),
        segmenter=ModelInfo(*data["segmenter"]), detector=ModelInfo(*data["detector"]),
        timings_ms=data.get("timings_ms", {}),
        mass_score=float(data.get("mass_score", max((f["score"] for f in data["findings"]),
                                                    default=0.0))),
    )


def image_problem(ds: Dataset) -> str | None:
    """Why a stored instance cannot be processed as a 2D mammogram, or None if it can.

    Pixel data are checked against Rows, Columns, Samples per Pixel and Bits Allocated
    for the uncompressed transfer syntaxes; compressed data is checked by decoding in
    the analyze stage. Pixel spacing must be plausible for a mammogram
    (:func:`~mammo_scp.preprocess.dataset_spacing`).
    """
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    if intent == "FOR PROCESSING":
        return "PresentationIntentType is FOR PROCESSING"
    modality = str(ds.get("Modality", "") or "")
    if modality != "MG":
        return f"Modality is {modality[:16] or 'missing'}, not MG"
    if "PixelData" not in ds:
        return "no pixel data"
    if not ds["PixelData"].value:
        return "no pixel data (the Pixel Data element is empty)"
    try:
        samples = _one_int(ds, "SamplesPerPixel", 1)
        rows, columns = _one_int(ds, "Rows", 0), _one_int(ds, "Columns", 0)
        frames = _one_int(ds, "NumberOfFrames", 1)
        bits = _one_int(ds, "BitsAllocated", 16)
    except ValueError as exc:
        return str(exc)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return (f"colour image ({photometric[:16] or '?'}, {samples} samples): "
                "mammograms are grey")
    if rows <= 0 or columns <= 0:
        return f"no image size (Rows {rows}, Columns {columns})"
    if frames != 1:
        return f"{frames} frames: only single-frame 2D mammograms are processed"
    if bits not in (8, 16):
        return f"BitsAllocated {bits}: only 8 or 16 bits per pixel are processed"
    try:
        dataset_spacing(ds)
    except ValueError as exc:
        return str(exc)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = rows * columns * frames * (bits // 8)
        actual = len(ds.PixelData)
        if actual < expected:
            return f"pixel data truncated: {actual} bytes for {rows} x {columns} ({expected})"
        if actual > expected + 1:  # one byte of padding to an even length is allowed
            return f"pixel data longer than {rows} x {columns} implies: {actual} > {expected}"
    return None


def _one_int(ds: Dataset, keyword: str, default: int) -> int:
    """The attribute's single whole-number value (``default`` when absent or empty).

    Raises
    ------
    ValueError
        If it holds several values or something that is not a whole number.
    """
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    if isinstance(value, str | bytes):
        return_value = str(value)[:16].encode("unicode_escape").decode("ascii")
        raise ValueError(f"{keyword} is stored as text ({return_value!r}), not a number")
    if not isinstance(value, int | float):
        raise ValueError(f"{keyword} holds several values: one is required")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{keyword} is not a whole number: {value!r}")
    return int(value)


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]


def default_pipeline(analyzer: Analyzer | None = None, *, cad_sr: bool = False,
                     gsps: bool = False, prefetcher: Prefetcher | None = None,
                     assessment: Thresholds | None = None) -> Pipeline:
    """The stages the node runs for every job: load, and with models analyze and encode.

    ``assessment``: the thresholds of the breast and exam assessment
    (:func:`mammo_scp.node.assessment_thresholds`); by default the analyzer's finding
    threshold and the default ``assessment_low``.
    """
    stages = [Stage("load", load)]
    if analyzer is not None:
        thresholds = assessment or detector_thresholds(analyzer.score_threshold, {})
        stages += [analyze_stage(analyzer, prefetcher),
                   encode_stage(cad_sr=cad_sr, thresholds=thresholds, gsps=gsps)]
    return Pipeline(stages=tuple(stages))
