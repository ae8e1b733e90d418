"""Delivery rows: claim what is due, send it, record the outcome, settle the job.

A failed attempt is retried after ``delivery_backoff_s * 2**(attempts-1)``
seconds, capped at ``delivery_backoff_max_s``; after ``delivery_max_attempts``
the delivery is dead and the job dead-lettered, until ``jobs retry``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from mammo_scp.config import Destination, DicomDestination, DicomWebDestination, Settings
from mammo_scp.db import Database
from mammo_scp.jobs.models import Delivery, Instance, Job, Result, utcnow
from mammo_scp.jobs.service import transition
from mammo_scp.jobs.states import CommitmentState, DeliveryState, JobState
from mammo_scp.metrics import DELIVERIES
from mammo_scp.send.commitment import new_transaction_uid, reserve_transaction
from mammo_scp.send.cstore import SendOutcome, send_files
from mammo_scp.send.stow import stow_files
from mammo_scp.store.spool import Spool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Claimed:
    delivery_id: int
    job_id: int
    destination: str
    path: Path
    sop_instance_uid: str
    calling_ae: str | None


def backoff_s(settings: Settings, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    return float(min(settings.delivery_backoff_s * 2 ** max(attempts - 1, 0),
                     settings.delivery_backoff_max_s))


def _claim_due(db: Database, spool: Spool, worker: str, settings: Settings,
               limit: int) -> list[_Claimed]:
    now = utcnow()
    due = sa.and_(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
    with db.read_session() as session:  # the idle poll takes no write lock
        if session.scalar(sa.select(Delivery.id).where(due).limit(1)) is None:
            return []
    with db.session() as session:
        rows = session.scalars(
            sa.select(Delivery)
            .where(due)
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        claimed = []
        for delivery in rows:
            delivery.state = DeliveryState.SENDING
            delivery.worker = worker
            delivery.lease_expires_at = now + timedelta(seconds=settings.delivery_timeout_s * 4)
            result = session.get(Result, delivery.result_id)
            assert result is not None
            calling_ae = session.scalar(sa.select(Instance.calling_ae)
                                        .where(Instance.job_id == delivery.job_id).limit(1))
            claimed.append(_Claimed(delivery.id, delivery.job_id, delivery.destination,
                                    spool.absolute(result.path), result.sop_instance_uid,
                                    calling_ae))
    return claimed


def deliver_due(db: Database, spool: Spool, settings: Settings, worker: str,
                limit: int = 64) -> int:
    """Send every due delivery (one association per destination); return how many were tried."""
    claimed = _claim_due(db, spool, worker, settings, limit)
    if not claimed:
        return 0
    destinations = {d.name: d for d in settings.destinations}
    by_destination: dict[str, list[_Claimed]] = defaultdict(list)
    for item in claimed:
        by_destination[item.destination].append(item)
    outcomes: dict[int, SendOutcome] = {}
    for name, items in by_destination.items():
        destination = destinations.get(name)
        if destination is None:
            for item in items:
                outcomes[item.delivery_id] = SendOutcome(
                    item.path, f"destination {name!r} is no longer configured", permanent=True)
            continue
        outcomes.update(_send(db, destination, settings, items))
    _record(db, settings, claimed, outcomes)
    return len(claimed)


def _send(db: Database, destination: Destination, settings: Settings,
          items: list[_Claimed]) -> dict[int, SendOutcome]:
    """One handler per kind of destination; returns delivery id -> outcome."""
    timeout = settings.delivery_timeout_s
    if isinstance(destination, DicomWebDestination):
        sent = stow_files(destination, [i.path for i in items], timeout)
        return {i.delivery_id: o for i, o in zip(items, sent, strict=True)}
    if isinstance(destination, DicomDestination):
        commitment_uid = None
        if destination.storage_commitment:
            commitment_uid = new_transaction_uid()
            reserve_transaction(db, [i.delivery_id for i in items], commitment_uid)
        sent = send_files(destination, settings.ae_title, [i.path for i in items], timeout,
                          commitment_uid)
        return {i.delivery_id: o for i, o in zip(items, sent, strict=True)}
    # CallerDestination: back to the AE that sent each job's study.
    outcomes: dict[int, SendOutcome] = {}
    by_caller: dict[str | None, list[_Claimed]] = defaultdict(list)
    for item in items:
        by_caller[item.calling_ae].append(item)
    for calling_ae, group in by_caller.items():
        peer = destination.peers.get(calling_ae or "")
        if peer is None:
            for item in group:
                outcomes[item.delivery_id] = SendOutcome(
                    item.path, f"calling AE {calling_ae!r} is not in the peers of destination "
                               f"{destination.name!r}", permanent=True)
            continue
        target = DicomDestination(name=destination.name, ae_title=str(calling_ae),
                                  host=peer.host, port=peer.port)
        sent = send_files(target, settings.ae_title, [i.path for i in group], timeout)
        outcomes.update({i.delivery_id: o for i, o in zip(group, sent, strict=True)})
    return outcomes


def _record(db: Database, settings: Settings, claimed: list[_Claimed],
            outcomes: dict[int, SendOutcome]) -> None:
    now = utcnow()
    with db.session() as session:
        for item in claimed:
            delivery = session.get(Delivery, item.delivery_id, with_for_update=True)
            if delivery is None or delivery.state != DeliveryState.SENDING:
                continue
            delivery.worker = None
            delivery.lease_expires_at = None
            delivery.attempts += 1
            outcome = outcomes[item.delivery_id]
            error = outcome.error
            if error is None:
                DELIVERIES.labels(outcome="delivered").inc()
                delivery.state = DeliveryState.DELIVERED
                delivery.delivered_at = now
                delivery.last_error = None
                # The report may have come in already: never downgrade it to "requested".
                if outcome.commitment_uid is not None and delivery.commitment is None:
                    delivery.commitment = CommitmentState.REQUESTED
                logger.info("job %d: %s delivered to %s", item.job_id, item.sop_instance_uid,
                            item.destination)
                continue
            delivery.last_error = error
            if outcome.permanent or delivery.attempts >= settings.delivery_max_attempts:
                DELIVERIES.labels(outcome="dead").inc()
                delivery.state = DeliveryState.DEAD
                logger.error("job %d: delivery of %s to %s dead after %d attempt(s): %s",
                             item.job_id, item.sop_instance_uid, item.destination,
                             delivery.attempts, error)
            else:
                DELIVERIES.labels(outcome="failed").inc()
                wait = backoff_s(settings, delivery.attempts)
                delivery.state = DeliveryState.PENDING
                delivery.next_attempt_at = now + timedelta(seconds=wait)
                logger.warning("job %d: delivery of %s to %s failed (attempt %d of %d), next "
                               "try in %.0f s: %s", item.job_id, item.sop_instance_uid,
                               item.destination, delivery.attempts,
                               settings.delivery_max_attempts, wait, error)
        session.flush()
        for job_id in sorted({item.job_id for item in claimed}):
            settle_job(session, job_id)


def settle_job(session: sa.orm.Session, job_id: int) -> None:
    """Close a delivering job once none of its deliveries is still pending or sending."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.state != JobState.DELIVERING:
        return
    counts: dict[DeliveryState, int] = defaultdict(int)
    for state, n in session.execute(
        sa.select(Delivery.state, sa.func.count()).where(Delivery.job_id == job_id)
        .group_by(Delivery.state)
    ):
        counts[state] = n
    if counts[DeliveryState.PENDING] or counts[DeliveryState.SENDING]:
        return
    total = sum(counts.values())
    if counts[DeliveryState.DEAD]:
        job.error = f"{counts[DeliveryState.DEAD]} of {total} deliveries dead-lettered"
        transition(session, job, JobState.DEAD_LETTER, job.error)
    else:
        transition(session, job, JobState.DONE, f"all {total} deliveries acknowledged")
