"""Analyses made on arrival (mammo_scp.prefetch), with a stand-in for the models."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammo_scp.prefetch import Prefetcher
from mammo_scp.results import ImageAnalysis, ModelInfo
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
