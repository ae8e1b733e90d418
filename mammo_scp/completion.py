"""When is a study ready to process.

The rule, in full:

1. A study is ready as soon as the instances that no job has taken yet include
   the four standard screening views - RCC, LCC, RMLO and LMLO - among its
   For Presentation 2D images (laterality from ImageLaterality, else
   Laterality; view from ViewCodeSequence, else ViewPosition).
2. Otherwise it is ready once ``quiet_period_s`` seconds have passed since its
   last instance arrived.
3. A ready study gets one job holding all its untaken instances. Instances
   that arrive while that job is still queued join it when a worker claims
   it; instances that arrive after the job started wait for a new job for
   the same study, under rules 1 and 2 again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa

from mammo_scp.db import Database
from mammo_scp.dicom import FOUR_VIEWS, Laterality, SopClass, View
from mammo_scp.jobs.models import Instance, Job, Study, utcnow
from mammo_scp.jobs.service import create_job
from mammo_scp.jobs.states import CompletionTrigger, JobState

logger = logging.getLogger(__name__)


def has_four_views(views: Iterable[tuple[str | None, str | None]]) -> bool:
    """True when (laterality, view) pairs cover RCC, LCC, RMLO and LMLO."""
    present = set()
    for laterality, view in views:
        if laterality in Laterality._value2member_map_ and view in View._value2member_map_:
            present.add((Laterality(str(laterality)), View(str(view))))
    return present >= FOUR_VIEWS


def ready_trigger(views: list[tuple[str | None, str | None]], last_received_at: datetime,
                  now: datetime, quiet_period_s: float) -> CompletionTrigger | None:
    """Which rule, if any, makes a study with these untaken views ready now."""
    if has_four_views(views):
        return CompletionTrigger.FOUR_VIEWS
    if now - last_received_at >= timedelta(seconds=quiet_period_s):
        return CompletionTrigger.QUIET_PERIOD
    return None


def queue_ready_studies(db: Database, quiet_period_s: float) -> list[int]:
    """Create a job for every study that is ready; return the new job ids.

    The look is a read (no write lock while studies wait for their views or their quiet
    period); a study that looks ready is decided again under its lock."""
    with db.read_session() as session:
        rows = session.execute(
            sa.select(Instance.study_id, Instance.laterality, Instance.view,
                      Instance.sop_class_uid, Study.last_received_at)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.job_id.is_(None))
        ).all()
    views: dict[int, list[tuple[str | None, str | None]]] = defaultdict(list)
    last_received: dict[int, datetime] = {}
    for study_id, laterality, view, sop_class, last_received_at in rows:
        processable = sop_class == SopClass.MG_FOR_PRESENTATION
        views[study_id].append((laterality, view) if processable else (None, None))
        last_received[study_id] = last_received_at

    created = []
    now = utcnow()
    for study_id, study_views in views.items():
        if ready_trigger(study_views, last_received[study_id], now, quiet_period_s) is None:
            continue
        job_id = _queue_if_ready(db, study_id, study_views, quiet_period_s)
        if job_id is not None:
            created.append(job_id)
    return created


def _queue_if_ready(db: Database, study_id: int, views: list[tuple[str | None, str | None]],
                    quiet_period_s: float) -> int | None:
    with db.session() as session:
        study = session.scalars(
            sa.select(Study).where(Study.id == study_id).with_for_update(skip_locked=True)
        ).first()
        if study is None:  # another process is deciding about this study right now
            return None
        waiting = session.scalar(
            sa.select(Job.id).where(Job.study_id == study_id, Job.state == JobState.QUEUED)
        )
        if waiting is not None:  # untaken instances join the queued job when it is claimed
            return None
        now = utcnow()
        trigger = ready_trigger(views, study.last_received_at, now, quiet_period_s)
        if trigger is None:
            return None
        if trigger is CompletionTrigger.FOUR_VIEWS:
            reason = "four standard views present (RCC, LCC, RMLO, LMLO)"
        else:
            reason = f"no new instance for {quiet_period_s:g} s (quiet period)"
        job = create_job(session, study, trigger, reason)
        return job.id if job is not None else None
