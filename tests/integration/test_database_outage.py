"""PostgreSQL stopped mid-run: C-STORE answers Out of Resources instead of acknowledging
what it cannot record, the node keeps answering C-ECHO, and it recovers when the
database returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Job
from mammo_scp.jobs.states import JobState
from tests.support.mg import four_view_study
from tests.support.peers import NodeProcess, echo_ok, free_port, storescu, wait_for, write_config
from tests.support.postgres import PrivatePostgres

AET = "MAMMO_SCP"


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    yield server
    server.destroy()


def test_database_outage_refuses_then_recovers(postgres: PrivatePostgres,
                                               tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(data),
        "database_url": postgres.url, "poll_interval_s": 0.2, "min_free_mb": 1})
    node = NodeProcess("serve", config, tmp_path / "serve.log").start()
    db = Database(postgres.url)
    try:
        node.wait_listening(port, AET, timeout=180)
        _, first = four_view_study(tmp_path / "first")
        assert storescu(port, AET, first).stderr.count("(Success)") == 4

        postgres.stop()
        _, second = four_view_study(tmp_path / "second", seed=7)
        refused = storescu(port, AET, second, "--no-halt")
        assert refused.stderr.count("Refused: OutOfResources") == 4, refused.stderr
        assert echo_ok(port, AET)
        stored = {p.name for p in (data / "spool" / "instances").rglob("*.dcm")}
        assert len(stored) == 4, "an instance the node could not record was kept"
        assert "database unavailable" in node.output()

        postgres.start()
        again = storescu(port, AET, second)
        assert again.stderr.count("(Success)") == 4, again.stderr

        def both_done() -> bool:
            with db.session() as session:
                states = session.scalars(sa.select(Job.state)).all()
            return len(states) == 2 and all(s == JobState.DONE for s in states)
        wait_for(both_done, 120, what="both studies to be processed after the outage")
        with db.session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 8
    finally:
        db.dispose()
        node.stop()
