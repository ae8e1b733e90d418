"""What the CLI's read commands print (``jobs list``, ``jobs show``, ``studies list``), read
with the database's own driver (sqlite3 or psycopg) rather than SQLAlchemy.

Importing SQLAlchemy and the ORM was most of a 0.6 s ``jobs list`` on 2 cores; without them
the command answers in about half that (``benchmarks/cli.py``). The queries read the tables
that :mod:`mammo_scp.jobs.models` defines (enums stored as their values, times as naive
UTC); ``tests/unit/test_cli.py`` checks what they return against rows the ORM wrote, on
SQLite and PostgreSQL. Nothing here writes: SQLite connections are ``query_only`` and
PostgreSQL sessions read only.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol


class Unreachable(Exception):
    """The database cannot be opened or does not answer."""


class NoSchema(Exception):
    """The database holds no mammo-scp tables (no ``alembic_version``)."""


class _Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Reader:
    """One read-only connection to a node's database and the read commands' queries."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        scheme, _, rest = url.partition("://")
        self._postgres = scheme.startswith("postgresql")
        try:
            if scheme.startswith("sqlite"):
                path = rest[1:] if rest.startswith("/") else rest  # sqlite:///<path>
                if not path or path == ":memory:" or not Path(path).is_file():
                    raise Unreachable(f"no database file at {path or '(none)'}")
                self._conn: Any = sqlite3.connect(path, timeout=timeout_s)
                self._conn.execute("PRAGMA query_only=1")
            elif self._postgres:
                import psycopg

                self._conn = psycopg.connect(f"postgresql://{rest}",
                                             connect_timeout=max(1, int(timeout_s)))
                self._conn.read_only = True
            else:
                raise Unreachable(f"unsupported database URL scheme {scheme!r}")
        except (sqlite3.Error, OSError) as exc:
            raise Unreachable(str(exc).splitlines()[0]) from exc
        except Exception as exc:  # psycopg.Error: imported only for PostgreSQL
            if type(exc).__module__.startswith("psycopg"):
                raise Unreachable(str(exc).splitlines()[0]) from exc
            raise
        try:
            self._rows("SELECT version_num FROM alembic_version")
        except Exception as exc:
            self.close()
            raise NoSchema(str(exc).splitlines()[0]) from exc

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self._postgres:
            sql = sql.replace("?", "%s")
        cursor: _Cursor = self._conn.cursor()
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if self._postgres:
            self._conn.rollback()  # end the read-only transaction each query opened
        return [tuple(row) for row in rows]

    _JOB = ("SELECT j.id, s.study_uid, j.state, j.trigger, j.attempts, j.created_at, "
            "j.updated_at, j.error, (SELECT count(*) FROM instances i WHERE i.job_id = j.id), "
            "a.exam_score, a.exam_category, a.right_score, a.right_category, a.left_score, "
            "a.left_category, a.low_threshold, a.elevated_threshold "
            "FROM jobs j JOIN studies s ON s.id = j.study_id "
            "LEFT JOIN assessments a ON a.job_id = j.id")
    #: ``jobs list --sort``: the job's id, or the exam score, highest first (jobs without an
    #: assessment last)
    _ORDER = {"id": " ORDER BY j.id",
              "score": " ORDER BY (a.exam_score IS NULL), a.exam_score DESC, j.id"}

    def _job_dicts(self, rows: list[tuple[Any, ...]],
                   deliveries: dict[int, Counter[str]]) -> list[dict[str, Any]]:
        return [{"id": job_id, "study_uid": study_uid, "state": state, "trigger": trigger,
                 "instances": instances, "attempts": attempts,
                 "deliveries": dict(deliveries.get(job_id, Counter())),
                 "created_at": iso(created), "updated_at": iso(updated), "error": error,
                 "assessment": _assessment(assessed)}
                for (job_id, study_uid, state, trigger, attempts, created, updated, error,
                     instances, *assessed) in rows]

    def jobs(self, state: str | None = None, sort: str = "id") -> list[dict[str, Any]]:
        """Every job (or those in ``state``): what ``jobs list`` prints, in the order
        ``sort`` names ("id" or "score")."""
        if sort not in self._ORDER:
            raise ValueError(f"sort must be one of {sorted(self._ORDER)}, got {sort!r}")
        if state is None:
            rows = self._rows(self._JOB + self._ORDER[sort])
        else:
            rows = self._rows(self._JOB + " WHERE j.state = ?" + self._ORDER[sort], state)
        deliveries: dict[int, Counter[str]] = defaultdict(Counter)
        for job_id, delivery_state, count in self._rows(
                "SELECT job_id, state, count(*) FROM deliveries GROUP BY job_id, state"):
            deliveries[job_id][delivery_state] = count
        return self._job_dicts(rows, deliveries)

    def job(self, job_id: int) -> dict[str, Any] | None:
        """One job with its instances, timeline, results and deliveries (``jobs show``)."""
        rows = self._rows(self._JOB + " WHERE j.id = ?", job_id)
        if not rows:
            return None
        detail = self._job_dicts(rows, {})[0]
        detail["instances"] = [
            {"sop_instance_uid": uid, "laterality": laterality, "view": view,
             "status": status, "skip_reason": reason}
            for uid, laterality, view, status, reason in self._rows(
                "SELECT sop_instance_uid, laterality, view, status, skip_reason FROM instances "
                "WHERE job_id = ? ORDER BY id", job_id)]
        detail["timeline"] = [
            {"at": iso(at),
             "change": f"{from_state or '-'} -> {to_state}" if to_state else None,
             "stage": stage, "duration_ms": round(ms, 1) if ms else None,
             "message": message, "worker": worker}
            for at, from_state, to_state, stage, ms, message, worker in self._rows(
                "SELECT at, from_state, to_state, stage, duration_ms, message, worker "
                "FROM job_events WHERE job_id = ? ORDER BY id", job_id)]
        detail["results"] = [
            {"sop_instance_uid": uid, "kind": kind, "path": path}
            for uid, kind, path in self._rows(
                "SELECT sop_instance_uid, kind, path FROM results WHERE job_id = ? "
                "ORDER BY id", job_id)]
        detail["deliveries"] = [
            {"destination": destination, "object": uid, "state": state, "attempts": attempts,
             "next_attempt_at": iso(next_at), "last_error": error, "commitment": commitment}
            for destination, uid, state, attempts, next_at, error, commitment in self._rows(
                "SELECT d.destination, r.sop_instance_uid, d.state, d.attempts, "
                "d.next_attempt_at, d.last_error, d.commitment FROM deliveries d "
                "JOIN results r ON r.id = d.result_id WHERE d.job_id = ? ORDER BY d.id",
                job_id)]
        return detail

    def studies(self) -> list[dict[str, Any]]:
        """Every study: instances, those waiting for a job, its jobs (``studies list``)."""
        jobs: dict[int, list[str]] = defaultdict(list)
        for study_id, job_id, state in self._rows(
                "SELECT study_id, id, state FROM jobs ORDER BY id"):
            jobs[study_id].append(f"{job_id}:{state}")
        return [{"study_uid": study_uid, "instances": instances,
                 "jobs": ", ".join(jobs.get(study_id, [])) or None,
                 "last_received_at": iso(last), "waiting": waiting}
                for study_id, study_uid, last, instances, waiting in self._rows(
                    "SELECT s.id, s.study_uid, s.last_received_at, "
                    "(SELECT count(*) FROM instances i WHERE i.study_id = s.id), "
                    "(SELECT count(*) FROM instances i WHERE i.study_id = s.id "
                    "AND i.job_id IS NULL) FROM studies s ORDER BY s.id")]


def _assessment(columns: Sequence[Any]) -> dict[str, Any] | None:
    """The assessment columns of a job's row as :meth:`StudyAssessment.to_json` writes it
    (None for a job without one)."""
    exam, exam_category, right, right_category, left, left_category, low, elevated = columns
    if exam is None:
        return None

    def scope(score: float | None, category: str | None) -> dict[str, Any] | None:
        return None if score is None else {"score": round(score, 4), "category": category}

    return {"exam": scope(exam, exam_category), "right": scope(right, right_category),
            "left": scope(left, left_category),
            "thresholds": {"low": low, "elevated": elevated}}


def iso(value: datetime | str | None) -> str | None:
    """A stored time (naive UTC; SQLite gives it as text) as ISO 8601 with a Z."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.isoformat(timespec="seconds") + "Z"


def mask_password(url: str) -> str:
    """``url`` with its password, if any, as ***."""
    return re.sub(r"(://[^:/@]+:)[^@/]+@", r"\1***@", url)
