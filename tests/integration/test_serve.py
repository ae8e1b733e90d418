"""`mammo-scp serve` as a process, fed by dcmtk's storescu: ingest, completion, jobs."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread

from mammo_scp.db import Database
from mammo_scp.jobs.models import Instance, Job
from mammo_scp.jobs.states import CompletionTrigger, JobState
from mammo_scp.node import worker_process_title
from tests.support.mg import Patient, four_view_study, make_mg
from tests.support.mias import mias_mass_study
from tests.support.peers import NodeProcess, echo_ok, free_port, storescu, wait_for, write_config

AET = "MAMMO_SCP"


@dataclass
class RunningNode:
    process: NodeProcess
    port: int
    config: Path
    data: Path
    db: Database

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mammo_scp", *args, "--config",
                               str(self.config)], capture_output=True, text=True, timeout=60)

    def jobs(self) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(sa.select(Job).order_by(Job.id)))


@contextmanager
def _running_node(tmp_path: Path, database_url: str, **settings: object
                  ) -> Iterator[RunningNode]:
    port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path / "node.toml", {
        "port": port, "bind_address": "127.0.0.1", "data_dir": str(data),
        "database_url": database_url, "quiet_period_s": 3.0, "poll_interval_s": 0.2,
        "min_free_mb": 1, **settings,
    })
    process = NodeProcess("serve", config, tmp_path / "serve.log").start()
    try:
        # model loading and warm-up: ~30 s on 2 idle cores, minutes on a loaded machine
        process.wait_listening(port, AET, timeout=300.0)
        yield RunningNode(process, port, config, data, Database(database_url))
    finally:
        code = process.stop()
        print(process.output())
    assert code == 0, "the node did not shut down cleanly on SIGTERM"


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[RunningNode]:
    with _running_node(tmp_path, database_url) as running:
        yield running


def _acknowledged(result: subprocess.CompletedProcess[str]) -> int:
    return result.stderr.count("Received Store Response (Success)")


def test_four_view_study_is_stored_tracked_and_completed(node: RunningNode, tmp_path: Path) -> None:
    study_uid, files = four_view_study(tmp_path / "study")
    sent = storescu(node.port, AET, files)
    assert sent.returncode == 0, sent.stderr
    assert _acknowledged(sent) == 4, sent.stderr

    with node.db.session() as session:
        rows = session.scalars(sa.select(Instance)).all()
        assert len(rows) == 4
        for row in rows:
            stored = node.data / "spool" / row.path
            assert stored.is_file()
            assert dcmread(stored).SOPInstanceUID == row.sop_instance_uid
    assert {(r.laterality, r.view) for r in rows} == {("R", "CC"), ("L", "CC"),
                                                      ("R", "MLO"), ("L", "MLO")}

    jobs = wait_for(lambda: [j for j in node.jobs() if j.state == JobState.DONE], 20,
                    what="the job to finish")
    assert len(node.jobs()) == 1
    assert jobs[0].trigger == CompletionTrigger.FOUR_VIEWS

    listed = json.loads(node.cli("jobs", "list", "--json").stdout)
    assert [(j["state"], j["instances"], j["study_uid"]) for j in listed] == [
        ("done", 4, study_uid)]
    shown = node.cli("jobs", "show", str(jobs[0].id))
    assert "queued -> running" in shown.stdout and "load" in shown.stdout


def test_incomplete_study_is_completed_by_the_quiet_period(node: RunningNode,
                                                           tmp_path: Path) -> None:
    study_uid, files = four_view_study(tmp_path / "study")
    sent = storescu(node.port, AET, files[:2])
    assert _acknowledged(sent) == 2
    # Within the quiet period (3 s) no job may start for two views.
    assert not node.jobs()
    jobs = wait_for(lambda: [j for j in node.jobs() if j.state == JobState.DONE], 20,
                    what="the quiet period to complete the study")
    assert jobs[0].trigger == CompletionTrigger.QUIET_PERIOD
    # Instances arriving after the job ran make a new job for the same study.
    sent = storescu(node.port, AET, files[2:])
    assert _acknowledged(sent) == 2
    wait_for(lambda: len([j for j in node.jobs() if j.state == JobState.DONE]) == 2, 20,
             what="a second job for the late instances")
    with node.db.session() as session:
        per_job = session.execute(sa.select(Instance.job_id, sa.func.count())
                                  .group_by(Instance.job_id)).all()
    assert sorted(n for _, n in per_job) == [2, 2]


def test_same_instance_twice_is_acknowledged_and_stored_once(node: RunningNode,
                                                             tmp_path: Path) -> None:
    _, files = four_view_study(tmp_path / "study")
    first = storescu(node.port, AET, files[:1])
    second = storescu(node.port, AET, files[:1])
    assert _acknowledged(first) == 1 and _acknowledged(second) == 1
    with node.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 1
    stored = list((node.data / "spool" / "instances").rglob("*.dcm"))
    assert len(stored) == 1
    assert "received again" in node.process.output()


def test_other_sop_classes_are_refused_and_the_node_keeps_serving(node: RunningNode,
                                                                  tmp_path: Path) -> None:
    ds = make_mg("R", "CC", study_uid="1.2.3.4")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    ds.Modality = "CT"
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    sent = storescu(node.port, AET, [path])
    assert _acknowledged(sent) == 0
    assert "no presentation context" in sent.stderr.lower() or sent.returncode != 0
    assert echo_ok(node.port, AET)
    with node.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 0


def test_wrong_called_ae_title_is_rejected(node: RunningNode) -> None:
    assert not echo_ok(node.port, "SOMEONE_ELSE")
    assert echo_ok(node.port, AET)


def test_files_are_private_and_logs_carry_no_patient_data(node: RunningNode,
                                                          tmp_path: Path) -> None:
    patient = Patient(name="SECRETSURNAME^GIVEN", patient_id="PID-SECRET-4711")
    study_uid, files = four_view_study(tmp_path / "study", patient=patient)
    assert _acknowledged(storescu(node.port, AET, files)) == 4
    wait_for(lambda: [j for j in node.jobs() if j.state == JobState.DONE], 60,
             what="the job to finish")
    for path in [node.data, *node.data.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
    log = node.process.output()
    assert study_uid in log  # UIDs are logged ...
    for secret in ("SECRETSURNAME", "PID-SECRET-4711"):  # ... patient identity never
        assert secret not in log


def _analyze_note(node: RunningNode, job_id: int) -> str:
    with node.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return next(e.message for e in job.events if e.stage == "analyze")


def _findings(node: RunningNode, job_id: int) -> list[object]:
    path = node.data / "spool" / "results" / str(job_id) / "findings.json"
    return [image["findings"] for image in json.loads(path.read_text())]


@pytest.fixture
def watched_node(tmp_path: Path, database_url: str) -> Iterator[RunningNode]:
    """A node whose log says when each image has been analysed on arrival (DEBUG), and whose
    studies are completed by the four views only (no quiet period within the test)."""
    # worker_nice 0: at the default 10 (plus the suite's own nice), the models' thread gets a
    # few percent of a core beside a busy process at nice 0, and one analysis takes minutes
    with _running_node(tmp_path, database_url, log_level="DEBUG", quiet_period_s=600.0,
                       worker_nice=0) as running:
        yield running


def test_views_sent_one_at_a_time_are_analysed_as_they_arrive(watched_node: RunningNode,
                                                             tmp_path: Path) -> None:
    """A unit sends each view as it takes it. The worker analyses each one while it waits
    for the rest, and the study's job (started by the fourth view) takes those analyses
    instead of running the models again; its findings are those of the same images sent
    all at once.

    The next view goes out once the node's log says the last one was analysed (a real unit
    takes a minute or so between views), not after a fixed pause: on a loaded machine an
    analysis can take longer than any pause chosen here. The first goes out once the worker
    process is ready: the SCP answers before it, and a view that arrives before the worker
    is up is analysed with its study's job, not on arrival."""
    node = watched_node
    wait_for(lambda: "node ready (workers only" in node.process.output(), 300, interval=0.1,
             what="the worker process's 'node ready' log line")
    _, paced = mias_mass_study(tmp_path / "paced")
    for n, path in enumerate(paced):
        assert _acknowledged(storescu(node.port, AET, [path])) == 1
        if n < len(paced) - 1:
            analysed = f"instance {dcmread(path, stop_before_pixels=True).SOPInstanceUID} " \
                       "analysed on arrival"
            wait_for(lambda line=analysed: line in node.process.output(), 300, interval=0.1,
                     what=f"the log line {analysed!r}")
    first = wait_for(lambda: [j for j in node.jobs() if j.state == JobState.DONE], 300,
                     what="the paced study's job")[0]
    note = _analyze_note(node, first.id)
    ahead = re.search(r"\((\d) analysed on arrival\)", note)
    assert ahead and int(ahead.group(1)) >= 3, note

    _, together = mias_mass_study(tmp_path / "together")
    assert _acknowledged(storescu(node.port, AET, together)) == 4
    second = wait_for(lambda: [j for j in node.jobs() if j.state == JobState.DONE
                               and j.id != first.id], 600, what="the second study's job")[0]
    assert _findings(node, first.id) == _findings(node, second.id)
    assert any(_findings(node, first.id))


def test_the_worker_process_is_named_in_ps(node: RunningNode) -> None:
    """ps shows serve's worker process by name, not as ``python -B -c from
    multiprocessing.spawn ...``."""
    serve = node.process.proc
    assert serve is not None
    children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
    titles = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
              .strip() for pid in children}
    named = [pid for pid, title in titles.items() if title == worker_process_title(serve.pid)]
    assert len(named) == 1, titles
    assert Path(f"/proc/{named[0]}/comm").read_text().strip() == "mammo-scp serve"
