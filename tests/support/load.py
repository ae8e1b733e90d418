"""Concurrent senders and a C-ECHO prober, for the load test and the benchmarks."""

from __future__ import annotations

import gc
import multiprocessing
import secrets
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydicom import dcmread
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


def _probe_echoes(port: int, aet: str, interval: float, stop: Any, results: Any) -> None:
    """The prober's loop, in a process of its own: one association per C-ECHO.

    What the prober imported is frozen out of garbage collection, so that its own full
    collections (~100 ms every few seconds) do not count as the node's round trips.
    """
    gc.collect()
    gc.freeze()
    ae = AE(ae_title="ECHOER")
    ae.add_requested_context(VERIFICATION)
    samples: list[tuple[float, float]] = []
    failures = 0
    while not stop.wait(interval):
        started = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title=aet)
        ok = assoc.is_established and assoc.send_c_echo().Status == 0
        if assoc.is_established:
            assoc.release()
        if ok:
            samples.append((time.monotonic(), (time.perf_counter() - started) * 1000))
        else:
            failures += 1
    results.send((samples, failures))


class Echoes:
    """C-ECHO the node every ``interval`` seconds, one association each, timing round trips.

    The prober runs in a process of its own: in the process that also drives the senders
    (threads that rewrite studies between sends) it would wait for that process's GIL, and
    the round trips would measure the load generator as much as the node.
    """

    def __init__(self, port: int, aet: str, interval: float = 0.05) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results, child_end = context.Pipe(duplex=False)
        self._process = context.Process(target=_probe_echoes, daemon=True,
                                        args=(port, aet, interval, self._stop, child_end))
        #: (time.monotonic() when answered, round trip in ms) of each C-ECHO answered.
        self.samples: list[tuple[float, float]] = []
        self.failures = 0

    @property
    def times_ms(self) -> list[float]:
        return [ms for _, ms in self.samples]

    def start(self) -> None:
        self._process.start()

    def finish(self, timeout: float = 60.0) -> None:
        """Stop probing and collect the round trips."""
        self._stop.set()
        if not self._results.poll(timeout):
            self._process.kill()
            raise RuntimeError("the C-ECHO prober did not report back")
        try:
            self.samples, self.failures = self._results.recv()
        except EOFError:
            self._process.join(timeout)
            raise RuntimeError(
                f"the C-ECHO prober died (exit code {self._process.exitcode})") from None
        self._process.join(timeout)

    def summary(self, between: tuple[float, float] | None = None) -> str:
        """Round-trip figures, of all C-ECHOs or of those answered ``between`` two
        ``time.monotonic()`` readings."""
        times = [ms for at, ms in self.samples
                 if between is None or between[0] <= at <= between[1]]
        if not times:
            return f"C-ECHO: none answered, {self.failures} failed"
        return (f"C-ECHO: {len(times)} answered, {self.failures} failed, p50 "
                f"{statistics.median(times):.1f} ms, p99 "
                f"{percentile(times, 99):.1f} ms, max {max(times):.1f} ms")


@dataclass
class LoadResult:
    studies: list[str] = field(default_factory=list)
    stored: int = 0
    failed_stores: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _Template:
    """A study's files as bytes, with the UIDs each copy replaces."""

    files: tuple[tuple[str, bytes], ...]
    uids: tuple[str, ...]

    @classmethod
    def of(cls, paths: list[Path]) -> _Template:
        uids: list[str] = []
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
                if uid not in uids:
                    uids.append(str(uid))
        return cls(tuple((path.name, path.read_bytes()) for path in paths), tuple(uids))


def _same_length_uid(uid: str) -> str:
    """A new UID as long as ``uid``: its last 20 digits replaced (they are all digits of
    its last component, so the UID stays valid)."""
    return uid[:-20] + f"{secrets.randbelow(10 ** 20):020d}"


def _fresh_copy(template: _Template, directory: Path) -> tuple[str, list[Path]]:
    """A new study from the template: new study, series and instance UIDs, written as bytes.

    Rewriting the UIDs in the encoded files (same lengths, so nothing else moves) costs the
    load generator next to nothing; decoding and re-encoding with pydicom would make the
    senders' process compete with the node for the two cores.
    """
    directory.mkdir(parents=True)
    new = {uid: _same_length_uid(uid) for uid in template.uids}
    out = []
    for name, data in template.files:
        for old_uid, new_uid in new.items():
            data = data.replace(old_uid.encode(), new_uid.encode())
        target = directory / name
        target.write_bytes(data)
        out.append(target)
    return new[template.uids[0]], out


def all_jobs_done(db: Database, expected: int) -> bool:
    """True when exactly ``expected`` jobs exist and all are done."""
    with db.session() as session:
        states = session.scalars(sa.select(Job.state)).all()
    return len(states) == expected and all(s == JobState.DONE for s in states)


def run_senders(port: int, aet: str, work: Path, senders: int, seconds: float,
                nice: int = 0, propose_all: bool = False) -> LoadResult:
    """``senders`` threads, each sending four-view studies with storescu until time is up
    (each storescu at ``nice``).

    Like a mammography unit, each association proposes only the SOP classes it sends
    (storescu ``-R``); with ``propose_all`` it proposes storescu's default list of
    ~120 storage classes, as a generic forwarder might.
    """
    _, paths = four_view_study(work / "template")
    template = _Template.of(paths)
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def sender(index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            study_uid, files = _fresh_copy(template, work / f"s{index}" / f"{n}")
            n += 1
            command = ["nice", "-n", str(nice), str(DCMTK_BIN / "storescu"), "-v",
                       *([] if propose_all else ["-R"]),
                       "-aet", f"MOD{index}", "-aec", aet, "127.0.0.1", str(port),
                       *map(str, files)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
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
