"""The HTTP side: health, readiness, metrics that move, and the status page of a real run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread

from mammo_scp.assessment import Category
from mammo_scp.config import Settings
from mammo_scp.db import Database, upgrade
from mammo_scp.http import NodeState, start_http
from mammo_scp.jobs.models import Assessment, JobEvent
from mammo_scp.jobs.service import retry_job
from mammo_scp.jobs.states import JobState
from mammo_scp.pipeline import default_pipeline
from mammo_scp.store.spool import Spool
from tests.support.inprocess import AET, InProcessNode
from tests.support.mg import four_view_study
from tests.support.peers import StoreSCP, free_port, storescu, wait_for
from tests.support.stub_analyzer import StubAnalyzer

CHROMIUM = shutil.which("chromium")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_health_readiness_and_metrics_follow_a_study(
    make_node: Callable[..., InProcessNode], tmp_path: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        node = make_node(pacs.port)
        assert _get(node.http + "/healthz") == (200, '{"status": "alive"}')
        status, body = _get(node.http + "/readyz")
        assert status == 200 and json.loads(body)["checks"] == {
            "database": "ok", "models": "ok", "spool": "ok"}
        _, before = _get(node.http + "/metrics")

        _, files = four_view_study(tmp_path / "study")
        assert storescu(node.settings.port, AET, files).returncode == 0
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 30,
                 what="the study to be processed")
        _, after = _get(node.http + "/metrics")
    finally:
        pacs.stop()

    received = 'mammo_instances_received_total{status="success"}'
    assert _metric(after, received) - _metric(before, received) == 4
    delivered = 'mammo_delivery_attempts_total{outcome="delivered"}'
    assert _metric(after, delivered) - _metric(before, delivered) == 4
    assert _metric(after, "mammo_jobs", '{state="done"}') == 1
    assert _metric(after, "mammo_queue_depth") == 0
    load = 'mammo_stage_duration_seconds_count{stage="load"}'
    assert _metric(after, load) - _metric(before, load) == 1
    assert _metric(after, "mammo_associations_total", '{outcome="accepted"}') >= 1


def test_the_assessment_reaches_metrics_and_status_page_and_a_rerun_sends_the_same(
    make_node: Callable[..., InProcessNode], tmp_path: Path
) -> None:
    """Issue 26: the exam and breast categories of a processed study are counted in
    /metrics, shown on the status page and kept in the database; `jobs retry` runs the
    models again and sends the same objects (same UIDs, same assessment)."""
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        node = make_node(pacs.port, default_pipeline(StubAnalyzer(), cad_sr=True))
        _, before = _get(node.http + "/metrics")
        _, files = four_view_study(tmp_path / "study")
        assert storescu(node.settings.port, AET, files).returncode == 0
        wait_for(lambda: node.jobs() and node.jobs()[0].state == JobState.DONE, 60,
                 what="the study to be processed")
        _, after = _get(node.http + "/metrics")
        _, page = _get(node.http + "/")
        first = _received(pacs)

        job_id = node.jobs()[0].id
        retry_job(node.db, job_id)
        wait_for(lambda: _done_twice(node, job_id), 60, what="the re-run")
        again = _received(pacs)
        with node.db.read_session() as session:
            rows = session.scalars(sa.select(Assessment)).all()
            assert [(r.job_id, r.exam_category, r.right_category, r.left_category)
                    for r in rows] == [(job_id, Category.ELEVATED, Category.ELEVATED,
                                        Category.ELEVATED)]
    finally:
        pacs.stop()

    def grew(labels: str) -> float:
        name = "mammo_assessments_total"
        return _metric(after, name, labels) - _metric(before, name, labels)

    # the stub detector's box scores 0.85 on every view, above its finding threshold 0.5
    assert grew('{category="elevated",scope="exam"}') == 1
    assert grew('{category="elevated",scope="breast"}') == 2
    assert grew('{category="low",scope="exam"}') == 0
    assert _metric(after, "mammo_exam_score_count") - _metric(before, "mammo_exam_score_count") \
        == 1
    assert re.search(r"<td><span class='assessment-elevated'>elevated 85%</span><br>"
                     r"<small>R elevated 85%, L elevated 85%</small></td>", page), page
    kinds = sorted(kind for kind, _ in first)
    assert kinds == ["CAD_SR", "SEG", "SEG", "SEG", "SEG", "SR"]
    assert set(again) == set(first)  # the same objects: nothing new at the PACS


def _received(pacs: StoreSCP) -> list[tuple[str, str]]:
    """(kind, SOP Instance UID) of every object the PACS holds."""
    kind = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR",
            "1.2.840.10008.5.1.4.1.1.88.50": "CAD_SR"}
    return [(kind[str(ds.SOPClassUID)], str(ds.SOPInstanceUID))
            for ds in (dcmread(f) for f in pacs.files())]


def _done_twice(node: InProcessNode, job_id: int) -> bool:
    with node.db.read_session() as session:
        done = session.scalar(sa.select(sa.func.count()).select_from(JobEvent).where(
            JobEvent.job_id == job_id, JobEvent.to_state == JobState.DONE))
    return done == 2


def test_readiness_fails_when_the_database_is_down(tmp_path: Path) -> None:
    settings = Settings(http_bind_address="127.0.0.1", http_port=free_port())
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    dead = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    server = start_http(NodeState(settings, dead, spool, models_loaded=True))
    assert server is not None
    try:
        status, body = _get(f"http://127.0.0.1:{settings.http_port}/readyz")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["database"].startswith("unreachable") and checks["spool"] == "ok"
        assert _get(f"http://127.0.0.1:{settings.http_port}/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_status_page_shows_the_jobs_of_a_real_run(
    make_node: Callable[..., InProcessNode], tmp_path: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        node = make_node(pacs.port)
        for n in range(2):
            _, files = four_view_study(tmp_path / f"study{n}", seed=n)
            assert storescu(node.settings.port, AET, files).returncode == 0
        wait_for(lambda: len([j for j in node.jobs() if j.state == JobState.DONE]) == 2, 30,
                 what="two processed studies")
        chrome = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={tempfile.mkdtemp()}"]
        dom = subprocess.run([*chrome, "--dump-dom", node.http + "/"], capture_output=True,
                             text=True, timeout=120).stdout
        shot = tmp_path / "status.png"
        subprocess.run([*chrome, f"--screenshot={shot}", "--window-size=1400,700",
                        node.http + "/"], capture_output=True, timeout=120)
    finally:
        pacs.stop()
    for job in node.jobs():
        assert re.search(rf"<td>{job.id}</td><td class=\"state-done\">done</td>", dom), dom
    assert "four_views" in dom and "PACS@127.0.0.1" in dom
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("MAMMO_DOCS_SCREENSHOT"):  # how docs/status-page.png is made
        shutil.copy(shot, os.environ["MAMMO_DOCS_SCREENSHOT"])


@pytest.mark.parametrize("destinations", [[], [{"name": "pacs", "ae_title": "PACS",
                                                "host": "127.0.0.1", "port": 104}]])
def test_status_page_says_when_no_destination_is_configured(
        tmp_path: Path, destinations: list[dict[str, object]]) -> None:
    settings = Settings.model_validate({"http_bind_address": "127.0.0.1",
                                        "http_port": free_port(),
                                        "destinations": destinations})
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(db)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    server = start_http(NodeState(settings, db, spool, models_loaded=True))
    assert server is not None
    try:
        status, page = _get(f"http://127.0.0.1:{settings.http_port}/")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200
    said = "No destinations: results stay in the spool"
    if destinations:
        assert said not in page and "<td>pacs</td>" in page
    else:
        assert said in page and "[[destinations]]" in page and "MAMMO_SCP_DESTINATIONS" in page
        assert str(spool.results) in page
        assert "id='destinations'" not in page  # no empty table
