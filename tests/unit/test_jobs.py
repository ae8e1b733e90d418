"""Job states, claims, recovery and retry, and the read sessions that polls use, against
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from mammo_scp.completion import has_four_views, queue_ready_studies, ready_trigger
from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Job, JobEvent, Study, utcnow
from mammo_scp.jobs.service import (
    TransitionError,
    claim_next_job,
    recover_abandoned,
    retry_job,
    transition,
)
from mammo_scp.jobs.states import CompletionTrigger, JobState

_uid_counter = iter(range(1, 10_000))


def _add_instances(db: Database, study_uid: str, views: list[tuple[str, str]],
                   age_s: float = 0.0) -> None:
    at = utcnow() - timedelta(seconds=age_s)
    with db.session() as session:
        study = session.scalars(sa.select(Study).where(Study.study_uid == study_uid)).first()
        if study is None:
            study = Study(study_uid=study_uid, first_received_at=at, last_received_at=at)
            session.add(study)
            session.flush()
        study.last_received_at = at
        for laterality, view in views:
            n = next(_uid_counter)
            session.add(Instance(
                sop_instance_uid=f"1.2.3.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
                series_uid="1.2.3", study_id=study.id, transfer_syntax="1.2.840.10008.1.2.1",
                laterality=laterality, view=view, path=f"x/{n}.dcm", size_bytes=1,
                calling_ae="T", received_at=at))


FOUR = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]


def test_four_view_rule() -> None:
    assert has_four_views(FOUR)
    assert not has_four_views(FOUR[:3] + [("R", "MLO")])
    assert not has_four_views([(None, "CC"), *FOUR[1:]])
    now = utcnow()
    assert ready_trigger(FOUR, now, now, 30) == CompletionTrigger.FOUR_VIEWS
    assert ready_trigger(FOUR[:2], now, now, 30) is None
    assert ready_trigger(FOUR[:2], now - timedelta(seconds=31), now, 30) == \
        CompletionTrigger.QUIET_PERIOD


def test_ready_studies_get_one_job_each(db: Database) -> None:
    _add_instances(db, "1.1", FOUR)
    _add_instances(db, "1.2", FOUR[:2])               # waits for the quiet period
    _add_instances(db, "1.3", FOUR[:1], age_s=60)     # quiet period over
    created = queue_ready_studies(db, quiet_period_s=30)
    assert len(created) == 2
    assert queue_ready_studies(db, quiet_period_s=30) == []
    with db.session() as session:
        triggers = dict(session.execute(
            sa.select(Study.study_uid, Job.trigger).join(Job)).all())
    assert triggers == {"1.1": CompletionTrigger.FOUR_VIEWS,
                        "1.3": CompletionTrigger.QUIET_PERIOD}


def test_claims_never_hand_out_a_job_twice(db: Database) -> None:
    for n in range(3):
        _add_instances(db, f"2.{n}", FOUR)
    queue_ready_studies(db, 30)
    claimed = [claim_next_job(db, f"w{n}", 60) for n in range(4)]
    assert sorted(c for c in claimed if c is not None) == sorted(set(c for c in claimed if c))
    assert claimed[3] is None


def test_queued_job_takes_in_late_instances_until_claimed(db: Database) -> None:
    _add_instances(db, "3.1", FOUR)
    (job_id,) = queue_ready_studies(db, 30)
    _add_instances(db, "3.1", [("R", "CC")])          # arrives while the job waits
    assert claim_next_job(db, "w", 60) == job_id
    _add_instances(db, "3.1", [("L", "CC")])          # arrives after it started
    with db.session() as session:
        counts = dict(session.execute(sa.select(Instance.job_id, sa.func.count())
                                      .group_by(Instance.job_id)).all())
    assert counts == {job_id: 5, None: 1}


def test_transitions_are_checked_and_recorded(db: Database) -> None:
    _add_instances(db, "4.1", FOUR)
    (job_id,) = queue_ready_studies(db, 30)
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(TransitionError):
            transition(session, job, JobState.DONE, "cannot skip running")
    claim_next_job(db, "w", 60)
    with db.session() as session:
        events = session.scalars(sa.select(JobEvent).where(JobEvent.job_id == job_id)
                                 .order_by(JobEvent.id)).all()
    assert [(e.from_state, e.to_state) for e in events] == [
        (None, JobState.QUEUED), (JobState.QUEUED, JobState.RUNNING)]
    assert all(e.at is not None and e.message for e in events)


def test_expired_lease_requeues_then_fails_after_max_attempts(db: Database) -> None:
    _add_instances(db, "5.1", FOUR)
    (job_id,) = queue_ready_studies(db, 30)
    for attempt in (1, 2):
        assert claim_next_job(db, "elsewhere:1:w", 60) == job_id
        with db.session() as session:
            session.execute(sa.update(Job).values(lease_expires_at=utcnow() - timedelta(1)))
        assert recover_abandoned(db, max_attempts=2) == 1
        with db.session() as session:
            state = session.get(Job, job_id).state  # type: ignore[union-attr]
        assert state == (JobState.QUEUED if attempt == 1 else JobState.FAILED)
    assert retry_job(db, job_id) == f"job {job_id}: re-queued"
    with db.session() as session:
        assert session.get(Job, job_id).state == JobState.QUEUED  # type: ignore[union-attr]


def test_dead_local_worker_is_recovered_without_waiting_for_the_lease(db: Database) -> None:
    import subprocess
    import sys

    from mammo_scp.jobs.service import HOSTNAME
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    _add_instances(db, "6.1", FOUR)
    (job_id,) = queue_ready_studies(db, 30)
    claim_next_job(db, f"{HOSTNAME}:{gone}:job-0", 3600)
    assert recover_abandoned(db, max_attempts=3) == 1
    with db.session() as session:
        assert session.get(Job, job_id).state == JobState.QUEUED  # type: ignore[union-attr]


def test_retry_refuses_running_jobs(db: Database) -> None:
    _add_instances(db, "7.1", FOUR)
    (job_id,) = queue_ready_studies(db, 30)
    claim_next_job(db, "w", 60)
    with pytest.raises(TransitionError, match="running"):
        retry_job(db, job_id)
    with pytest.raises(LookupError):
        retry_job(db, 999)


# -- read sessions: what polls and status pages do to SQLite's one write lock ----------------

@contextmanager
def _writer_holding(url: str) -> Iterator[threading.Event]:
    """Another connection holds an open write transaction (SQLite: the write lock) until
    the block ends; yields the event that releases it."""
    other = Database(url)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other.session() as session:
            session.add(Study(study_uid="held", first_received_at=utcnow(),
                              last_received_at=utcnow()))
            session.flush()  # SQLite: the write lock is held from here
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(30)
    try:
        yield release
    finally:
        release.set()
        thread.join(60)
        other.dispose()


def test_read_session_refuses_writes(db: Database) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="(?i)read.?only"), db.read_session() as session:
        session.add(Study(study_uid="8.1", first_received_at=utcnow(),
                          last_received_at=utcnow()))
        session.flush()
    # The pooled connection writes again in an ordinary session.
    _add_instances(db, "8.2", FOUR[:1])
    with db.read_session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 1


def test_reads_and_idle_polls_do_not_wait_for_a_writer(db: Database, database_url: str,
                                                       tmp_path: Path) -> None:
    """A study waiting for its quiet period, an empty queue, nothing to deliver or recover:
    while another connection writes, every poll answers at once (on SQLite they used to
    wait for the write lock, up to the 30 s busy timeout)."""
    from mammo_scp.config import Settings
    from mammo_scp.send.delivery import deliver_due
    from mammo_scp.store.spool import Spool

    _add_instances(db, "9.1", FOUR[:2])
    settings = Settings(data_dir=tmp_path)
    with _writer_holding(database_url) as release:
        started = time.monotonic()
        assert queue_ready_studies(db, quiet_period_s=30) == []
        assert claim_next_job(db, "w", 60) is None
        assert recover_abandoned(db, max_attempts=3) == 0
        assert deliver_due(db, Spool(tmp_path / "spool"), settings, "w") == 0
        with db.read_session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 2
        answered_while_held = not release.is_set()
        elapsed = time.monotonic() - started
    assert answered_while_held and elapsed < 10, f"{elapsed:.1f} s"
