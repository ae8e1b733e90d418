"""Load: 8 concurrent senders with four-view studies against `serve` running the shipped
models. Zero failed stores and zero lost jobs; C-ECHO keeps being answered. The timed
figures (throughput, C-ECHO p99) come from benchmarks/load.py, not from this test."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Study
from tests.support.load import Echoes, all_jobs_done, run_senders
from tests.support.peers import NodeProcess, free_port, wait_for, write_config

AET = "MAMMO_SCP"
SECONDS = float(os.environ.get("MAMMO_LOAD_SECONDS", "20"))


def test_eight_concurrent_senders_lose_nothing(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    config = write_config(tmp_path / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp_path / "data"),
        "database_url": url, "poll_interval_s": 0.1, "min_free_mb": 1, "workers": 1})
    node = NodeProcess("serve", config, tmp_path / "serve.log").start()
    db = Database(url)
    try:
        node.wait_listening(port, AET, timeout=180)
        echoes = Echoes(port, AET, interval=0.1)
        echoes.start()
        result = run_senders(port, AET, tmp_path / "load", senders=8, seconds=SECONDS)
        wait_for(lambda: all_jobs_done(db, len(result.studies)), 600, interval=1.0,
                 what="every study's job to be done")
        echoes.finish()
    finally:
        node.stop()
    print(f"{len(result.studies)} studies, {result.stored} instances in {result.seconds:.0f} s; "
          + echoes.summary())
    assert result.failed_stores == 0
    with db.session() as session:
        per_study = session.execute(
            sa.select(Study.study_uid, sa.func.count(sa.distinct(Instance.job_id)),
                      sa.func.count(Instance.id)).join(Instance).group_by(Study.study_uid)
        ).all()
    assert {uid for uid, _, _ in per_study} == set(result.studies)
    assert all(jobs == 1 and instances == 4 for _, jobs, instances in per_study)
    assert echoes.failures == 0 and echoes.times_ms
