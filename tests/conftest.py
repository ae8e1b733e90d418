"""Shared fixtures: a database of each kind, a spool, free ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mammo_scp.db import Database, upgrade
from tests.support.inprocess import InProcessNode, node_factory

POSTGRES_ENV = "MAMMO_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards.

    When MAMMO_TEST_POSTGRES_URL is set the server must answer: the test
    fails rather than skips, so a CI that asked for PostgreSQL gets it.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} not set")
    admin_url = sa.engine.make_url(base)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"mammo_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {admin_url.render_as_string(hide_password=True)} is "
                    f"unreachable but {POSTGRES_ENV} is set: {exc}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database only (for multi-worker tests)."""
    yield from _postgres_database()


@pytest.fixture
def make_node(tmp_path: Path, database_url: str) -> Iterator[Callable[..., InProcessNode]]:
    """Start in-process nodes (SCP, workers, HTTP) on the test's database."""
    yield from node_factory(tmp_path, database_url)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database)
    yield database
    database.dispose()
