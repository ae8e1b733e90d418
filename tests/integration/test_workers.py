"""Several worker processes against one PostgreSQL database: every job runs exactly once."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread

from mammo_scp.db import Database, upgrade
from mammo_scp.jobs.models import Instance, Job, JobEvent
from mammo_scp.jobs.states import InstanceStatus, JobState
from mammo_scp.store.ingest import Ingestor
from mammo_scp.store.spool import Spool
from tests.support.mg import four_view_study
from tests.support.peers import NodeProcess, wait_for, write_config

STUDIES = 20


def _ingest_studies(db: Database, spool: Spool, tmp_path: Path) -> None:
    """Put 20 four-view studies in the spool and database the way the SCP does."""
    ingestor = Ingestor(db, spool, min_free_mb=1)
    for n in range(STUDIES):
        _, files = four_view_study(tmp_path / f"study{n}", rows=64, cols=48, seed=n)
        for path in files:
            tmp = spool.incoming / f"{n}-{path.name}"
            tmp.write_bytes(path.read_bytes())
            ds = dcmread(path, stop_before_pixels=True)
            status = ingestor.ingest(tmp, command_sop_class=str(ds.SOPClassUID),
                                     command_sop_instance=str(ds.SOPInstanceUID),
                                     transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                                     calling_ae="TEST")
            assert status == 0


def test_two_work_processes_process_each_job_exactly_once(postgres_url: str,
                                                          tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(postgres_url)
    upgrade(db)
    spool = Spool(data / "spool")
    spool.prepare()
    config = write_config(tmp_path / "node.toml", {
        "data_dir": str(data), "database_url": postgres_url, "workers": 2, "http_port": 0,
        "poll_interval_s": 0.05, "quiet_period_s": 30.0,
    })
    workers = [NodeProcess("work", config, tmp_path / f"work{n}.log").start() for n in range(2)]
    try:
        for worker in workers:
            wait_for(lambda w=worker: "node ready" in w.output(), 60, what="a worker to start")
        _ingest_studies(db, spool, tmp_path)

        def all_done() -> bool:
            with db.session() as session:
                states = session.scalars(sa.select(Job.state)).all()
            return len(states) == STUDIES and all(s == JobState.DONE for s in states)
        wait_for(all_done, 120, what="20 jobs to be done")
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.output()

    with db.session() as session:
        claims = session.execute(
            sa.select(JobEvent.job_id, sa.func.count(), sa.func.min(JobEvent.worker))
            .where(JobEvent.to_state == JobState.RUNNING)
            .group_by(JobEvent.job_id)
        ).all()
        jobs_per_study = session.execute(
            sa.select(Job.study_id, sa.func.count()).group_by(Job.study_id)).all()
        statuses = session.scalars(sa.select(Instance.status)).all()
        load_stages = session.scalar(sa.select(sa.func.count()).select_from(JobEvent)
                                     .where(JobEvent.stage == "load"))
    assert len(claims) == STUDIES and all(count == 1 for _, count, _ in claims)
    assert len(jobs_per_study) == STUDIES and all(n == 1 for _, n in jobs_per_study)
    assert load_stages == STUDIES
    assert statuses.count(InstanceStatus.PROCESSED) == 4 * STUDIES
    # Both processes took part (pids differ in the worker ids).
    processes = {worker.split(":")[1] for _, _, worker in claims}
    assert len(processes) == 2
    db.dispose()
