"""Analyses made on arrival (mammo_scp.prefetch), with a stand-in for the models."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp import prefetch
from mammo_scp.completion import queue_ready_studies
from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Study, utcnow
from mammo_scp.prefetch import Prefetcher
from mammo_scp.results import ImageAnalysis, ModelInfo
from mammo_scp.store.spool import Spool
from tests.support.mg import MG_FOR_PROCESSING, make_mg


class CountingAnalyzer:
    """Answers at once (or when ``gate`` opens) with an empty analysis; counts calls."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate

    def analyze(self, ds: Dataset) -> ImageAnalysis:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        return ImageAnalysis(sop_instance_uid=str(ds.SOPInstanceUID),
                             mask=np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool),
                             findings=(), segmenter=ModelInfo("unet", "t"),
                             detector=ModelInfo("frcnn", "t"))


def _image(tmp_path: Path, **kwargs: object) -> tuple[str, Path]:
    ds = make_mg("R", "CC", study_uid=generate_uid(), **kwargs)  # type: ignore[arg-type]
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID), path


def test_an_analysis_is_taken_once_for_the_file_it_was_made_from(tmp_path: Path) -> None:
    analyzer = CountingAnalyzer()
    prefetcher = Prefetcher(analyzer)  # type: ignore[arg-type]
    uid, path = _image(tmp_path)
    assert prefetcher.analyze(uid, path)
    taken = prefetcher.take(uid, path)
    assert taken is not None and taken.sop_instance_uid == uid
    assert prefetcher.take(uid, path) is None  # taken: gone
    assert analyzer.calls == 1


def test_a_file_replaced_since_is_analysed_again_by_the_job(tmp_path: Path) -> None:
    prefetcher = Prefetcher(CountingAnalyzer())  # type: ignore[arg-type]
    uid, path = _image(tmp_path)
    assert prefetcher.analyze(uid, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # re-sent
    assert prefetcher.take(uid, path) is None


def test_images_the_job_would_skip_are_not_analysed(tmp_path: Path) -> None:
    analyzer = CountingAnalyzer()
    prefetcher = Prefetcher(analyzer)  # type: ignore[arg-type]
    uid, path = _image(tmp_path, sop_class=MG_FOR_PROCESSING)
    assert not prefetcher.analyze(uid, path)
    assert prefetcher.take(uid, path) is None and analyzer.calls == 0


def test_the_job_waits_for_an_image_being_analysed_instead_of_running_the_models(
        tmp_path: Path) -> None:
    gate = threading.Event()
    analyzer = CountingAnalyzer(gate)
    prefetcher = Prefetcher(analyzer)  # type: ignore[arg-type]
    uid, path = _image(tmp_path)
    worker = threading.Thread(target=prefetcher.analyze, args=(uid, path))
    worker.start()
    deadline = time.monotonic() + 5
    while analyzer.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    threading.Timer(0.2, gate.set).start()
    started = time.monotonic()
    assert prefetcher.take(uid, path) is not None
    assert time.monotonic() - started >= 0.15
    worker.join(5)
    assert analyzer.calls == 1


def test_it_stops_keeping_analyses_at_its_memory_bound(tmp_path: Path) -> None:
    one_mask = 256 * 208  # bytes of one kept analysis of these images
    prefetcher = Prefetcher(CountingAnalyzer(), max_bytes=2 * one_mask)  # type: ignore[arg-type]
    for _ in range(2):
        assert not prefetcher.full()
        assert prefetcher.analyze(*_image(tmp_path))
    assert prefetcher.full()


def _receive(db: Database, spool: Spool, study_uid: str, view: str) -> str:
    """An MG image in the spool and in the database, as the SCP leaves it."""
    ds = make_mg("R", view, study_uid=study_uid)
    path = spool.instance_path(study_uid, str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    with db.session() as session:
        study = session.scalars(sa.select(Study).where(Study.study_uid == study_uid)).first()
        if study is None:
            study = Study(study_uid=study_uid, first_received_at=utcnow(),
                          last_received_at=utcnow())
            session.add(study)
            session.flush()
        session.add(Instance(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            series_uid=str(ds.SeriesInstanceUID), study_id=study.id,
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID), laterality="R", view=view,
            path=spool.relative(path), size_bytes=path.stat().st_size, calling_ae="T"))
    return str(ds.SOPInstanceUID)


def test_candidates_are_the_untaken_images_and_taken_ones_are_forgotten(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Oldest untaken image first, each once; an analysis whose instance went to a job of
    another process (``work`` on another host) is dropped instead of filling the store."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    study_uid = str(generate_uid())
    first, second = (_receive(db, spool, study_uid, view) for view in ("CC", "MLO"))
    prefetcher = Prefetcher(CountingAnalyzer())  # type: ignore[arg-type]
    assert [uid for uid, _ in prefetcher.candidates(db, spool)] == [first, second]
    assert prefetcher.analyze(*prefetcher.candidates(db, spool, limit=1)[0])
    assert [uid for uid, _ in prefetcher.candidates(db, spool)] == [second]

    time.sleep(0.01)
    assert queue_ready_studies(db, quiet_period_s=0.001)  # both go to a job elsewhere
    monkeypatch.setattr(prefetch, "TAKEN_ELSEWHERE_S", 0.0)
    assert prefetcher.candidates(db, spool) == []
    assert prefetcher.take(first, spool.instance_path(study_uid, first)) is None
