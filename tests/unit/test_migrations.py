"""The schema changes only by migrations: each one upgrades a database that holds rows of the
revision before, and downgrades again, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from mammo_scp.db import Database, alembic_config, upgrade


def _tables(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


def test_0003_adds_the_assessments_table_beside_existing_jobs(database_url: str) -> None:
    from alembic import command

    db = Database(database_url)
    try:
        upgrade(db, "0002")
        assert "assessments" not in _tables(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO studies (id, study_uid, first_received_at, last_received_at) "
                "VALUES (1, '1.2.3', '2026-12-05 10:00:00', '2026-12-05 10:00:00')"))
            conn.execute(sa.text(
                "INSERT INTO jobs (id, study_id, state, trigger, attempts, created_at, "
                "updated_at) VALUES (7, 1, 'done', 'four_views', 1, '2026-12-05 10:00:00', "
                "'2026-12-05 10:00:00')"))
        upgrade(db)
        assert "assessments" in _tables(db)
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns("assessments")}
        assert {"job_id", "exam_score", "exam_category", "right_score", "right_category",
                "left_score", "left_category", "low_threshold", "elevated_threshold"} <= columns
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO assessments (job_id, exam_score, exam_category, low_threshold, "
                "elevated_threshold, assessed_at) VALUES (7, 0.41, 'elevated', 0.1, 0.3, "
                "'2026-12-05 10:00:01')"))
            assert conn.execute(sa.text(
                "SELECT j.state, a.exam_category FROM jobs j JOIN assessments a "
                "ON a.job_id = j.id")).all() == [("done", "elevated")]
        with db.engine.connect() as conn:
            cfg = alembic_config(db.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
            conn.commit()
        assert "assessments" not in _tables(db) and "jobs" in _tables(db)
    finally:
        db.dispose()
