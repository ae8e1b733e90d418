"""Workers: claim ready jobs, run the pipeline, hand results to delivery, keep the queue moving.

One process runs ``workers`` job threads, one delivery thread and one
housekeeping thread (study completion, recovery of abandoned jobs). Any number
of processes, on one host or many, may do so against one PostgreSQL database.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from mammo_scp.completion import queue_ready_studies
from mammo_scp.config import Settings
from mammo_scp.db import Database
from mammo_scp.decode import describe, is_fatal
from mammo_scp.jobs.models import Delivery, Instance, Job, Result, utcnow
from mammo_scp.jobs.service import (
    claim_next_job,
    lock_owned_job,
    record_assessment,
    record_stage,
    recover_abandoned,
    release_job,
    renew_lease,
    transition,
    worker_id,
)
from mammo_scp.jobs.states import DeliveryState, InstanceStatus, JobState
from mammo_scp.metrics import STAGE_SECONDS, count_assessment
from mammo_scp.pipeline import InstanceRecord, JobContext, Pipeline
from mammo_scp.prefetch import Prefetcher
from mammo_scp.send.delivery import deliver_due
from mammo_scp.store.spool import Spool

logger = logging.getLogger(__name__)


class JobRunner:
    """Runs one claimed job through the pipeline and records the outcome."""

    def __init__(self, settings: Settings, db: Database, spool: Spool, pipeline: Pipeline) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        self.pipeline = pipeline

    def run(self, job_id: int, worker: str) -> None:
        stop_heartbeat = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(job_id, worker, stop_heartbeat),
                                     name=f"lease-{job_id}", daemon=True)
        heartbeat.start()
        try:
            ctx = self._context(job_id)
            for stage in self.pipeline.stages:
                started = time.perf_counter()
                try:
                    note = stage.run(ctx)
                except BaseException as exc:  # noqa: BLE001 - fails the job, not the worker
                    if is_fatal(exc):
                        raise
                    # Data problems are caught per image inside the stages; what reaches
                    # here is a fault of the node, so its traceback is logged.
                    logger.error("job %d: stage %s failed", job_id, stage.name,
                                 exc_info=(type(exc), exc, exc.__traceback__))
                    self._fail(job_id, worker, f"stage {stage.name} failed: {describe(exc)}")
                    return
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                STAGE_SECONDS.labels(stage=stage.name).observe(elapsed_ms / 1000.0)
                record_stage(self.db, job_id, stage.name, elapsed_ms, note, worker)
            self._finish(ctx, worker)
        finally:
            stop_heartbeat.set()
            heartbeat.join()

    def _heartbeat(self, job_id: int, worker: str, stop: threading.Event) -> None:
        interval = self.settings.job_lease_s / 4.0
        while not stop.wait(interval):
            try:
                if not renew_lease(self.db, job_id, worker, self.settings.job_lease_s):
                    logger.warning("job %d: lease lost by %s", job_id, worker)
                    return
            except sa.exc.SQLAlchemyError as exc:
                logger.warning("job %d: cannot renew lease: %s", job_id, type(exc).__name__)

    def _context(self, job_id: int) -> JobContext:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            instances = session.scalars(
                sa.select(Instance).where(Instance.job_id == job_id).order_by(Instance.id)
            ).all()
            records = tuple(
                InstanceRecord(i.sop_instance_uid, i.sop_class_uid, self.spool.absolute(i.path),
                               i.laterality, i.view)
                for i in instances
            )
            return JobContext(job_id=job_id, study_uid=job.study.study_uid, instances=records)

    def _fail(self, job_id: int, worker: str, error: str) -> None:
        with self.db.session() as session:
            job = lock_owned_job(session, job_id, worker)
            if job is None:
                return
            job.error = error
            job.worker = None
            job.lease_expires_at = None
            transition(session, job, JobState.FAILED, error, worker)

    def _finish(self, ctx: JobContext, worker: str) -> None:
        from mammo_scp.encode import save_result

        written: list[tuple[str, str, str, Path]] = []
        for result in ctx.results:
            ds = result.dataset
            uid = str(ds.SOPInstanceUID)
            path = self.spool.result_path(ctx.job_id, uid)
            tmp = path.with_suffix(".tmp")
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if result.data is not None:  # written by the stage that made it
                tmp.write_bytes(result.data)
            else:
                save_result(ds, tmp)
            self.spool.commit(tmp, path)
            written.append((uid, str(ds.SOPClassUID), result.kind, path))
        for name, content in ctx.artifacts.items():
            self.spool.write_bytes(self.spool.results / str(ctx.job_id) / name, content)

        with self.db.session() as session:
            job = lock_owned_job(session, ctx.job_id, worker)
            if job is None:
                logger.warning("job %d: %s lost its lease; results discarded", ctx.job_id, worker)
                return
            for instance in session.scalars(sa.select(Instance).where(
                    Instance.job_id == ctx.job_id)):
                reason = ctx.skipped.get(instance.sop_instance_uid)
                instance.status = InstanceStatus.SKIPPED if reason else InstanceStatus.PROCESSED
                instance.skip_reason = reason
            results = [self._upsert_result(session, ctx.job_id, uid, sop_class, kind,
                                           self.spool.relative(path))
                       for uid, sop_class, kind, path in written]
            record_assessment(session, ctx.job_id, ctx.assessment)
            destinations = self.settings.destination_names
            for row in results:
                for name in self.settings.destinations_for(row.kind):
                    self._queue_delivery(session, ctx.job_id, row.id, name)
            job.worker = None
            job.lease_expires_at = None
            if not ctx.datasets and not results:
                transition(session, job, JobState.SKIPPED,
                           f"nothing to process ({len(ctx.skipped)} instance(s) skipped)", worker)
            elif results and destinations:
                transition(session, job, JobState.DELIVERING,
                           f"{len(results)} object(s) to {len(destinations)} destination(s)",
                           worker)
            else:
                why = "no destinations configured" if results else "no result objects"
                transition(session, job, JobState.DONE, why, worker)
        if ctx.assessment is not None:
            count_assessment(ctx.assessment)

    @staticmethod
    def _upsert_result(session: sa.orm.Session, job_id: int, uid: str, sop_class: str,
                       kind: str, spool_path: str) -> Result:
        result = session.scalars(sa.select(Result).where(
            Result.job_id == job_id, Result.sop_instance_uid == uid)).first()
        if result is None:
            result = Result(job_id=job_id, sop_instance_uid=uid, sop_class_uid=sop_class,
                            kind=kind, path=spool_path)
            session.add(result)
            session.flush()
        return result

    @staticmethod
    def _queue_delivery(session: sa.orm.Session, job_id: int, result_id: int, name: str) -> None:
        delivery = session.scalars(sa.select(Delivery).where(
            Delivery.result_id == result_id, Delivery.destination == name)).first()
        if delivery is None:
            session.add(Delivery(job_id=job_id, result_id=result_id, destination=name,
                                 state=DeliveryState.PENDING, next_attempt_at=utcnow()))
        else:  # a re-run sends the same objects again; the PACS deduplicates by UID
            delivery.state = DeliveryState.PENDING
            delivery.attempts = 0
            delivery.next_attempt_at = utcnow()


class Wakeup:
    """Lets whoever just made work for a polling loop wake it at once.

    Loops still poll every ``poll_interval_s``, for work made by other processes
    (a `work` host sharing the database) and for the quiet-period rule.
    """

    def __init__(self, also: Wakeup | None = None) -> None:
        self._event = threading.Event()
        self._also = also

    def notify(self) -> None:
        self._event.set()
        if self._also is not None:
            self._also.notify()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until notified or ``timeout_s`` passes; True when notified."""
        woken = self._event.wait(timeout_s)
        self._event.clear()
        return woken


class Workers:
    """The background threads of one process."""

    def __init__(self, settings: Settings, db: Database, spool: Spool, pipeline: Pipeline,
                 prefetcher: Prefetcher | None = None) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        self.runner = JobRunner(settings, db, spool, pipeline)
        self.prefetcher = prefetcher
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._threads: dict[str, threading.Thread] = {}
        self._targets: dict[str, object] = {}
        #: The job each job thread runs now, so that one that dies gives it back at once.
        self._holding: dict[str, int] = {}
        self.images_arrived = Wakeup()  # the prefetcher's own, so housekeeping does not eat it
        self.instances_arrived = Wakeup(also=self.images_arrived)
        self._jobs_in_hand = 0
        self._jobs_lock = threading.Lock()
        self.jobs_ready = Wakeup()
        self.deliveries_ready = Wakeup()

    def start(self) -> None:
        targets = [("housekeeping", self._housekeeping), ("delivery", self._delivery)]
        targets += [(f"job-{n}", self._jobs) for n in range(self.settings.workers)]
        if self.prefetcher is not None:
            targets.append(("prefetch", self._prefetch))
        for name, target in targets:
            self._targets[name] = target
            self._start_thread(name)
        logger.info("started %d job worker(s), delivery and housekeeping", self.settings.workers)

    def _start_thread(self, name: str) -> None:
        thread = threading.Thread(target=self._guard, args=(name, self._targets[name]),
                                  name=name, daemon=True)
        thread.start()
        self._threads[name] = thread
        self.threads.append(thread)

    def supervise(self) -> list[str]:
        """Replace every thread that died (a SystemExit raised in it, say); a job it held
        goes back to the queue at once (or fails, after ``max_job_attempts``). Called
        every second by the process's main loop; returns the names replaced."""
        replaced = []
        for name, thread in list(self._threads.items()):
            if thread.is_alive() or self.stopping.is_set():
                continue
            with self._jobs_lock:
                job_id = self._holding.pop(name, None)
            logger.error("thread %s died%s; starting a new one", name,
                         f" holding job {job_id}" if job_id is not None else "")
            if job_id is not None:
                self._release(job_id, worker_id(name), "its worker thread died")
            self.threads.remove(thread)
            self._start_thread(name)
            replaced.append(name)
        return replaced

    def _release(self, job_id: int, worker: str, why: str) -> None:
        try:
            release_job(self.db, job_id, worker, self.settings.max_job_attempts, why)
        except sa.exc.SQLAlchemyError as exc:  # its lease expires; housekeeping re-queues it
            logger.error("job %d: cannot re-queue it now (%s); its lease will expire", job_id,
                         type(exc).__name__)
        self.jobs_ready.notify()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        for wakeup in (self.instances_arrived, self.jobs_ready, self.deliveries_ready):
            wakeup.notify()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _guard(self, name: str, loop: object) -> None:
        """Run a loop; a database outage pauses it, and anything else it raises (a native
        library's BaseException included) restarts it, rather than killing the thread."""
        me = worker_id(name)
        while not self.stopping.is_set():
            try:
                loop(me)  # type: ignore[operator]
                return
            except sa.exc.SQLAlchemyError as exc:
                logger.error("%s: database error (%s); retrying in %.0f s", name,
                             str(exc).splitlines()[0], self.settings.poll_interval_s * 5)
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive it
                if is_fatal(exc):
                    raise  # the thread ends; supervise() replaces it
                logger.error("%s: unexpected error; restarting the loop", name,
                             exc_info=(type(exc), exc, exc.__traceback__))
            self.stopping.wait(self.settings.poll_interval_s * 5)

    def _jobs(self, me: str) -> None:
        name = threading.current_thread().name
        while not self.stopping.is_set():
            with self._jobs_lock:
                self._jobs_in_hand += 1
            try:
                job_id = claim_next_job(self.db, me, self.settings.job_lease_s)
                if job_id is not None:
                    with self._jobs_lock:
                        self._holding[name] = job_id
                    try:
                        self.runner.run(job_id, me)
                    except BaseException as exc:
                        if not is_fatal(exc):  # a fatal one: supervise() releases it
                            with self._jobs_lock:
                                self._holding.pop(name, None)
                            self._release(job_id, me, f"its run raised {describe(exc)}")
                        raise
                    with self._jobs_lock:
                        self._holding.pop(name, None)
            finally:
                with self._jobs_lock:
                    self._jobs_in_hand -= 1
            if job_id is None:
                self.jobs_ready.wait(self.settings.poll_interval_s)
                continue
            self.deliveries_ready.notify()

    def _idle(self) -> bool:
        with self._jobs_lock:
            return self._jobs_in_hand == 0

    def _prefetch(self, me: str) -> None:
        """Analyse arrived images while no job runs (see :mod:`mammo_scp.prefetch`)."""
        prefetcher = self.prefetcher
        assert prefetcher is not None
        while not self.stopping.is_set():
            if not self.images_arrived.wait(3600.0):
                continue  # only arrivals wake it: a `work` process never prefetches
            while not self.stopping.is_set() and self._idle() and not prefetcher.full():
                todo = prefetcher.candidates(self.db, self.spool, limit=1)
                if not todo:
                    break
                prefetcher.analyze(*todo[0])

    def _delivery(self, me: str) -> None:
        while not self.stopping.is_set():
            if not deliver_due(self.db, self.spool, self.settings, me):
                self.deliveries_ready.wait(self.settings.poll_interval_s)

    def _housekeeping(self, me: str) -> None:
        while not self.stopping.is_set():
            if queue_ready_studies(self.db, self.settings.quiet_period_s):
                self.jobs_ready.notify()
            if recover_abandoned(self.db, self.settings.max_job_attempts):
                self.jobs_ready.notify()
            self.instances_arrived.wait(self.settings.poll_interval_s)
