"""The one module that changes a job's state, and records why.

Every change goes through :func:`transition`, which refuses transitions that
:data:`ALLOWED_TRANSITIONS` does not allow and writes a :class:`JobEvent` with
the time and the reason. Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL
(several workers, one or many hosts) and ``BEGIN IMMEDIATE`` on SQLite, so no
job is ever run by two workers at once.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mammo_scp.assessment import StudyAssessment
from mammo_scp.db import Database
from mammo_scp.jobs.models import Assessment, Delivery, Instance, Job, JobEvent, Study, utcnow
from mammo_scp.jobs.states import (
    ALLOWED_TRANSITIONS,
    CompletionTrigger,
    DeliveryState,
    JobState,
)

logger = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()


class TransitionError(Exception):
    """A state change the job's current state does not allow."""


def worker_id(name: str) -> str:
    """Identify a worker as host:pid:name, so a dead process on this host can be recognised."""
    return f"{HOSTNAME}:{os.getpid()}:{name}"


def _worker_is_dead_here(worker: str | None) -> bool:
    """True when ``worker`` ran on this host in a process that no longer exists."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOSTNAME or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _rowcount(result: sa.Result[Any]) -> int:
    """Rows matched by an UPDATE (a CursorResult; the generic Result type does not say so)."""
    return int(cast(sa.CursorResult[Any], result).rowcount)


def transition(session: Session, job: Job, to: JobState, reason: str,
               worker: str | None = None) -> None:
    """Move ``job`` to ``to`` and record the event; raise TransitionError if not allowed."""
    if to not in ALLOWED_TRANSITIONS[job.state]:
        raise TransitionError(f"job {job.id}: cannot go from {job.state} to {to}")
    session.add(JobEvent(job_id=job.id, from_state=job.state, to_state=to, message=reason,
                         worker=worker))
    logger.info("job %d: %s -> %s (%s)", job.id, job.state, to, reason)
    job.state = to
    job.updated_at = utcnow()


def record_stage(db: Database, job_id: int, stage: str, duration_ms: float, message: str,
                 worker: str | None) -> None:
    """Add a pipeline stage with its duration to the job's timeline."""
    with db.session() as session:
        session.add(JobEvent(job_id=job_id, stage=stage, duration_ms=duration_ms,
                             message=message, worker=worker))


def record_assessment(session: Session, job_id: int,
                      assessment: StudyAssessment | None) -> None:
    """Keep the job's breast and exam assessment (a re-run replaces it; a run without any
    analysed image removes it)."""
    row = session.get(Assessment, job_id)
    if assessment is None:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = Assessment(job_id=job_id)
        session.add(row)
    row.exam_score, row.exam_category = assessment.exam.score, assessment.exam.category
    row.right_score = assessment.right.score if assessment.right else None
    row.right_category = assessment.right.category if assessment.right else None
    row.left_score = assessment.left.score if assessment.left else None
    row.left_category = assessment.left.category if assessment.left else None
    row.low_threshold = assessment.thresholds.low
    row.elevated_threshold = assessment.thresholds.elevated
    row.assessed_at = utcnow()


def create_job(session: Session, study: Study, trigger: CompletionTrigger,
               reason: str) -> Job | None:
    """Queue a job for the study's instances that no job has taken yet (None if there are none)."""
    job = Job(study_id=study.id, state=JobState.QUEUED, trigger=trigger)
    session.add(job)
    session.flush()
    taken = _rowcount(session.execute(
        sa.update(Instance)
        .where(Instance.study_id == study.id, Instance.job_id.is_(None))
        .values(job_id=job.id)
    ))
    if not taken:
        session.delete(job)
        return None
    session.add(JobEvent(job_id=job.id, from_state=None, to_state=JobState.QUEUED,
                         message=f"{reason}; {taken} instance(s)"))
    logger.info("job %d queued for study %s: %s, %d instance(s)", job.id, study.study_uid,
                reason, taken)
    return job


def claim_next_job(db: Database, worker: str, lease_s: float) -> int | None:
    """Take the oldest queued job for ``worker``; None when the queue is empty."""
    with db.read_session() as session:  # the idle poll takes no write lock
        if session.scalar(sa.select(Job.id).where(Job.state == JobState.QUEUED).limit(1)) \
                is None:
            return None
    with db.session() as session:
        job = session.scalars(
            sa.select(Job)
            .where(Job.state == JobState.QUEUED)
            .order_by(Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        job.attempts += 1
        job.worker = worker
        job.lease_expires_at = utcnow() + timedelta(seconds=lease_s)
        transition(session, job, JobState.RUNNING, f"claimed (attempt {job.attempts})", worker)
        # A queued job takes in instances that arrived after it was queued;
        # once it runs, later arrivals wait for a job of their own.
        session.execute(
            sa.update(Instance)
            .where(Instance.study_id == job.study_id, Instance.job_id.is_(None))
            .values(job_id=job.id)
        )
        return job.id


def renew_lease(db: Database, job_id: int, worker: str, lease_s: float) -> bool:
    """Extend a running job's lease; False if the worker no longer holds it."""
    with db.session() as session:
        renewed = _rowcount(session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        ))
    return bool(renewed)


def lock_owned_job(session: Session, job_id: int, worker: str) -> Job | None:
    """The running job, locked, if ``worker`` still holds it; None if its lease was lost."""
    job = session.scalars(
        sa.select(Job).where(Job.id == job_id).with_for_update()
    ).one()
    if job.state != JobState.RUNNING or job.worker != worker:
        return None
    return job


def _abandoned(worker: str | None, lease_expires_at: datetime | None, now: datetime) -> bool:
    """A job or delivery whose lease expired, or whose worker process is gone from here."""
    expired = lease_expires_at is not None and lease_expires_at < now
    return expired or _worker_is_dead_here(worker)


def recover_abandoned(db: Database, max_attempts: int) -> int:
    """Re-queue running jobs whose worker died (lease expired, or its process is gone on this host).

    A job that has already used ``max_attempts`` fails instead, so one study
    that kills its worker cannot stop the queue forever.
    """
    now = utcnow()
    with db.read_session() as session:  # the usual answer, none, takes no write lock
        holders = session.execute(
            sa.select(Job.worker, Job.lease_expires_at).where(Job.state == JobState.RUNNING)
            .union_all(sa.select(Delivery.worker, Delivery.lease_expires_at)
                       .where(Delivery.state == DeliveryState.SENDING))).all()
    if not any(_abandoned(worker, lease, now) for worker, lease in holders):
        return 0
    recovered = 0
    with db.session() as session:
        running = session.scalars(
            sa.select(Job)
            .where(Job.state == JobState.RUNNING)
            .with_for_update(skip_locked=True)
        ).all()
        for job in running:
            if not _abandoned(job.worker, job.lease_expires_at, now):
                continue
            dead = _worker_is_dead_here(job.worker)
            why = "its worker process is gone" if dead else "its worker's lease expired"
            if job.attempts >= max_attempts:
                job.error = f"abandoned {job.attempts} times: {why}"
                transition(session, job, JobState.FAILED, f"{why}; out of attempts")
            else:
                transition(session, job, JobState.QUEUED, f"{why}; re-queued")
            job.worker = None
            job.lease_expires_at = None
            recovered += 1
        sending = session.scalars(
            sa.select(Delivery)
            .where(Delivery.state == DeliveryState.SENDING)
            .with_for_update(skip_locked=True)
        ).all()
        for delivery in sending:
            if _abandoned(delivery.worker, delivery.lease_expires_at, now):
                delivery.state = DeliveryState.PENDING
                delivery.worker = None
                delivery.next_attempt_at = now
                recovered += 1
    return recovered


def release_job(db: Database, job_id: int, worker: str, max_attempts: int, why: str) -> bool:
    """Give a running job back to the queue at once, because the worker thread that held it
    died (or its run raised past the pipeline); it fails instead after ``max_attempts``
    runs. False when ``worker`` no longer holds it."""
    with db.session() as session:
        job = lock_owned_job(session, job_id, worker)
        if job is None:
            return False
        if job.attempts >= max_attempts:
            job.error = f"abandoned {job.attempts} times: {why}"
            transition(session, job, JobState.FAILED, f"{why}; out of attempts", worker)
        else:
            transition(session, job, JobState.QUEUED, f"{why}; re-queued", worker)
        job.worker = None
        job.lease_expires_at = None
    return True


def retry_job(db: Database, job_id: int) -> str:
    """What `jobs retry` does: re-queue a failed or finished job, or re-send dead deliveries."""
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no job with id {job_id}")
        if job.state == JobState.DEAD_LETTER:
            dead = session.scalars(
                sa.select(Delivery).where(Delivery.job_id == job.id,
                                          Delivery.state == DeliveryState.DEAD)
            ).all()
            for delivery in dead:
                delivery.state = DeliveryState.PENDING
                delivery.attempts = 0
                delivery.next_attempt_at = utcnow()
            transition(session, job, JobState.DELIVERING,
                       f"retry requested: re-sending {len(dead)} dead delivery(ies)")
            return f"job {job.id}: re-sending {len(dead)} delivery(ies)"
        if job.state in (JobState.FAILED, JobState.DONE, JobState.SKIPPED):
            job.attempts = 0
            job.error = None
            transition(session, job, JobState.QUEUED, "retry requested: re-queued")
            return f"job {job.id}: re-queued"
        raise TransitionError(f"job {job.id} is {job.state}; only failed, dead-lettered, "
                              "done or skipped jobs can be retried")
