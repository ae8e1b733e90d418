"""SQLAlchemy models: study, instance, job, job event, result, delivery and assessment.

Times are naive UTC throughout (``utcnow()``), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mammo_scp.assessment import Category
from mammo_scp.jobs.states import (
    CommitmentState,
    CompletionTrigger,
    DeliveryState,
    InstanceStatus,
    JobState,
)

UID = sa.String(64)


def utcnow() -> datetime:
    """Naive UTC now, as stored in every timestamp column."""
    return datetime.now(UTC).replace(tzinfo=None)


def _enum(cls: type[StrEnum]) -> sa.Enum:
    return sa.Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(sa.String(64))
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("studies.id"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState), index=True)
    trigger: Mapped[CompletionTrigger] = mapped_column(_enum(CompletionTrigger))
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="jobs")
    instances: Mapped[list[Instance]] = relationship(back_populates="job")
    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.id")
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="job", order_by="Delivery.id"
    )
    assessment: Mapped[Assessment | None] = relationship(back_populates="job")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("studies.id"), index=True)
    transfer_syntax: Mapped[str] = mapped_column(UID)
    laterality: Mapped[str | None] = mapped_column(sa.String(1))
    view: Mapped[str | None] = mapped_column(sa.String(16))
    path: Mapped[str] = mapped_column(sa.String(512))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    calling_ae: Mapped[str] = mapped_column(sa.String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    status: Mapped[InstanceStatus] = mapped_column(
        _enum(InstanceStatus), default=InstanceStatus.RECEIVED
    )
    skip_reason: Mapped[str | None] = mapped_column(sa.Text)

    study: Mapped[Study] = relationship(back_populates="instances")
    job: Mapped[Job | None] = relationship(back_populates="instances")


class JobEvent(Base):
    """One line of a job's timeline: a state change, or a pipeline stage with its duration."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_state: Mapped[JobState | None] = mapped_column(_enum(JobState))
    to_state: Mapped[JobState | None] = mapped_column(_enum(JobState))
    stage: Mapped[str | None] = mapped_column(sa.String(32))
    duration_ms: Mapped[float | None]
    worker: Mapped[str | None] = mapped_column(sa.String(128))
    message: Mapped[str] = mapped_column(sa.Text, default="")

    job: Mapped[Job] = relationship(back_populates="events")


class Result(Base):
    """A DICOM object the node produced for a job, kept in the spool until delivered."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(sa.String(16))
    path: Mapped[str] = mapped_column(sa.String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")

    __table_args__ = (sa.UniqueConstraint("job_id", "sop_instance_uid"),)


class Delivery(Base):
    """One result object to one destination."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id"))
    destination: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    worker: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    delivered_at: Mapped[datetime | None]
    commitment: Mapped[CommitmentState | None] = mapped_column(_enum(CommitmentState))
    commitment_uid: Mapped[str | None] = mapped_column(UID, index=True)
    commitment_at: Mapped[datetime | None]
    commitment_error: Mapped[str | None] = mapped_column(sa.Text)

    job: Mapped[Job] = relationship(back_populates="deliveries")
    result: Mapped[Result] = relationship()

    __table_args__ = (sa.UniqueConstraint("result_id", "destination"),)


class Assessment(Base):
    """A processed job's breast- and exam-level assessment (:mod:`mammo_scp.assessment`):
    scores and categories, and the thresholds they were made with. One row per job, so that
    ``jobs list`` shows and sorts by it without reading the job's findings."""

    __tablename__ = "assessments"

    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id"), primary_key=True)
    exam_score: Mapped[float] = mapped_column(index=True)
    exam_category: Mapped[Category] = mapped_column(_enum(Category))
    right_score: Mapped[float | None]
    right_category: Mapped[Category | None] = mapped_column(_enum(Category))
    left_score: Mapped[float | None]
    left_category: Mapped[Category | None] = mapped_column(_enum(Category))
    low_threshold: Mapped[float]
    elevated_threshold: Mapped[float]
    assessed_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="assessment")
