"""The database: one engine per process, sessions from one factory, Alembic upgrades.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` so a
committed row survives ``kill -9`` and power loss, and every transaction that may
write starts with ``BEGIN IMMEDIATE`` so two processes never race on a stale
snapshot. Reads that never write (polls, the status page, metrics, the CLI's lists)
use :meth:`Database.read_session` instead, which does not take SQLite's one write
lock. PostgreSQL is used as is; workers claim rows with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:  # Alembic is imported when migrating, not by the CLI's read commands
    from alembic.config import Config as AlembicConfig

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_LOCK = 0x6D616D6D6F  # "mammo": the advisory lock key held while migrating


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the operation."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: Execution option of the engine behind :meth:`Database.read_session`.
READ_ONLY_OPTION = "mammo_read_only"


def _read_only(conn: sa.Connection) -> bool:
    return bool(conn.get_execution_options().get(READ_ONLY_OPTION))


def _sqlite_begin(conn: sa.Connection) -> None:
    """``BEGIN IMMEDIATE``, or for a read session a deferred ``BEGIN`` on a query-only
    connection: in WAL mode it reads a snapshot without the write lock, and any write in
    it fails at once instead of racing on that snapshot."""
    read_only = _read_only(conn)
    info = conn.connection.info  # lives as long as the DBAPI connection, across the pool
    if info.get("query_only", False) != read_only:
        conn.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
        info["query_only"] = read_only
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _postgres_begin(conn: sa.Connection) -> None:
    """A read session's transaction is READ ONLY: a write in it fails at once."""
    if _read_only(conn):
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def make_engine(url: str) -> Engine:
    """An engine configured for the node's durability and concurrency rules."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = sa.create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20,
        connect_args={"connect_timeout": 10},
    )
    sa.event.listen(engine, "begin", _postgres_begin)
    return engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class Database:
    """The process's engine and session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session that only reads: it never waits for a writer nor makes one wait
        (SQLite's write lock is not taken), and a write in it raises at once.

        For reads whose result is not acted on in the same transaction: a poll that
        finds work takes a :meth:`session` and looks again under its locks.
        """
        with self._read_sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found at {MIGRATIONS_DIR}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (the app never calls create_all)."""
    from alembic import command

    cfg = alembic_config(db.url)
    with db.engine.connect() as conn:
        if is_postgres(db.engine):
            # Several processes starting at once on an empty database: one migrates,
            # the others wait and then find the schema current.
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if is_postgres(db.engine):
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"),
                             {"key": _MIGRATION_LOCK})
                conn.commit()
    logger.info("database schema at %s", revision)
