"""`kill -9` the node during a large C-STORE, during processing and during delivery,
restart it, and check that nothing it acknowledged is lost and every result arrives.

Each case runs MAMMO_CRASH_REPEATS times (default 2); the counts are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import generate_uid

from mammo_scp.db import Database
from mammo_scp.jobs.models import Delivery, Instance, Job, JobEvent, Result
from mammo_scp.jobs.states import DeliveryState, JobState
from mammo_scp.store.spool import Spool
from tests.support.mg import FOUR_VIEWS, make_mg
from tests.support.mias import mias_mass_study
from tests.support.peers import (
    DCMTK_BIN,
    NodeProcess,
    StoreSCP,
    echo_ok,
    free_port,
    storescu,
    wait_for,
    write_config,
)

AET = "MAMMO_SCP"
REPEATS = int(os.environ.get("MAMMO_CRASH_REPEATS", "2"))


@dataclass
class Site:
    """A node (restartable), its database and a destination PACS that can come and go."""

    tmp: Path
    port: int
    config: Path
    db: Database
    pacs: StoreSCP
    restarts: int = 0
    processes: list[NodeProcess] = field(default_factory=list)

    def start(self) -> NodeProcess:
        node = NodeProcess("serve", self.config, self.tmp / f"serve{len(self.processes)}.log")
        node.start()
        self.processes.append(node)
        node.wait_listening(self.port, AET, timeout=180)
        return node

    def jobs(self) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(sa.select(Job).order_by(Job.id)))

    def scalar(self, query: sa.Select) -> object:  # type: ignore[type-arg]
        with self.db.session() as session:
            return session.scalar(query)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    config = write_config(tmp_path / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(tmp_path / "data"),
        "database_url": url, "quiet_period_s": 60.0, "poll_interval_s": 0.1, "min_free_mb": 1,
        "delivery_backoff_s": 0.5, "delivery_backoff_max_s": 1.0, "delivery_max_attempts": 100,
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                          "port": pacs.port}],
    })
    site = Site(tmp_path, port, config, Database(url), pacs)
    yield site
    for node in site.processes:
        node.kill()
    pacs.stop()
    site.db.dispose()


def _all_done(site: Site) -> bool:
    jobs = site.jobs()
    return bool(jobs) and all(j.state == JobState.DONE for j in jobs)


def _delivered_uids(site: Site) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in site.pacs.files()}


def _result_uids(site: Site) -> set[str]:
    with site.db.session() as session:
        return set(session.scalars(sa.select(Result.sop_instance_uid)))


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_kill_during_a_large_cstore(site: Site, tmp_path: Path, repeat: int) -> None:
    site.pacs.start()
    node = site.start()
    study_uid = generate_uid()
    files = []
    for n, (laterality, view) in enumerate(FOUR_VIEWS[:2]):
        path = tmp_path / f"small{n}.dcm"
        make_mg(laterality, view, study_uid=study_uid, seed=n).save_as(
            path, enforce_file_format=True)
        files.append(path)
    big = make_mg("R", "MLO", study_uid=study_uid, rows=4096, cols=3328, bits_stored=14,
                  pixels=np.random.default_rng(repeat).integers(0, 1 << 14, (4096, 3328),
                                                                 dtype=np.uint16))
    big.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    files.append(tmp_path / "big.dcm")

    sender = subprocess.Popen([str(DCMTK_BIN / "storescu"), "-v", "-aec", AET, "127.0.0.1",
                               str(site.port), *map(str, files)],
                              stderr=subprocess.PIPE, text=True)
    incoming = Spool(site.tmp / "data" / "spool").incoming

    def arriving() -> bool:
        for path in incoming.glob("*.dcm"):
            with contextlib.suppress(FileNotFoundError):  # a small one just committed
                if path.stat().st_size > 1_000_000:
                    return True
        return False

    # Kill while the 27 MB dataset is arriving: its temporary file exists and grows.
    wait_for(arriving, 60, interval=0.005, what="the large transfer to be under way")
    node.kill()
    _, log = sender.communicate(timeout=60)
    acknowledged = len(re.findall(r"Received Store Response \(Success\)", log))
    assert acknowledged >= 2

    site.start()
    with site.db.session() as session:
        rows = session.scalars(sa.select(Instance)).all()
    assert len(rows) >= acknowledged
    for row in rows:  # every indexed instance is complete and readable
        ds = dcmread(site.tmp / "data" / "spool" / row.path)
        assert ds.pixel_array.shape == (int(ds.Rows), int(ds.Columns))
    assert not any(incoming.iterdir()), "partial transfers were left behind"
    print(f"large C-STORE kill #{repeat}: {acknowledged} acknowledged, {len(rows)} stored")


def _job_running_in_a_worker(site: Site, tmp_path: Path) -> tuple[NodeProcess, int]:
    """Start serve, send it a study with masses and wait until its job runs; return serve
    and the pid of the process running the job (from its worker id, host:pid:thread)."""
    site.pacs.start()
    node = site.start()
    _, files = mias_mass_study(tmp_path / "study")
    assert storescu(site.port, AET, files).stderr.count("(Success)") == 4
    wait_for(lambda: any(j.state == JobState.RUNNING for j in site.jobs()), 60,
             interval=0.01, what="the job to run")
    running = [j for j in site.jobs() if j.state == JobState.RUNNING and j.worker]
    assert running, "no running job"
    worker = int(running[0].worker.split(":")[1])  # type: ignore[union-attr]
    assert node.proc is not None and worker != node.proc.pid  # the models run in a child
    return node, worker


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has exited; only its parent's wait is missing


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_kill_during_processing(site: Site, tmp_path: Path, repeat: int) -> None:
    node, worker = _job_running_in_a_worker(site, tmp_path)
    node.kill()
    wait_for(lambda: _process_gone(worker), 10, what="the worker process to die with serve")
    site.start()
    wait_for(lambda: _all_done(site), 180, what="the job to be done after the restart")
    claims = site.scalar(sa.select(sa.func.count()).select_from(JobEvent)
                         .where(JobEvent.to_state == JobState.RUNNING))
    assert claims == 2, "the interrupted job was not run again"
    assert _delivered_uids(site) == _result_uids(site) != set()
    print(f"processing kill #{repeat}: job re-run, {len(_result_uids(site))} results delivered")


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_kill_during_delivery(site: Site, tmp_path: Path, repeat: int) -> None:
    node = site.start()  # the PACS is down: deliveries fail and are retried
    _, files = mias_mass_study(tmp_path / "study")
    assert storescu(site.port, AET, files).stderr.count("(Success)") == 4
    wait_for(lambda: site.scalar(sa.select(sa.func.max(Delivery.attempts))) or 0, 60,
             interval=0.05, what="a failed delivery attempt")
    before = _result_uids(site)
    node.kill()
    site.pacs.start()
    site.start()
    wait_for(lambda: _all_done(site), 120, what="delivery after the restart")
    with site.db.session() as session:
        states = set(session.scalars(sa.select(Delivery.state)))
    assert states == {DeliveryState.DELIVERED}
    assert _result_uids(site) == before == _delivered_uids(site)
    print(f"delivery kill #{repeat}: {len(before)} results delivered with the same UIDs")


def test_a_killed_worker_process_is_restarted(site: Site, tmp_path: Path) -> None:
    """`kill -9` of serve's worker child alone: the SCP keeps answering, serve starts a
    new child, and the interrupted job is run again and delivered."""
    node, worker = _job_running_in_a_worker(site, tmp_path)
    os.kill(worker, signal.SIGKILL)
    assert echo_ok(site.port, AET, timeout=5.0), "the SCP stopped answering"
    wait_for(lambda: _all_done(site), 180, what="the job to be done by the new worker process")
    assert node.proc is not None and node.proc.poll() is None, "serve died with its worker"
    assert "restarting it" in node.output()
    assert _delivered_uids(site) == _result_uids(site) != set()
