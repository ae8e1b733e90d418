"""Job states, claims, recovery and retry, against SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

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
