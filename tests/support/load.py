"""Concurrent senders and a C-ECHO prober, for the load test and the benchmarks."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from mammo_scp.db import Database
from mammo_scp.jobs.models import Job
from mammo_scp.jobs.states import JobState
from tests.support.mg import four_view_study
from tests.support.peers import DCMTK_BIN

VERIFICATION = "1.2.840.10008.1.1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Echoes(threading.Thread):
    """C-ECHO the node every ``interval`` seconds, one association each, timing round trips."""

    def __init__(self, port: int, aet: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.port, self.aet, self.interval = port, aet, interval
        self.times_ms: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        ae = AE(ae_title="ECHOER")
        ae.add_requested_context(VERIFICATION)
        while not self.stop.wait(self.interval):
            started = time.perf_counter()
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.aet)
            ok = assoc.is_established and assoc.send_c_echo().Status == 0
            if assoc.is_established:
                assoc.release()
            if ok:
                self.times_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1

    def summary(self) -> str:
        if not self.times_ms:
            return f"C-ECHO: none answered, {self.failures} failed"
        return (f"C-ECHO: {len(self.times_ms)} answered, {self.failures} failed, p50 "
                f"{statistics.median(self.times_ms):.1f} ms, p99 "
                f"{percentile(self.times_ms, 99):.1f} ms, max {max(self.times_ms):.1f} ms")


@dataclass
class LoadResult:
    studies: list[str] = field(default_factory=list)
    stored: int = 0
    failed_stores: int = 0
    seconds: float = 0.0


def _fresh_copy(template: list[Path], directory: Path) -> tuple[str, list[Path]]:
    directory.mkdir(parents=True)
    study_uid = generate_uid()
    out = []
    for path in template:
        ds = dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = directory / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return study_uid, out


def all_jobs_done(db: Database, expected: int) -> bool:
    """True when exactly ``expected`` jobs exist and all are done."""
    with db.session() as session:
        states = session.scalars(sa.select(Job.state)).all()
    return len(states) == expected and all(s == JobState.DONE for s in states)


def run_senders(port: int, aet: str, work: Path, senders: int, seconds: float) -> LoadResult:
    """``senders`` threads, each sending four-view studies with storescu until time is up."""
    _, template = four_view_study(work / "template")
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def sender(index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            study_uid, files = _fresh_copy(template, work / f"s{index}" / f"{n}")
            n += 1
            done = subprocess.run([str(DCMTK_BIN / "storescu"), "-v", "-aet", f"MOD{index}",
                                   "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
                                  capture_output=True, text=True, timeout=300)
            ok = done.stderr.count("Received Store Response (Success)")
            with lock:
                result.studies.append(study_uid)
                result.stored += ok
                result.failed_stores += len(files) - ok

    started = time.monotonic()
    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result
