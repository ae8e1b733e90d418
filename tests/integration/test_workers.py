"""`serve` plus two `work` processes against one PostgreSQL database and one spool: 20
studies sent with storescu, every job run exactly once, by all three processes."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Job, JobEvent
from mammo_scp.jobs.states import InstanceStatus, JobState
from tests.support.load import all_jobs_done
from tests.support.mg import four_view_study
from tests.support.peers import NodeProcess, free_port, storescu, wait_for, write_config

STUDIES = 20
AET = "MAMMO_SCP"


def test_serve_and_two_work_processes_run_each_job_exactly_once(postgres_url: str,
                                                                 tmp_path: Path) -> None:
    port = free_port()
    common = {"data_dir": str(tmp_path / "data"), "database_url": postgres_url,
              "poll_interval_s": 0.1, "quiet_period_s": 30.0, "min_free_mb": 1}
    serve_config = write_config(tmp_path / "serve.toml", {
        **common, "port": port, "bind_address": "127.0.0.1", "workers": 1})
    work_config = write_config(tmp_path / "work.toml", {**common, "workers": 1,
                                                        "http_port": 0})
    processes = [NodeProcess("serve", serve_config, tmp_path / "serve.log").start()]
    processes += [NodeProcess("work", work_config, tmp_path / f"work{n}.log").start()
                  for n in range(2)]
    db = Database(postgres_url)
    try:
        processes[0].wait_listening(port, AET, timeout=180)
        for worker in processes[1:]:
            wait_for(lambda w=worker: "node ready" in w.output(), 180, what="a worker")
        for n in range(STUDIES):
            _, files = four_view_study(tmp_path / f"study{n}", rows=128, cols=104, seed=n)
            sent = storescu(port, AET, files)
            assert sent.stderr.count("Received Store Response (Success)") == 4, sent.stderr
        wait_for(lambda: all_jobs_done(db, STUDIES), 300, interval=0.5,
                 what="20 jobs to be done")
    finally:
        for process in processes:
            assert process.stop() == 0, process.output()[-3000:]

    with db.session() as session:
        claims = session.execute(
            sa.select(JobEvent.job_id, sa.func.count(), sa.func.min(JobEvent.worker))
            .where(JobEvent.to_state == JobState.RUNNING)
            .group_by(JobEvent.job_id)
        ).all()
        jobs_per_study = session.execute(
            sa.select(Job.study_id, sa.func.count()).group_by(Job.study_id)).all()
        statuses = session.scalars(sa.select(Instance.status)).all()
        analyses = session.scalar(sa.select(sa.func.count()).select_from(JobEvent)
                                  .where(JobEvent.stage == "analyze"))
    db.dispose()
    assert len(claims) == STUDIES and all(count == 1 for _, count, _ in claims)
    assert len(jobs_per_study) == STUDIES and all(n == 1 for _, n in jobs_per_study)
    assert analyses == STUDIES
    assert statuses.count(InstanceStatus.PROCESSED) == 4 * STUDIES
    processes_used = {worker.split(":")[1] for _, _, worker in claims}
    print(f"jobs per process: {sorted(processes_used)}")
    assert len(processes_used) >= 2, "the jobs were not shared between processes"
