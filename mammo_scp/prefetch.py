"""Analyse images as they arrive, before their study is complete.

A mammography unit sends a study's views as it takes them, often a minute or more apart,
and the study's job starts only when the fourth view is in (or the quiet period ends). So
that its results do not then wait for four inferences, the worker process analyses each
image it is told has arrived while it has no job to run, and keeps the analysis in memory
(:class:`Prefetcher`). The job's analyze stage takes an image's analysis from there when
the file is still the one that was analysed, waits for an image being analysed right now,
and runs the models itself for the rest.

Nothing here is persisted or needed: after a restart, or for an image evicted from the
bounded store (:data:`MAX_BYTES`), the job runs the models as before. Only arrivals wake
the prefetcher (never a poll of the database), so a ``work`` process on another host, which
hears of no arrival, never prefetches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from pydicom import dcmread

from mammo_scp.decode import describe, is_fatal
from mammo_scp.dicom import SopClass
from mammo_scp.jobs.models import Instance
from mammo_scp.jobs.states import InstanceStatus

if TYPE_CHECKING:
    from mammo_scp.db import Database
    from mammo_scp.models.analyzer import Analyzer
    from mammo_scp.results import ImageAnalysis
    from mammo_scp.store.spool import Spool

logger = logging.getLogger(__name__)

#: Most memory the kept analyses may take (their masks are the size of the source image:
#: ~1 MB for a mini-MIAS image, ~14 MB for a full-field one). Prefetching stops when full.
MAX_BYTES = 256 * 1024 * 1024
#: How long a job waits for an image that is being analysed at that moment.
WAIT_S = 60.0
#: An analysis kept this long after its instance went to a job was taken by another process.
TAKEN_ELSEWHERE_S = 300.0


@dataclass(frozen=True)
class FileKey:
    """Which file an analysis was made from: a re-sent instance is a new file."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileKey | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(str(path), st.st_size, st.st_mtime_ns)


class Prefetcher:
    """Analyses of received images, made ahead of their jobs; safe across threads."""

    def __init__(self, analyzer: Analyzer, max_bytes: int = MAX_BYTES) -> None:
        self.analyzer = analyzer
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[FileKey, ImageAnalysis, float]] = OrderedDict()
        self._bytes = 0
        self._busy: dict[str, threading.Event] = {}
        self._tried: set[str] = set()

    # -- for the job ----------------------------------------------------------------------------

    def take(self, sop_uid: str, path: Path) -> ImageAnalysis | None:
        """The analysis made ahead for this instance's current file, or None; waits for it
        if it is being made now."""
        with self._lock:
            busy = self._busy.get(sop_uid)
        if busy is not None:
            busy.wait(WAIT_S)
        with self._lock:
            kept = self._kept.pop(sop_uid, None)
            if kept is None:
                return None
            self._bytes -= kept[1].mask.nbytes
        key, analysis, _ = kept
        return analysis if key == FileKey.of(path) else None

    # -- for the prefetch thread ----------------------------------------------------------------

    def full(self) -> bool:
        with self._lock:
            return self._bytes >= self.max_bytes

    def candidates(self, db: Database, spool: Spool, limit: int = 8) -> list[tuple[str, Path]]:
        """Received 2D For Presentation images no job has taken, oldest first, that are
        neither kept nor tried already."""
        self._drop_taken(db)
        with db.read_session() as session:
            rows = session.execute(
                sa.select(Instance.sop_instance_uid, Instance.path)
                .where(Instance.job_id.is_(None), Instance.status == InstanceStatus.RECEIVED,
                       Instance.sop_class_uid == SopClass.MG_FOR_PRESENTATION.value,
                       Instance.laterality.is_not(None), Instance.view.is_not(None))
                .order_by(Instance.id).limit(limit + len(self._tried))
            ).all()
        with self._lock:
            todo = [(uid, spool.absolute(path)) for uid, path in rows
                    if uid not in self._kept and uid not in self._tried]
        return todo[:limit]

    def analyze(self, sop_uid: str, path: Path) -> bool:
        """Analyse one image and keep the result; False when it could not be (the job will
        find out why itself)."""
        from mammo_scp.pipeline import image_problem

        done = threading.Event()
        with self._lock:
            self._tried.add(sop_uid)
            self._busy[sop_uid] = done
        try:
            key = FileKey.of(path)
            ds = dcmread(path)
            if key is None or image_problem(ds) is not None:
                return False
            analysis = self.analyzer.analyze(ds)
            with self._lock:
                self._kept[sop_uid] = (key, analysis, time.monotonic())
                self._bytes += analysis.mask.nbytes
            logger.debug("instance %s analysed on arrival in %.0f ms", sop_uid,
                         analysis.timings_ms.get("total", 0.0))
            return True
        except BaseException as exc:  # noqa: BLE001 - the job analyses it again and says why
            if is_fatal(exc):
                raise
            logger.debug("instance %s not analysed on arrival: %s", sop_uid, describe(exc))
            return False
        finally:
            with self._lock:
                self._busy.pop(sop_uid, None)
            done.set()

    def forget_taken(self, sop_uids: set[str]) -> None:
        """Stop remembering instances that a job has taken (keeps ``_tried`` small)."""
        with self._lock:
            self._tried -= sop_uids

    def _drop_taken(self, db: Database) -> None:
        """Forget instances that a job of another process took (``work`` on another host
        sharing the database): their analyses would otherwise stay until the store is full."""
        with self._lock:
            remembered = list(self._tried | set(self._kept))
        if not remembered:
            return
        with db.read_session() as session:
            taken = set(session.scalars(
                sa.select(Instance.sop_instance_uid)
                .where(Instance.sop_instance_uid.in_(remembered), Instance.job_id.is_not(None))))
        if not taken:
            return
        stale = time.monotonic() - TAKEN_ELSEWHERE_S
        with self._lock:
            self._tried -= taken
            for uid in taken:
                kept = self._kept.get(uid)
                if kept is not None and kept[2] < stale:  # a job of ours would have taken it
                    del self._kept[uid]
                    self._bytes -= kept[1].mask.nbytes


__all__ = ["MAX_BYTES", "FileKey", "Prefetcher"]
